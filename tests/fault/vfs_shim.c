/*
 * vfs_shim: an SQLite VFS for fault injection, loaded with LD_PRELOAD into
 * any of the agent's programs unchanged (issue 8, items 1 and 2; DESIGN §11
 * "Faults"). A constructor registers it as the default VFS over the real
 * one ("unix"); without any NBE_VFS_* variable it only passes calls through.
 *
 * Crash ("power loss"). Every write and truncation of a durable file (main
 * database, WAL, rollback journal) since that file's last sync is kept in
 * memory: the bytes it replaced and the bytes it wrote. At the chosen sync
 * the shim does not sync: it puts every such file back to its state at its
 * last sync, applies a random subset of the pending operations again (none,
 * all, a prefix, or each by a coin), in half the cases fills one 512-byte
 * sector inside a pending write with random bytes, removes with even odds a file created by
 * this process that was never synced (its directory entry was never made
 * durable: SQLite fsyncs the directory at a new journal's first sync), and
 * SIGKILLs the process. Garbling stays inside the written ranges: SQLite
 * assumes powersafe overwrite, which the real VFS reports. The -shm file is
 * not modelled: it is not durable and SQLite rebuilds it.
 * Not modelled: a file deletion that was never made durable (SQLite deletes
 * the WAL without a directory sync, after a checkpoint that synced the
 * database, so the WAL coming back holds only copied frames), and writes a
 * process left unsynced when it exited normally (they count as durable).
 *
 * With a shared counter, the processes of a run are one machine: a sync by
 * any of them makes every earlier write to that file durable (a registry of
 * syncs, COUNTER.synced, says which), and the one that loses power SIGKILLs
 * the others (a registry of pids, COUNTER.pids) before it touches a file.
 * What a process leaves unsynced when it exits (flush commits its
 * acknowledgements with synchronous=NORMAL) is handed over in
 * COUNTER.unsynced, so a later power loss can still take it.
 *
 * Errors. The N-th write, sync or open of a durable file (counted in this
 * process) fails with SQLITE_FULL / ENOSPC or SQLITE_IOERR / EIO, once or
 * for a number of operations or for good, optionally only while a gate file
 * exists (so a test can make the error go away under a running daemon).
 *
 * Environment:
 *   NBE_VFS_COUNTER     a file holding the count of syncs, shared by every
 *                       process of a run (without it: counted per process)
 *   NBE_VFS_CRASH_AT    lose power at this sync (1-based)
 *   NBE_VFS_CRASH_ODDS  lose power at each sync with probability 1/N
 *   NBE_VFS_SEED        seed of what survives (default: time and pid)
 *   NBE_VFS_FAIL        write | sync | open: the operation that fails
 *   NBE_VFS_FAIL_AT     its N-th occurrence fails first (default 1)
 *   NBE_VFS_FAIL_TIMES  how many in a row fail (default 1: transient;
 *                       0: persistent, every one from the N-th on)
 *   NBE_VFS_FAIL_CODE   full (default) | ioerr
 *   NBE_VFS_FAIL_GATE   inject, and count, only while this path exists
 *   NBE_VFS_SELFCHECK   1 = a broken disk for the sweeps' self-check:
 *                       power loss also empties the WAL, synced frames
 *                       (acknowledged events) included
 *   NBE_VFS_LOG         at exit, append "pid writes syncs opens injected
 *                       untracked" to this file (what a sweep needs to know),
 *                       after a "# unsynced ..." line per write or truncation
 *                       still unsynced (tracked only with a crash set)
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#define SECTOR		512
#define MAX_TRACKS	64
#define MAX_SAVED_BYTES (256LL * 1024 * 1024) /* beyond: writes count as durable */

enum op_kind { OP_WRITE, OP_SYNC, OP_OPEN, OP_NONE };

struct pending {
	bool is_write;
	int64_t off; /* write: where; truncate: the new size */
	int64_t len;
	unsigned char *data; /* write: what it wrote */
	int64_t old_size;    /* the file's size before */
	int64_t old_off;     /* what it replaced or cut off: old_len bytes at old_off */
	int64_t old_len;
	unsigned char *old;
	int64_t seq; /* syncs counted in the run before it */
	bool handed; /* left unsynced by a process that exited */
};

