/*
 * crash_append: kill -9 at random moments of capture, then prove that every
 * acknowledged event survived (DESIGN §5 "Durable acknowledgement", §11
 * "Faults").
 *
 * Each round forks a writer and SIGKILLs it after a random delay. The writer
 * reports the device event ids of every append that returned success through
 * a pipe; after the kill the parent reopens the buffer with a full check and
 * requires: no reset or quarantine, integrity_check ok, nothing dropped, and
 * every acknowledged id present. Two kinds of writer:
 *
 *   library  a child that opens the buffer and appends singles and small
 *            batches (nbe_buffer_append / nbe_buffer_append_batch) forever;
 *   cli      a child that runs `$NBE_CLI record ...` in a tight loop with its
 *            stdout on the pipe, so the CLI's own open/append/close is hit.
 *
 * Every few rounds the file is deleted first and the kill comes within
 * 10 ms, mostly during creation and schema migration of the new file (the
 * summary says where those kills landed).
 * At the end a self-check damages the buffer on purpose (deletes one
 * acknowledged event; then corrupts a page) and requires the verifier to
 * notice both, so this test can fail.
 *
 * Environment (all optional):
 *   NBE_CLI                 the CLI binary (set by ctest); without it the cli
 *                           rounds are skipped with a warning
 *   NBE_CRASH_KILLS         library-writer kills (default 80)
 *   NBE_CRASH_CLI_KILLS     CLI-writer kills (default 40)
 *   NBE_CRASH_MAX_DELAY_US  longest delay before a kill (default 50000)
 *   NBE_CRASH_FRESH_EVERY   every Nth round starts on a new file (default 6,
 *                           0 = never)
 *   NBE_CRASH_FULL_LIMIT    up to this many ids per buffer every id is looked
 *                           up after every kill (default 30000); beyond it,
 *                           the new ids and 2000 random older ones, with a
 *                           full pass every NBE_CRASH_FULL_EVERY rounds
 *                           (default 25) and at the end
 *   NBE_CRASH_ROTATE_AT     a long-lived buffer is checked in full and started
 *                           afresh once it holds this many acknowledged ids
 *                           (default 60000), so long runs stay linear
 *   NBE_CRASH_SEED          PRNG seed, to replay a failing run
 *   NBE_CRASH_DIR           where to make the work directory (default
 *                           $NBE_BUILD_DIR or the current directory)
 *   NBE_CRASH_KEEP          1 = keep the work directory even on success
 *   NBE_CRASH_SELFCHECK     0 = skip the self-check
 *
 * Exit status: 0 pass, 1 a durability or integrity violation, 2 setup error.
 */
#include "buffer.h"
#include "clock.h"
#include "event.h"
#include "ids.h"
#include "json.h"
#include "parse.h"
#include "random.h"
#include "sysinfo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ID_LINE		  (NBE_UUID_LEN + 1) /* "uuid\n" */
#define MAX_BATCH	  64		     /* 64 * 37 < PIPE_BUF: one atomic write */
#define MAX_ACKS	  (4 * 1024 * 1024)  /* ids remembered per file */
#define MAX_KILLS	  1000000
#define SAMPLE_OLD	  2000	/* older ids looked up when not all are */
#define EARLY_KILL_US	  10000 /* new-file rounds: kill within this */
#define BUFFER_MAX_BYTES  (512LL * 1024 * 1024)
#define BUFFER_MAX_EVENTS 10000000LL

_Static_assert(MAX_BATCH *ID_LINE <= PIPE_BUF, "a batch of ids must fit one atomic write");

enum writer_kind {
	WRITER_LIBRARY,
	WRITER_CLI,
};

/* Exit codes of a writer that stopped by itself (it never should). */
enum writer_exit {
	WEXIT_SETUP = 10,
	WEXIT_OPEN = 11,
	WEXIT_APPEND = 12,
	WEXIT_PIPE = 13,
	WEXIT_CLI = 14,
};

/* The acknowledged ids of one buffer file. */
struct ackset {
	char (*ids)[NBE_UUID_LEN + 1];
	size_t n, cap;
};

struct target {
	char dir[PATH_MAX];	  /* state directory (the CLI's --state-dir) */
	char path[PATH_MAX + 16]; /* dir/events.db */
	struct ackset acks;
};

struct settings {
	int64_t kills;
	int64_t cli_kills;
	int64_t max_delay_us;
	int64_t fresh_every;
	int64_t full_limit;
	int64_t full_every;
	int64_t rotate_at;
	uint64_t seed;
	bool keep;
	bool selfcheck;
	const char *cli;
	char workdir[PATH_MAX];
	char config[PATH_MAX];
	char boot_id[NBE_UUID_LEN + 1];
};

struct totals {
	int64_t kills, early_kills, exited, acked, verified, rounds_with_acks;
	int64_t lib_kills, cli_kills;
	/* where the new-file rounds were killed */
	int64_t new_nofile, new_empty, new_noack, new_acked;
	int64_t full_checks;
	int64_t rotations;
};

/* ---- small helpers ------------------------------------------------------- */

/* splitmix64: reproducible from the printed seed. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t bound)
{
	return bound ? rng_next() % bound : 0;
}

static int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int env_int(const char *name, int64_t min, int64_t max, int64_t *ret)
{
	const char *v = getenv(name);
	int64_t x;

	if (!v || !*v)
		return 0;
	if (nbe_parse_int64(v, min, max, &x) < 0) {
		fprintf(stderr,
			"crash_append: %s=%s: not an integer in [%" PRId64 ", %" PRId64 "]\n", name,
			v, min, max);
		return -EINVAL;
	}
	*ret = x;
	return 0;
}

static int ackset_add(struct ackset *s, const char *id)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 4096;
		void *p;

		if (cap > MAX_ACKS)
			return -ENOBUFS;
		p = realloc(s->ids, cap * sizeof(*s->ids));
		if (!p)
			return -ENOMEM;
		s->ids = p;
		s->cap = cap;
	}
	memcpy(s->ids[s->n], id, NBE_UUID_LEN);
	s->ids[s->n][NBE_UUID_LEN] = '\0';
	s->n++;
	return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void remove_buffer_files(const char *path)
{
	static const char *const suffix[] = { "", "-wal", "-shm", "-journal", ".quarantine-lock" };
	char p[PATH_MAX + 32];

	for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
		snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
		unlink(p);
	}
}

/* Removes the work directory and its state directories (one level deep). */
static void remove_tree(const char *dir, int depth)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[PATH_MAX];

	if (!d)
		return;
	while ((e = readdir(d))) {
		struct stat st;
		int n;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		n = snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		if (n < 0 || (size_t)n >= sizeof(p))
			continue;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode) && depth > 0)
			remove_tree(p, depth - 1);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

/* ---- the writers (children) ---------------------------------------------- */

static struct nbe_buffer_opts buffer_opts(const char *path, bool full_check)
{
	struct nbe_buffer_opts o = {
		.path = path,
		.max_bytes = BUFFER_MAX_BYTES,
		.max_events = BUFFER_MAX_EVENTS,
		.keep_sent = 1000,
		.busy_timeout_ms = 10000,
		.full_check = full_check,
		.boot_id_file = NBE_BOOT_ID_FILE,
		.timesync_file = NULL,
	};
	return o;
}

/*
 * Builds event @k of the writer's stream: mostly plain events, with
 * lifecycle starts and completions of one job so the automatic parent link
 * is on the path too.
 */
static int make_event(struct nbe_event *ev, const char *boot_id, const char *job, uint64_t k)
{
	static const char *const names[] = { "test.crash.append", "test.crash.append",
					     "nuvlabox.reboot", "nuvlabox.reboot.completed",
					     "nuvlabox.add-ssh-key" };
	struct nbe_error err = { { 0 } };
	char round[48], idx[48];
	const char *pairs[3] = { round, idx, NULL };
	struct nbe_event_input in = { 0 };
	const char *name = names[k % (sizeof(names) / sizeof(names[0]))];
	int r;

	snprintf(round, sizeof(round), "pid=%ld", (long)getpid());
	snprintf(idx, sizeof(idx), "k=%" PRIu64, k);
	in.name = name;
	in.severity = k % 3 == 0 ? "low" : "medium";
	in.detail_pairs = pairs;
	if (strncmp(name, "nuvlabox.", 9) == 0)
		in.job = job;
	r = nbe_event_init_capture(ev, &in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(), boot_id,
				   false, &err);
	if (r < 0)
		fprintf(stderr, "crash_append: writer: %s\n", err.msg);
	return r;
}