struct track {
	char *path;
	bool created_unsynced;
	struct pending *ops;
	size_t n, cap;
};

struct shim_file {
	sqlite3_file base;
	struct track *t; /* NULL: not a durable file */
	sqlite3_file *real;
};

static sqlite3_vfs *real_vfs;
static sqlite3_vfs shim_vfs;
static struct track tracks[MAX_TRACKS];
static int64_t saved_bytes;
static uint64_t rng_state;

static struct {
	const char *counter;
	int64_t crash_at, crash_odds;
	enum op_kind fail;
	int64_t fail_at, fail_times;
	bool fail_full;
	const char *gate;
	const char *log;
	bool selfcheck;
} cfg;

static struct {
	int64_t count[OP_NONE];
	int64_t syncs_seen; /* this process's syncs (the counter may be shared) */
	int64_t injected;
	int64_t untracked;
	int last_errno;
} stats;

static uint64_t rnd(void)
{
	/* xorshift64*: fast, reproducible from the seed */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static int64_t env_int(const char *name, int64_t def)
{
	const char *v = getenv(name);
	char *end;
	long long n;

	if (!v || !*v)
		return def;
	errno = 0;
	n = strtoll(v, &end, 10);
	if (errno || *end || n < 0) {
		fprintf(stderr, "vfs_shim: %s: not a number: %s\n", name, v);
		_exit(2);
	}
	return (int64_t)n;
}

/* ---- the run's shared registries --------------------------------------------- */

/* The run's sync count now (0 without a shared counter). */
static int64_t current_seq(void)
{
	char buf[32] = { 0 };
	int fd;
	ssize_t got;

	if (!cfg.counter)
		return 0;
	fd = open(cfg.counter, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	got = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	return got > 0 ? strtoll(buf, NULL, 10) : 0;
}

/* Appends "LINE\n" to COUNTER.SUFFIX (one write: O_APPEND keeps lines whole). */
static void registry_add(const char *suffix, const char *line)
{
	char path[4096], buf[4200];
	int fd, n;

	if (!cfg.counter ||
	    snprintf(path, sizeof(path), "%s.%s", cfg.counter, suffix) >= (int)sizeof(path))
		return;
	n = snprintf(buf, sizeof(buf), "%s\n", line);
	if (n <= 0 || n >= (int)sizeof(buf))
		return;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	if (write(fd, buf, (size_t)n) != n)
		fprintf(stderr, "vfs_shim: cannot write %s\n", path);
	close(fd);
}

/* Reads COUNTER.SUFFIX whole (NUL-terminated; the caller frees it). */
static char *registry_read(const char *suffix)
{
	char path[4096];
	FILE *f;
	char *data = NULL;
	size_t cap = 0, len = 0, n;

	if (!cfg.counter ||
	    snprintf(path, sizeof(path), "%s.%s", cfg.counter, suffix) >= (int)sizeof(path))
		return NULL;
	f = fopen(path, "re");
	if (!f)
		return NULL;
	do {
		if (len + 4096 + 1 > cap) {
			char *p = realloc(data, cap = len + 65536);
			if (!p)
				break;
			data = p;
		}
		n = fread(data + len, 1, 4096, f);
		len += n;
	} while (n > 0);
	fclose(f);
	if (data)
		data[len] = '\0';
	return data;
}

/* The highest count a registry ("SEQ PATH" lines) holds for @path, or -1. */
static int64_t last_seq_for(const char *reg, const char *path)
{
	int64_t last = -1;
	size_t plen = strlen(path);

	for (const char *l = reg; l && *l;) {
		const char *end = strchr(l, '\n');
		char *sp;
		int64_t seq = strtoll(l, &sp, 10);
		size_t llen = end ? (size_t)(end - l) : strlen(l);
		if (*sp == ' ' && (size_t)(l + llen - sp - 1) == plen &&
		    memcmp(sp + 1, path, plen) == 0 && seq > last)
			last = seq;
		l = end ? end + 1 : l + llen;
	}
	return last;
}

/* Drops the pending operations another process's sync made durable. */
static void apply_others_syncs(struct track *t, const char *synced)
{
	int64_t last = last_seq_for(synced, t->path);
	size_t k = 0;

	while (k < t->n && t->ops[k].seq < last)
		k++;
	if (k == 0)
		return;
	for (size_t i = 0; i < k; i++) {
		saved_bytes -= t->ops[i].len + t->ops[i].old_len;
		free(t->ops[i].data);
		free(t->ops[i].old);
	}
	memmove(t->ops, t->ops + k, (t->n - k) * sizeof(t->ops[0]));
	t->n -= k;
}

/* Whether @pid is still a process of this run (pids get reused: never
 * signal anything else), judged by NBE_VFS_COUNTER in its environment. */
static bool in_this_run(long pid)
{
	char path[64], env[65536], want[4200];
	ssize_t got;
	size_t wlen;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/environ", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	got = read(fd, env, sizeof(env) - 1);
	close(fd);
	if (got <= 0)
		return false;
	env[got] = '\0';
	snprintf(want, sizeof(want), "NBE_VFS_COUNTER=%s", cfg.counter);
	wlen = strlen(want) + 1; /* with its NUL */
	for (ssize_t i = 0; i + (ssize_t)wlen <= got + 1; i += (ssize_t)strlen(env + i) + 1) {
		if (memcmp(env + i, want, wlen) == 0)
			return true;
	}
	return false;
}

/* Power fails for the whole machine: the run's other processes die now. */
static void kill_others(void)
{
	char *pids = registry_read("pids");

	for (const char *l = pids; l && *l;) {
		char *end;
		long pid = strtol(l, &end, 10);
		if (pid > 0 && pid != (long)getpid() && in_this_run(pid) &&
		    kill((pid_t)pid, SIGKILL) == 0) {
			/* wait until it is gone or a zombie: no more writes */
			for (int i = 0; i < 200; i++) {
				char path[64], st[256] = { 0 };
				int fd;
				snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
				fd = open(path, O_RDONLY | O_CLOEXEC);
				if (fd < 0)
					break;
				ssize_t got = read(fd, st, sizeof(st) - 1);
				close(fd);
				const char *rp = got > 0 ? strrchr(st, ')') : NULL;
				if (!rp || rp[1] == '\0' || rp[2] == 'Z' || rp[2] == 'X')
					break;
				nanosleep(&(const struct timespec){ .tv_nsec = 5000000 },
					  NULL); /* 5 ms */
			}
		}
		l = *end ? end + 1 : end;
	}
	free(pids);
}

/* ---- the power-loss model -------------------------------------------------- */

static struct track *track_of(const char *path)
{
	struct track *free_slot = NULL;

	for (size_t i = 0; i < MAX_TRACKS; i++) {
		if (tracks[i].path && strcmp(tracks[i].path, path) == 0)
			return &tracks[i];
		if (!tracks[i].path && !free_slot)
			free_slot = &tracks[i];
	}
	if (!free_slot)
		return NULL;
	free_slot->path = strdup(path);
	return free_slot->path ? free_slot : NULL;
}

static void forget_pending(struct track *t)
{
	for (size_t i = 0; i < t->n; i++) {
		saved_bytes -= t->ops[i].len + t->ops[i].old_len;
		free(t->ops[i].data);
		free(t->ops[i].old);
	}
	t->n = 0;
}

static struct pending *new_pending(struct track *t)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 16;
		struct pending *p = realloc(t->ops, cap * sizeof(*p));
		if (!p)
			return NULL;
		t->ops = p;
		t->cap = cap;
	}
	memset(&t->ops[t->n], 0, sizeof(t->ops[0]));
	return &t->ops[t->n];
}