/* Appends until killed. Never returns. */
static void __attribute__((noreturn))
library_writer(const struct settings *s, const char *path, int fd, uint64_t seed)
{
	struct nbe_buffer_opts o = buffer_opts(path, false);
	struct nbe_event evs[MAX_BATCH];
	struct nbe_buffer *b = NULL;
	struct nbe_error err = { { 0 } };
	char job[64], uuid[NBE_UUID_LEN + 1], out[MAX_BATCH * ID_LINE];
	uint64_t k = 0;

	rng_state = seed;
	memset(evs, 0, sizeof(evs));
	if (nbe_uuid_v4(uuid) < 0)
		_exit(WEXIT_SETUP);
	snprintf(job, sizeof(job), "job/%s", uuid);
	/* as the CLI does: no full check on the hot path */
	if (nbe_buffer_open(&o, &b, NULL, &err) < 0) {
		fprintf(stderr, "crash_append: writer: open: %s\n", err.msg);
		_exit(WEXIT_OPEN);
	}
	for (;;) {
		/* half singles, half batches of 2..MAX_BATCH */
		size_t n = rng_below(2) ? 1 : 2 + (size_t)rng_below(MAX_BATCH - 1);
		size_t len = 0;
		int r;

		for (size_t i = 0; i < n; i++) {
			if (make_event(&evs[i], s->boot_id, job, k++) < 0)
				_exit(WEXIT_SETUP);
		}
		r = n == 1 ? nbe_buffer_append(b, &evs[0], &err)
			   : nbe_buffer_append_batch(b, evs, n, &err);
		if (r < 0) {
			fprintf(stderr, "crash_append: writer: append of %zu: %s\n", n, err.msg);
			_exit(WEXIT_APPEND);
		}
		/* durable now: acknowledge, in one atomic write */
		for (size_t i = 0; i < n; i++) {
			memcpy(out + len, evs[i].id, NBE_UUID_LEN);
			out[len + NBE_UUID_LEN] = '\n';
			len += ID_LINE;
			nbe_event_clear(&evs[i]);
		}
		if (write_all(fd, out, len) < 0)
			_exit(WEXIT_PIPE);
	}
}

/* Runs the CLI's record in a loop with its stdout on @fd. Never returns. */
static void __attribute__((noreturn))
cli_writer(const struct settings *s, const char *state_dir, int fd, uint64_t seed)
{
	char job[64], uuid[NBE_UUID_LEN + 1], kbuf[48];
	uint64_t k = 0;

	rng_state = seed;
	if (nbe_uuid_v4(uuid) < 0)
		_exit(WEXIT_SETUP);
	snprintf(job, sizeof(job), "job/%s", uuid);
	if (dup2(fd, STDOUT_FILENO) < 0)
		_exit(WEXIT_SETUP);
	for (;;) {
		const char *argv[16];
		int argc = 0, status;
		pid_t pid;

		snprintf(kbuf, sizeof(kbuf), "k=%" PRIu64, k);
		argv[argc++] = s->cli;
		argv[argc++] = "--config";
		argv[argc++] = s->config;
		argv[argc++] = "--state-dir";
		argv[argc++] = state_dir;
		argv[argc++] = "record";
		switch (k % 4) {
		case 1:
			argv[argc++] = "nuvlabox.reboot";
			argv[argc++] = "--job";
			argv[argc++] = job;
			break;
		case 2:
			argv[argc++] = "nuvlabox.reboot.completed";
			argv[argc++] = "--job";
			argv[argc++] = job;
			break;
		default:
			argv[argc++] = "test.crash.cli";
			argv[argc++] = "--severity";
			argv[argc++] = rng_below(2) ? "low" : "high";
			break;
		}
		argv[argc++] = "--detail";
		argv[argc++] = kbuf;
		argv[argc] = NULL;
		k++;

		pid = fork();
		if (pid < 0)
			_exit(WEXIT_SETUP);
		if (pid == 0) {
			execv(s->cli, (char *const *)(uintptr_t)argv);
			_exit(127);
		}
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "crash_append: writer: %s record exited with %d\n", s->cli,
				WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
			_exit(WEXIT_CLI);
		}
	}
}

/* ---- the parent: kill, collect, verify ----------------------------------- */

/* Splits the pipe's bytes into ids; keeps a partial line for the next call. */
struct linebuf {
	char buf[4 * PIPE_BUF];
	size_t len;
};