/* Reads [off, off + len) of the file as it is now into a new buffer. */
static unsigned char *read_range(sqlite3_file *real, int64_t off, int64_t len)
{
	unsigned char *b = malloc((size_t)len);
	int rc;

	if (!b)
		return NULL;
	rc = real->pMethods->xRead(real, b, (int)len, off);
	if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) {
		free(b);
		return NULL;
	}
	return b;
}

/* Remembers a write or a truncation before it happens; false when it cannot
 * (out of memory or over the cap): it then counts as durable. */
static bool remember(struct track *t, sqlite3_file *real, bool is_write, const void *data,
		     int64_t len, int64_t off)
{
	sqlite3_int64 size;
	struct pending *p;

	if (real->pMethods->xFileSize(real, &size) != SQLITE_OK)
		return false;
	if (saved_bytes + 2 * len + (is_write ? 0 : size) > MAX_SAVED_BYTES)
		return false;
	p = new_pending(t);
	if (!p)
		return false;
	p->is_write = is_write;
	p->off = off;
	p->old_size = size;
	p->seq = current_seq();
	if (is_write) {
		p->len = len;
		p->data = malloc((size_t)len);
		if (!p->data)
			return false;
		memcpy(p->data, data, (size_t)len);
		p->old_off = off;
		p->old_len = off < size ? (off + len < size ? len : size - off) : 0;
	} else {
		p->old_off = off;
		p->old_len = off < size ? size - off : 0;
	}
	if (p->old_len > 0) {
		p->old = read_range(real, p->old_off, p->old_len);
		if (!p->old) {
			free(p->data);
			return false;
		}
	}
	saved_bytes += p->len + p->old_len;
	t->n++;
	return true;
}