static int take_lines(struct linebuf *lb, struct ackset *acks, int64_t *ret_new)
{
	size_t off = 0;

	while (lb->len - off >= ID_LINE) {
		char id[NBE_UUID_LEN + 1];

		memcpy(id, lb->buf + off, NBE_UUID_LEN);
		id[NBE_UUID_LEN] = '\0';
		if (lb->buf[off + NBE_UUID_LEN] != '\n' || !nbe_uuid_valid(id)) {
			fprintf(stderr, "crash_append: garbage on the ack pipe: '%.*s'\n",
				(int)ID_LINE, lb->buf + off);
			return -EPROTO;
		}
		if (ackset_add(acks, id) < 0) {
			fprintf(stderr, "crash_append: more than %d acknowledged ids\n", MAX_ACKS);
			return -ENOBUFS;
		}
		(*ret_new)++;
		off += ID_LINE;
	}
	memmove(lb->buf, lb->buf + off, lb->len - off);
	lb->len -= off;
	return 0;
}

/* Reads what is available (or, with @deadline_us < 0, everything up to EOF).
 * Returns 1 at EOF, 0 at the deadline, or -errno. */
static int collect(int fd, struct linebuf *lb, struct ackset *acks, int64_t deadline_us,
		   int64_t *ret_new)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		struct timespec ts, *tsp = NULL;
		ssize_t n;
		int r;

		if (deadline_us >= 0) {
			int64_t left = deadline_us - mono_us();

			if (left <= 0)
				return 0;
			ts.tv_sec = (time_t)(left / 1000000);
			ts.tv_nsec = (long)(left % 1000000) * 1000;
			tsp = &ts;
		}
		r = ppoll(&pfd, 1, tsp, NULL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			continue; /* re-evaluates the deadline */
		n = read(fd, lb->buf + lb->len, sizeof(lb->buf) - lb->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0) {
			if (lb->len) {
				fprintf(stderr, "crash_append: a partial id on the ack pipe\n");
				return -EPROTO;
			}
			return 1;
		}
		lb->len += (size_t)n;
		r = take_lines(lb, acks, ret_new);
		if (r < 0)
			return r;
	}
}

/* Whether the state directory holds a quarantined buffer. */
static bool has_quarantine(const char *dir, char *ret_name, size_t size)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	while ((e = readdir(d))) {
		if (strstr(e->d_name, ".corrupt-")) {
			snprintf(ret_name, size, "%s", e->d_name);
			found = true;
			break;
		}
	}
	closedir(d);
	return found;
}

/* Looks up acknowledged id @i. Returns 0 or -errno, with the reason in @err. */
static int check_id(struct nbe_buffer *b, const struct target *t, size_t i, struct nbe_error *err)
{
	struct nbe_event ev = { 0 };
	int r = nbe_buffer_get(b, t->acks.ids[i], &ev, err);

	if (r == 0 && strcmp(ev.id, t->acks.ids[i]) != 0)
		r = nbe_error_set(err, -EUCLEAN, "a different event came back (%s)", ev.id);
	nbe_event_clear(&ev);
	return r;
}

/*
 * The check after each kill. Looks up every acknowledged id (@full), or
 * those acknowledged from index @from on plus SAMPLE_OLD random older ones.
 * Returns the number of violations found (0 = all good) and prints each
 * (the first few missing ids only).
 */
static int64_t verify(const struct target *t, const char *when, bool full, size_t from,
		      int64_t *ret_verified)
{
	struct nbe_buffer_opts o = buffer_opts(t->path, true);
	struct nbe_buffer_open_info info = { 0 };
	struct nbe_buffer_stats st = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = NULL;
	int64_t bad = 0, missing = 0;
	char qname[256];
	int r;

	r = nbe_buffer_open(&o, &b, &info, &err);
	if (r < 0) {
		fprintf(stderr, "FAIL %s: reopen: %s\n", when, err.msg);
		return 1;
	}
	if (info.reset) {
		fprintf(stderr,
			"FAIL %s: the buffer was reset (%s), moved to %s, %" PRId64 " salvaged\n",
			when, info.reason, info.quarantined, info.salvaged);
		bad++;
	}
	if (has_quarantine(t->dir, qname, sizeof(qname))) {
		fprintf(stderr, "FAIL %s: a quarantined buffer exists: %s\n", when, qname);
		bad++;
	}
	r = nbe_buffer_integrity_check(b, &err);
	if (r < 0) {
		fprintf(stderr, "FAIL %s: %s\n", when, err.msg);
		bad++;
	}
	if (full)
		from = 0;
	for (size_t j = 0, nsample = full ? 0 : SAMPLE_OLD; from + j < t->acks.n + nsample; j++) {
		size_t i = from + j;

		if (i >= t->acks.n) {
			if (from == 0)
				break;
			i = (size_t)rng_below(from); /* a random older one */
		}
		r = check_id(b, t, i, &err);
		if (r == 0) {
			(*ret_verified)++;
			continue;
		}
		if (missing++ < 5)
			fprintf(stderr, "FAIL %s: acknowledged event %s (#%zu of %zu): %s\n", when,
				t->acks.ids[i], i + 1, t->acks.n, err.msg);
	}
	if (missing) {
		fprintf(stderr, "FAIL %s: %" PRId64 " of %zu acknowledged events missing\n", when,
			missing, t->acks.n);
		bad += missing;
	}
	r = nbe_buffer_stats(b, &st, &err);
	if (r < 0) {
		fprintf(stderr, "FAIL %s: stats: %s\n", when, err.msg);
		bad++;
	} else {
		if (st.dropped != 0) {
			fprintf(stderr, "FAIL %s: %" PRId64 " events dropped\n", when, st.dropped);
			bad++;
		}
		if (st.pending + st.sent + st.dead < (int64_t)t->acks.n) {
			fprintf(stderr, "FAIL %s: %" PRId64 " events stored, %zu acknowledged\n",
				when, st.pending + st.sent + st.dead, t->acks.n);
			bad++;
		}
	}
	nbe_buffer_close(b);
	return bad;
}

/* Kills the whole process group of @pid and reaps every child (we are a
 * subreaper, so the CLI writer's orphans come back to us). Returns the
 * wait status of @pid. */
static int kill_and_reap(pid_t pid)
{
	int status = 0, st;
	pid_t w;

	kill(-pid, SIGKILL);
	for (;;) {
		w = waitpid(-1, &st, 0);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			break;
		if (w == pid)
			status = st;
	}
	return status;
}

/* Picks how long the writer lives, in microseconds. */
static int64_t pick_delay(const struct settings *s, bool fresh)
{
	uint64_t max = (uint64_t)s->max_delay_us;

	if (fresh)
		return (int64_t)rng_below(EARLY_KILL_US < max ? EARLY_KILL_US : max + 1);
	switch (rng_below(10)) {
	case 0:
		return 0; /* before it did anything */
	case 1:
		return (int64_t)rng_below(2000 < max ? 2000 : max + 1); /* during open */
	default:
		return (int64_t)rng_below(max + 1);
	}
}

/* One round: start a writer on @t, kill it, verify. Returns violations or
 * -errno for a setup problem. */
static int64_t run_round(const struct settings *s, struct totals *tot, struct target *t,
			 enum writer_kind kind, bool fresh, int64_t round)
{
	struct linebuf lb = { .len = 0 };
	char when[96];
	int64_t delay, got = 0, bad;
	size_t before;
	bool full;
	uint64_t seed = rng_next();
	int fds[2], status, r;
	pid_t pid;

	if (fresh) {
		remove_buffer_files(t->path);
		t->acks.n = 0;
	}
	delay = pick_delay(s, fresh);
	before = t->acks.n;
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(fds[0]);
		close(fds[1]);
		return r;
	}
	if (pid == 0) {
		/* its own process group, so one kill takes the CLI with it */
		setpgid(0, 0);
		close(fds[0]);
		if (kind == WRITER_LIBRARY)
			library_writer(s, t->path, fds[1], seed);
		else
			cli_writer(s, t->dir, fds[1], seed);
	}
	setpgid(pid, pid); /* both sides, whichever runs first */
	close(fds[1]);
	r = collect(fds[0], &lb, &t->acks, mono_us() + delay, &got);
	status = kill_and_reap(pid);
	if (r >= 0)
		r = collect(fds[0], &lb, &t->acks, -1, &got);
	close(fds[0]);
	if (r < 0)
		return r;

	snprintf(when, sizeof(when), "round %" PRId64 " (%s%s, killed after %" PRId64 " us)", round,
		 kind == WRITER_LIBRARY ? "library" : "cli", fresh ? ", new file" : "", delay);
	if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
		tot->kills++;
		if (kind == WRITER_LIBRARY)
			tot->lib_kills++;
		else
			tot->cli_kills++;
		if (fresh || delay < 2000)
			tot->early_kills++;
	} else {
		/* a writer stops only when something failed */
		fprintf(stderr, "FAIL %s: the writer stopped by itself (status %d)\n", when,
			WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		tot->exited++;
		return 1;
	}
	tot->acked += got;
	if (got)
		tot->rounds_with_acks++;
	if (fresh) {
		struct stat st;

		if (stat(t->path, &st) != 0)
			tot->new_nofile++;
		else if (st.st_size == 0)
			tot->new_empty++;
		else if (got == 0)
			tot->new_noack++;
		else
			tot->new_acked++;
	}
	/* every id after every kill, until that gets quadratic */
	full = t->acks.n <= (size_t)s->full_limit || round % s->full_every == 0;
	if (full)
		tot->full_checks++;
	bad = verify(t, when, full, before, &tot->verified);
	if (bad == 0 && !fresh && t->acks.n >= (size_t)s->rotate_at) {
		/* integrity_check grows with the file: start a new one, after a
		 * last look at every id of this one */
		if (!full) {
			bad = verify(t, when, true, 0, &tot->verified);
			tot->full_checks++;
		}
		if (bad == 0) {
			remove_buffer_files(t->path);
			t->acks.n = 0;
			tot->rotations++;
		}
	}
	return bad;
}