static void write_all(int fd, const unsigned char *b, int64_t len, int64_t off)
{
	while (len > 0) {
		ssize_t n = pwrite(fd, b, (size_t)len, off);
		if (n <= 0)
			return;
		b += n;
		len -= n;
		off += n;
	}
}

static void garble(int fd, const struct pending *p)
{
	unsigned char junk[SECTOR];
	int64_t first = p->off / SECTOR, last = (p->off + p->len - 1) / SECTOR;
	int64_t s = first + (int64_t)(rnd() % (uint64_t)(last - first + 1));
	int64_t from = s * SECTOR < p->off ? p->off : s * SECTOR;
	int64_t to = (s + 1) * SECTOR > p->off + p->len ? p->off + p->len : (s + 1) * SECTOR;

	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (unsigned char)rnd();
	write_all(fd, junk, to - from, from);
}

/* Puts one file in a state a power loss now could leave it in. */
static void crash_file(struct track *t)
{
	int fd = open(t->path, O_RDWR | O_CLOEXEC);
	int mode = (int)(rnd() % 4); /* none, all, a prefix, each by a coin */
	size_t prefix = t->n ? (size_t)(rnd() % (t->n + 1)) : 0;

	if (fd < 0)
		return;
	for (size_t i = t->n; i-- > 0;) {
		const struct pending *p = &t->ops[i];
		if (p->old_len > 0)
			write_all(fd, p->old, p->old_len, p->old_off);
		if (ftruncate(fd, p->old_size) != 0)
			break;
	}
	for (size_t i = 0; i < t->n; i++) {
		const struct pending *p = &t->ops[i];
		bool keep = mode == 1 || (mode == 2 && i < prefix) || (mode == 3 && (rnd() & 1));
		if (keep && p->is_write)
			write_all(fd, p->data, p->len, p->off);
		else if (keep && ftruncate(fd, p->off) != 0)
			break;
	}
	/* torn sectors: in half the crashes, one sector of one pending write
	 * (more would leave the last transaction almost never whole) */
	if (t->n > 0 && (rnd() & 1)) {
		const struct pending *p = &t->ops[rnd() % t->n];
		if (p->is_write && p->len > 0)
			garble(fd, p);
	}
	if (cfg.selfcheck && strlen(t->path) > 4 &&
	    strcmp(t->path + strlen(t->path) - 4, "-wal") == 0 && ftruncate(fd, 0) != 0)
		fprintf(stderr, "vfs_shim: cannot empty %s\n", t->path);
	close(fd);
	if (t->created_unsynced && (rnd() & 1))
		unlink(t->path);
}