/* ---- the self-check: the verifier must notice damage --------------------- */

static int sql_exec_on(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);

	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		fprintf(stderr, "crash_append: self-check: %s: %s\n", sql,
			db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
	sqlite3_close_v2(db);
	return rc == SQLITE_OK ? 0 : -EIO;
}

/* Checkpoints everything into the main file, so damage to it is real. */
static int checkpoint_file(const char *path)
{
	return sql_exec_on(path, "PRAGMA wal_checkpoint(TRUNCATE)");
}

/* Overwrites the middle of the file's second-to-last page with garbage. */
static int corrupt_file(const char *path)
{
	unsigned char junk[512];
	struct stat st;
	off_t at;
	int fd = open(path, O_WRONLY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0 || st.st_size < 4 * 4096) {
		close(fd);
		return -EINVAL;
	}
	memset(junk, 0xA5, sizeof(junk));
	at = st.st_size / 2 / 4096 * 4096 + 64;
	if (pwrite(fd, junk, sizeof(junk), at) != (ssize_t)sizeof(junk) || fsync(fd) != 0)
		r = -EIO;
	close(fd);
	return r;
}

/* Returns 0 when the verifier caught both kinds of damage. */
static int selfcheck(struct target *t)
{
	char sql[160], when[] = "self-check";
	int64_t verified = 0, bad;
	const char *victim;

	if (t->acks.n < 1) {
		fprintf(stderr, "crash_append: self-check: too few acknowledged events\n");
		return -EINVAL;
	}
	fprintf(stderr, "self-check: expect FAIL lines below; they are the point\n");
	victim = t->acks.ids[t->acks.n / 2];
	snprintf(sql, sizeof(sql), "DELETE FROM events WHERE id = '%s'", victim);
	if (sql_exec_on(t->path, sql) < 0)
		return -EIO;
	bad = verify(t, when, true, 0, &verified);
	if (bad != 1 || verified != (int64_t)t->acks.n - 1) {
		fprintf(stderr,
			"crash_append: self-check: a deleted event went unnoticed "
			"(violations %" PRId64 ", verified %" PRId64 " of %zu)\n",
			bad, verified, t->acks.n);
		return -EUCLEAN;
	}
	if (checkpoint_file(t->path) < 0 || corrupt_file(t->path) < 0) {
		fprintf(stderr, "crash_append: self-check: cannot damage %s\n", t->path);
		return -EIO;
	}
	bad = verify(t, when, true, 0, &verified);
	if (bad < 1) {
		fprintf(stderr, "crash_append: self-check: a corrupt file went unnoticed\n");
		return -EUCLEAN;
	}
	fprintf(stderr, "self-check: both kinds of damage were detected\n");
	return 0;
}

/* ---- setup --------------------------------------------------------------- */

static int load_settings(struct settings *s)
{
	int64_t seed = -1, keep = 0, want_selfcheck = 1;
	char bid[NBE_UUID_LEN + 1];
	const char *base;
	int r;

	s->kills = 80;
	s->cli_kills = 40;
	s->max_delay_us = 50000;
	s->fresh_every = 6;
	s->full_limit = 30000;
	s->full_every = 25;
	s->rotate_at = 60000;
	if (env_int("NBE_CRASH_KILLS", 0, MAX_KILLS, &s->kills) < 0 ||
	    env_int("NBE_CRASH_CLI_KILLS", 0, MAX_KILLS, &s->cli_kills) < 0 ||
	    env_int("NBE_CRASH_MAX_DELAY_US", 0, 10000000, &s->max_delay_us) < 0 ||
	    env_int("NBE_CRASH_FRESH_EVERY", 0, MAX_KILLS, &s->fresh_every) < 0 ||
	    env_int("NBE_CRASH_FULL_LIMIT", 0, MAX_ACKS, &s->full_limit) < 0 ||
	    env_int("NBE_CRASH_FULL_EVERY", 1, MAX_KILLS, &s->full_every) < 0 ||
	    env_int("NBE_CRASH_ROTATE_AT", 1, MAX_ACKS, &s->rotate_at) < 0 ||
	    env_int("NBE_CRASH_SEED", 0, INT64_MAX, &seed) < 0 ||
	    env_int("NBE_CRASH_KEEP", 0, 1, &keep) < 0 ||
	    env_int("NBE_CRASH_SELFCHECK", 0, 1, &want_selfcheck) < 0)
		return -EINVAL;
	if (seed < 0) {
		uint64_t x;

		if (nbe_random_bytes(&x, sizeof(x)) < 0)
			x = (uint64_t)mono_us();
		seed = (int64_t)(x >> 1);
	}
	s->seed = (uint64_t)seed;
	s->keep = keep;
	s->selfcheck = want_selfcheck;
	s->cli = getenv("NBE_CLI");
	if (s->cli && !*s->cli)
		s->cli = NULL;
	if (s->cli && access(s->cli, X_OK) != 0) {
		fprintf(stderr, "crash_append: NBE_CLI=%s: %s\n", s->cli, strerror(errno));
		return -ENOENT;
	}
	r = nbe_boot_id_read(NBE_BOOT_ID_FILE, bid, sizeof(bid));
	if (r < 0) {
		fprintf(stderr, "crash_append: %s: %s\n", NBE_BOOT_ID_FILE, strerror(-r));
		return r;
	}
	memcpy(s->boot_id, bid, sizeof(bid));

	base = getenv("NBE_CRASH_DIR");
	if (!base || !*base)
		base = getenv("NBE_BUILD_DIR");
	if (!base || !*base)
		base = ".";
	{
		char tmpl[PATH_MAX], abs[PATH_MAX];
		int n = snprintf(tmpl, sizeof(tmpl), "%s/crash-append-XXXXXX", base);

		if (n < 0 || (size_t)n >= sizeof(tmpl) || !mkdtemp(tmpl) || !realpath(tmpl, abs)) {
			fprintf(stderr, "crash_append: cannot make a work directory in %s: %s\n",
				base, strerror(errno));
			return -EIO;
		}
		snprintf(s->workdir, sizeof(s->workdir), "%s", abs);
	}
	return 0;
}