static void log_stats(void);

static void take_over(void);

static void lose_power(void)
{
	char *synced;

	kill_others();
	take_over();
	synced = registry_read("synced");
	for (size_t i = 0; i < MAX_TRACKS; i++)
		if (tracks[i].path && synced)
			apply_others_syncs(&tracks[i], synced);
	free(synced);
	for (size_t i = 0; i < MAX_TRACKS; i++)
		if (tracks[i].path &&
		    (tracks[i].n > 0 || tracks[i].created_unsynced || cfg.selfcheck))
			crash_file(&tracks[i]);
	log_stats();
	kill(getpid(), SIGKILL);
	_exit(137);
}

struct handover {
	uint32_t path_len;
	int32_t is_write;
	int64_t off, len, old_size, old_off, old_len, seq;
};

/* At exit: appends this process's unsynced operations to COUNTER.unsynced. */
static void hand_over(void)
{
	char path[4096];
	int fd;

	if (!cfg.counter ||
	    snprintf(path, sizeof(path), "%s.unsynced", cfg.counter) >= (int)sizeof(path))
		return;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || flock(fd, LOCK_EX) != 0) {
		if (fd >= 0)
			close(fd);
		return;
	}
	for (size_t i = 0; i < MAX_TRACKS; i++) {
		for (size_t j = 0; tracks[i].path && j < tracks[i].n; j++) {
			const struct pending *p = &tracks[i].ops[j];
			struct handover h = { (uint32_t)strlen(tracks[i].path),
					      p->is_write,
					      p->off,
					      p->len,
					      p->old_size,
					      p->old_off,
					      p->old_len,
					      p->seq };
			bool ok = write(fd, &h, sizeof(h)) == (ssize_t)sizeof(h) &&
				  write(fd, tracks[i].path, h.path_len) == (ssize_t)h.path_len &&
				  (!p->len || write(fd, p->data, (size_t)p->len) == p->len) &&
				  (!p->old_len ||
				   write(fd, p->old, (size_t)p->old_len) == p->old_len);
			if (!ok)
				fprintf(stderr, "vfs_shim: cannot hand over to %s\n", path);
		}
	}
	close(fd);
}

/* At power loss: the operations processes left unsynced when they exited
 * come before this process's own, file by file. */
static void take_over(void)
{
	char path[4096], name[4096], *deleted;
	struct handover h;
	FILE *f;

	if (!cfg.counter ||
	    snprintf(path, sizeof(path), "%s.unsynced", cfg.counter) >= (int)sizeof(path))
		return;
	f = fopen(path, "re");
	if (!f)
		return;
	deleted = registry_read("deleted");
	while (fread(&h, sizeof(h), 1, f) == 1) {
		struct pending p = { 0 };
		struct track *t;
		if (h.path_len >= sizeof(name) || fread(name, 1, h.path_len, f) != h.path_len)
			break;
		name[h.path_len] = '\0';
		p.is_write = h.is_write != 0;
		p.off = h.off;
		p.len = h.len;
		p.old_size = h.old_size;
		p.old_off = h.old_off;
		p.old_len = h.old_len;
		p.seq = h.seq;
		p.data = h.len > 0 ? malloc((size_t)h.len) : NULL;
		p.old = h.old_len > 0 ? malloc((size_t)h.old_len) : NULL;
		if ((h.len > 0 &&
		     (!p.data || fread(p.data, 1, (size_t)h.len, f) != (size_t)h.len)) ||
		    (h.old_len > 0 &&
		     (!p.old || fread(p.old, 1, (size_t)h.old_len, f) != (size_t)h.old_len))) {
			free(p.data);
			free(p.old);
			break;
		}
		/* a file deleted since: what was left in it went with it */
		t = last_seq_for(deleted, name) >= p.seq ? NULL : track_of(name);
		if (!t || !new_pending(t)) {
			free(p.data);
			free(p.old);
			continue;
		}
		/* before this process's own operations, after earlier hand-overs */
		size_t at = 0;
		while (at < t->n && t->ops[at].seq <= p.seq && t->ops[at].handed)
			at++;
		memmove(t->ops + at + 1, t->ops + at, (t->n - at) * sizeof(t->ops[0]));
		p.handed = true;
		t->ops[at] = p;
		t->n++;
		saved_bytes += p.len + p.old_len;
	}
	free(deleted);
	fclose(f);
}

/* Counts one sync; true when power is lost at it. */
static bool crash_now(void)
{
	int64_t n = ++stats.syncs_seen;

	if (cfg.counter) {
		char buf[32] = { 0 };
		int fd = open(cfg.counter, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (fd >= 0 && flock(fd, LOCK_EX) == 0) {
			ssize_t got = pread(fd, buf, sizeof(buf) - 1, 0);
			n = (got > 0 ? strtoll(buf, NULL, 10) : 0) + 1;
			int len = snprintf(buf, sizeof(buf), "%" PRId64 "\n", n);
			if (pwrite(fd, buf, (size_t)len, 0) != len)
				n = -1;
		}
		if (fd >= 0)
			close(fd);
	}
	if (cfg.crash_at > 0 && n == cfg.crash_at)
		return true;
	return cfg.crash_odds > 0 && rnd() % (uint64_t)cfg.crash_odds == 0;
}

/* ---- error injection --------------------------------------------------------- */

/* 0, or the error the op must fail with (errno set to match). */
static int inject(enum op_kind k)
{
	int64_t n;

	stats.count[k]++;
	if (cfg.fail != k || (cfg.gate && access(cfg.gate, F_OK) != 0))
		return 0;
	n = stats.count[k];
	if (cfg.gate) {
		static int64_t gated[OP_NONE];
		n = ++gated[k];
	}
	if (n < cfg.fail_at || (cfg.fail_times > 0 && n >= cfg.fail_at + cfg.fail_times))
		return 0;
	stats.injected++;
	stats.last_errno = cfg.fail_full ? ENOSPC : EIO;
	errno = stats.last_errno;
	switch (k) {
	case OP_WRITE:
		return cfg.fail_full ? SQLITE_FULL : SQLITE_IOERR_WRITE;
	case OP_SYNC:
		return SQLITE_IOERR_FSYNC;
	default:
		return SQLITE_CANTOPEN;
	}
}

/* ---- the io methods ------------------------------------------------------------ */

#define REAL(f) (((struct shim_file *)(f))->real)

static int x_close(sqlite3_file *f)
{
	return REAL(f)->pMethods->xClose(REAL(f));
}

static int x_read(sqlite3_file *f, void *b, int n, sqlite3_int64 off)
{
	return REAL(f)->pMethods->xRead(REAL(f), b, n, off);
}

static int x_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 off)
{
	struct shim_file *s = (struct shim_file *)f;
	int rc;

	if (!s->t)
		return s->real->pMethods->xWrite(s->real, b, n, off);
	rc = inject(OP_WRITE);
	if (rc)
		return rc;
	if ((cfg.crash_at > 0 || cfg.crash_odds > 0) && !remember(s->t, s->real, true, b, n, off))
		stats.untracked++;
	return s->real->pMethods->xWrite(s->real, b, n, off);
}

static int x_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	struct shim_file *s = (struct shim_file *)f;

	if (s->t && (cfg.crash_at > 0 || cfg.crash_odds > 0) &&
	    !remember(s->t, s->real, false, NULL, 0, size))
		stats.untracked++;
	return s->real->pMethods->xTruncate(s->real, size);
}

static int x_sync(sqlite3_file *f, int flags)
{
	struct shim_file *s = (struct shim_file *)f;
	int rc;

	if (!s->t)
		return s->real->pMethods->xSync(s->real, flags);
	rc = inject(OP_SYNC);
	if (rc)
		return rc;
	if (crash_now())
		lose_power();
	rc = s->real->pMethods->xSync(s->real, flags);
	if (rc == SQLITE_OK && cfg.counter && (cfg.crash_at > 0 || cfg.crash_odds > 0)) {
		char line[4200];
		if (snprintf(line, sizeof(line), "%" PRId64 " %s", current_seq(), s->t->path) <
		    (int)sizeof(line))
			registry_add("synced", line);
	}
	if (rc == SQLITE_OK) {
		forget_pending(s->t);
		s->t->created_unsynced = false;
	}
	return rc;
}