static int setup_target(const struct settings *s, struct target *t, const char *name)
{
	int n = snprintf(t->dir, sizeof(t->dir), "%s/%s", s->workdir, name);

	if (n < 0 || (size_t)n >= sizeof(t->dir))
		return -ENAMETOOLONG;
	snprintf(t->path, sizeof(t->path), "%s/%s", t->dir, NBE_BUFFER_FILE);
	if (mkdir(t->dir, 0750) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int write_config(struct settings *s)
{
	FILE *f;
	int n = snprintf(s->config, sizeof(s->config), "%s/agent.conf", s->workdir);

	if (n < 0 || (size_t)n >= sizeof(s->config))
		return -ENAMETOOLONG;
	f = fopen(s->config, "we");
	if (!f)
		return -errno;
	fprintf(f, "# crash_append: the CLI needs nothing special\n");
	return fclose(f) == 0 ? 0 : -EIO;
}

int main(void)
{
	struct settings s = { 0 };
	struct totals tot = { 0 };
	struct target lib = { 0 }, lib_new = { 0 }, cli = { 0 }, cli_new = { 0 };
	int64_t bad = 0, round = 0, t0;
	int r, ret = 2;

	setvbuf(stdout, NULL, _IOLBF, 0);
	nbe_json_install_hooks();
	if (load_settings(&s) < 0)
		return 2;
	rng_state = s.seed;
	/* orphaned CLI processes of a killed writer come back to us to reap */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
		fprintf(stderr, "crash_append: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
		goto out;
	}
	if (setup_target(&s, &lib, "lib") < 0 || setup_target(&s, &lib_new, "lib-new") < 0 ||
	    setup_target(&s, &cli, "cli") < 0 || setup_target(&s, &cli_new, "cli-new") < 0 ||
	    write_config(&s) < 0) {
		fprintf(stderr, "crash_append: cannot set up %s\n", s.workdir);
		goto out;
	}
	if (!s.cli && s.cli_kills > 0) {
		fprintf(stderr,
			"crash_append: warning: NBE_CLI not set, skipping the CLI rounds\n");
		s.cli_kills = 0;
	}
	printf("crash_append: seed %" PRIu64 ", %" PRId64 " library + %" PRId64
	       " CLI kills, delays up to %" PRId64 " us, work dir %s\n",
	       s.seed, s.kills, s.cli_kills, s.max_delay_us, s.workdir);

	t0 = mono_us();
	for (int64_t i = 0; i < s.kills + s.cli_kills; i++, round++) {
		enum writer_kind kind = i < s.kills ? WRITER_LIBRARY : WRITER_CLI;
		int64_t k = kind == WRITER_LIBRARY ? i : i - s.kills;
		bool fresh = s.fresh_every > 0 && k % s.fresh_every == s.fresh_every - 1;
		struct target *t = kind == WRITER_LIBRARY ? (fresh ? &lib_new : &lib)
							  : (fresh ? &cli_new : &cli);
		int64_t b = run_round(&s, &tot, t, kind, fresh, round);

		if (b < 0) {
			fprintf(stderr, "crash_append: round %" PRId64 ": %s\n", round,
				strerror((int)-b));
			goto out;
		}
		bad += b;
		if (b > 0)
			break; /* keep the evidence as it is */
		if (round % 100 == 99)
			printf("crash_append: %" PRId64 " rounds, %" PRId64 " kills, %" PRId64
			       " acknowledged, %.1f s\n",
			       round + 1, tot.kills, tot.acked, (double)(mono_us() - t0) / 1e6);
	}
	/* a last look at every id of the long-lived buffers */
	for (int i = 0; i < 2 && bad == 0; i++) {
		struct target *t = i == 0 ? &lib : &cli;

		if (t->acks.n > 0) {
			bad += verify(t, "final", true, 0, &tot.verified);
			tot.full_checks++;
		}
	}
	printf("crash_append: %" PRId64 " kills (%" PRId64 " library, %" PRId64 " CLI, %" PRId64
	       " early), %" PRId64 " acknowledged events, %" PRId64 " lookups (%" PRId64
	       " full passes, %" PRId64 " buffers started afresh), %" PRId64
	       " violations, %.1f s (seed %" PRIu64 ")\n",
	       tot.kills, tot.lib_kills, tot.cli_kills, tot.early_kills, tot.acked, tot.verified,
	       tot.full_checks, tot.rotations, bad, (double)(mono_us() - t0) / 1e6, s.seed);
	printf("crash_append: events per buffer: library %zu, CLI %zu; new-file kills: %" PRId64
	       " before the file existed, %" PRId64 " with the file empty, %" PRId64
	       " before the first ack, %" PRId64 " after\n",
	       lib.acks.n, cli.acks.n, tot.new_nofile, tot.new_empty, tot.new_noack, tot.new_acked);
	if (bad) {
		fprintf(stderr,
			"crash_append: FAILED; evidence kept in %s (replay with "
			"NBE_CRASH_SEED=%" PRIu64 ")\n",
			s.workdir, s.seed);
		ret = 1;
		s.keep = true;
		goto out;
	}
	if (tot.kills < s.kills + s.cli_kills) {
		fprintf(stderr, "crash_append: only %" PRId64 " of %" PRId64 " kills happened\n",
			tot.kills, s.kills + s.cli_kills);
		ret = 1;
		goto out;
	}
	if (tot.acked == 0) {
		fprintf(stderr, "crash_append: no append was ever acknowledged; the delays are "
				"too short to test anything\n");
		ret = 1;
		goto out;
	}
	if (s.selfcheck) {
		struct target *all[] = { &lib, &lib_new, &cli, &cli_new }, *t = all[0];

		/* on the buffer with the most acknowledged events */
		for (size_t i = 1; i < sizeof(all) / sizeof(all[0]); i++) {
			if (all[i]->acks.n > t->acks.n)
				t = all[i];
		}
		r = selfcheck(t);
		if (r < 0) {
			fprintf(stderr, "crash_append: the self-check failed: this test cannot "
					"detect lost events\n");
			ret = 1;
			s.keep = true;
			goto out;
		}
	}
	ret = 0;
out:
	if (s.workdir[0] && !s.keep)
		remove_tree(s.workdir, 1);
	else if (s.workdir[0])
		fprintf(stderr, "crash_append: work directory kept: %s\n", s.workdir);
	free(lib.acks.ids);
	free(lib_new.acks.ids);
	free(cli.acks.ids);
	free(cli_new.acks.ids);
	return ret;
}