static int x_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int x_lock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xLock(REAL(f), l);
}

static int x_unlock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xUnlock(REAL(f), l);
}

static int x_check_reserved(sqlite3_file *f, int *out)
{
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int x_file_control(sqlite3_file *f, int op, void *arg)
{
	return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int x_sector_size(sqlite3_file *f)
{
	return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int x_device_chars(sqlite3_file *f)
{
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int x_shm_map(sqlite3_file *f, int pg, int sz, int extend, void volatile **p)
{
	return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, p);
}

static int x_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
	return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}

static void x_shm_barrier(sqlite3_file *f)
{
	REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int x_shm_unmap(sqlite3_file *f, int del)
{
	return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static int x_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **p)
{
	return REAL(f)->pMethods->xFetch(REAL(f), off, n, p);
}

static int x_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
	return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static sqlite3_io_methods shim_io = {
	.iVersion = 3,
	.xClose = x_close,
	.xRead = x_read,
	.xWrite = x_write,
	.xTruncate = x_truncate,
	.xSync = x_sync,
	.xFileSize = x_file_size,
	.xLock = x_lock,
	.xUnlock = x_unlock,
	.xCheckReservedLock = x_check_reserved,
	.xFileControl = x_file_control,
	.xSectorSize = x_sector_size,
	.xDeviceCharacteristics = x_device_chars,
	.xShmMap = x_shm_map,
	.xShmLock = x_shm_lock,
	.xShmBarrier = x_shm_barrier,
	.xShmUnmap = x_shm_unmap,
	.xFetch = x_fetch,
	.xUnfetch = x_unfetch,
};

/* ---- the vfs ------------------------------------------------------------------- */

static bool durable_type(int flags)
{
	return flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL |
			SQLITE_OPEN_SUPER_JOURNAL);
}

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
	struct shim_file *s = (struct shim_file *)f;
	bool durable = name && durable_type(flags);
	bool existed = durable && access(name, F_OK) == 0;
	int rc;

	(void)vfs;
	s->base.pMethods = NULL;
	s->t = NULL;
	s->real = (sqlite3_file *)(s + 1);
	if (durable) {
		rc = inject(OP_OPEN);
		if (rc)
			return rc;
	}
	rc = real_vfs->xOpen(real_vfs, name, s->real, flags, out);
	if (rc != SQLITE_OK || !s->real->pMethods)
		return rc;
	if (shim_io.iVersion > s->real->pMethods->iVersion)
		shim_io.iVersion = s->real->pMethods->iVersion;
	s->base.pMethods = &shim_io;
	if (durable) {
		s->t = track_of(name);
		if (s->t && !existed && (flags & SQLITE_OPEN_CREATE))
			s->t->created_unsynced = true;
		if (!s->t)
			stats.untracked++;
	}
	return rc;
}

static int v_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
	(void)vfs;
	if (cfg.counter && (cfg.crash_at > 0 || cfg.crash_odds > 0)) {
		/* what earlier processes left unsynced in it is gone with it (a
		 * deletion that was never made durable is not modelled) */
		char line[4200];
		if (snprintf(line, sizeof(line), "%" PRId64 " %s", current_seq(), name) <
		    (int)sizeof(line))
			registry_add("deleted", line);
	}
	for (size_t i = 0; i < MAX_TRACKS; i++) {
		if (tracks[i].path && strcmp(tracks[i].path, name) == 0) {
			forget_pending(&tracks[i]);
			tracks[i].created_unsynced = false;
		}
	}
	return real_vfs->xDelete(real_vfs, name, sync_dir);
}

static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
	(void)vfs;
	return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int v_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	(void)vfs;
	return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static int v_get_last_error(sqlite3_vfs *vfs, int n, char *buf)
{
	(void)vfs;
	/* what the real VFS does too: the errno of the failure (kept, as
	 * SQLite may ask more than once) */
	if (stats.last_errno)
		return stats.last_errno;
	return real_vfs->xGetLastError(real_vfs, n, buf);
}

static void log_stats(void)
{
	FILE *f;

	if (!cfg.log)
		return;
	f = fopen(cfg.log, "ae");
	if (!f)
		return;
	for (size_t i = 0; i < MAX_TRACKS; i++) {
		for (size_t j = 0; j < tracks[i].n; j++) {
			const struct pending *p = &tracks[i].ops[j];
			fprintf(f, "# unsynced %s of %s at %" PRId64 "\n",
				p->is_write ? "write" : "truncate", tracks[i].path, p->off);
		}
	}
	fprintf(f, "%ld %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 "\n",
		(long)getpid(), stats.count[OP_WRITE], stats.syncs_seen, stats.count[OP_OPEN],
		stats.injected, stats.untracked);
	fclose(f);
}

__attribute__((destructor)) static void shim_fini(void)
{
	if (cfg.crash_at > 0 || cfg.crash_odds > 0)
		hand_over();
	log_stats();
}

__attribute__((constructor)) static void shim_init(void)
{
	const char *fail = getenv("NBE_VFS_FAIL");
	const char *code = getenv("NBE_VFS_FAIL_CODE");

	cfg.counter = getenv("NBE_VFS_COUNTER");
	cfg.crash_at = env_int("NBE_VFS_CRASH_AT", 0);
	cfg.crash_odds = env_int("NBE_VFS_CRASH_ODDS", 0);
	cfg.fail_at = env_int("NBE_VFS_FAIL_AT", 1);
	cfg.fail_times = env_int("NBE_VFS_FAIL_TIMES", 1);
	cfg.gate = getenv("NBE_VFS_FAIL_GATE");
	cfg.log = getenv("NBE_VFS_LOG");
	cfg.selfcheck = env_int("NBE_VFS_SELFCHECK", 0) == 1;
	cfg.fail = OP_NONE;
	if (fail && strcmp(fail, "write") == 0)
		cfg.fail = OP_WRITE;
	else if (fail && strcmp(fail, "sync") == 0)
		cfg.fail = OP_SYNC;
	else if (fail && strcmp(fail, "open") == 0)
		cfg.fail = OP_OPEN;
	else if (fail && *fail) {
		fprintf(stderr, "vfs_shim: NBE_VFS_FAIL: write, sync or open, not %s\n", fail);
		_exit(2);
	}
	cfg.fail_full = !code || strcmp(code, "ioerr") != 0;
	rng_state = (uint64_t)env_int("NBE_VFS_SEED", 0);
	if (!rng_state)
		rng_state = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	rng_state = rng_state * 0x9E3779B97F4A7C15ULL + 1;

	real_vfs = sqlite3_vfs_find(NULL);
	if (!real_vfs) {
		fprintf(stderr, "vfs_shim: no default SQLite VFS\n");
		_exit(2);
	}
	shim_vfs = *real_vfs;
	shim_vfs.szOsFile = (int)sizeof(struct shim_file) + real_vfs->szOsFile;
	shim_vfs.zName = "nbe-fault";
	shim_vfs.pNext = NULL;
	shim_vfs.xOpen = v_open;
	shim_vfs.xDelete = v_delete;
	shim_vfs.xAccess = v_access;
	shim_vfs.xFullPathname = v_full_pathname;
	shim_vfs.xGetLastError = v_get_last_error;
	if (cfg.crash_at > 0 || cfg.crash_odds > 0) {
		char line[32];
		snprintf(line, sizeof(line), "%ld", (long)getpid());
		registry_add("pids", line);
	}
	if (sqlite3_vfs_register(&shim_vfs, 1) != SQLITE_OK) {
		fprintf(stderr, "vfs_shim: cannot register the VFS\n");
		_exit(2);
	}
}
