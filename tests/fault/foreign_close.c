/*
 * foreign_close: an acknowledged event must survive another process opening
 * and closing the buffer with plain SQLite (an operator's sqlite3 shell, a
 * backup script) while a producer holds it open (DESIGN §5 "Durable
 * acknowledgement").
 *
 * A plain SQLite connection that closes and can take an EXCLUSIVE lock on the
 * database file concludes it is the last user: it checkpoints, then deletes
 * the WAL and resets the shared-memory index. That is safe only while every
 * other connection really holds its SHARED lock on the file. POSIX record
 * locks belong to the process and the file, so any close() of *another*
 * descriptor of the same file in the producer's process silently drops the
 * locks SQLite holds there (https://sqlite.org/howtocorrupt.html §2.2).
 *
 * For each way of opening (full_check false as the CLI does, and true), the
 * test opens an existing buffer, appends one event, has another process
 * probe the lock and then open/read/close the file with plain SQLite,
 * appends a second event, closes, reopens, and requires both events.
 *
 * Exit status: 0 pass, 1 an acknowledged event was lost (or the lock is
 * gone), 2 setup error.
 */
#include "buffer.h"
#include "clock.h"
#include "event.h"
#include "json.h"
#include "sysinfo.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* SQLite's unix VFS: the SHARED lock range of the database file. */
#define SQLITE_SHARED_FIRST (0x40000000 + 2)
#define SQLITE_SHARED_SIZE  510

/* Child exit codes. */
enum {
	PROBE_HELD = 0,
	PROBE_LOST = 3,
	PROBE_ERROR = 4,
};

static struct nbe_buffer_opts opts_for(const char *path, bool full_check)
{
	struct nbe_buffer_opts o = {
		.path = path,
		.max_bytes = 64LL * 1024 * 1024,
		.max_events = 100000,
		.keep_sent = 1000,
		.busy_timeout_ms = 5000,
		.full_check = full_check,
		.boot_id_file = NBE_BOOT_ID_FILE,
	};
	return o;
}

static int append_one(struct nbe_buffer *b, const char *boot_id, char *ret_id, size_t size)
{
	struct nbe_event_input in = { .name = "test.foreign.close" };
	struct nbe_event ev = { 0 };
	struct nbe_error err = { { 0 } };
	int r;

	r = nbe_event_init_capture(&ev, &in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(), boot_id,
				   false, &err);
	if (r == 0)
		r = nbe_buffer_append(b, &ev, &err);
	if (r < 0)
		fprintf(stderr, "foreign_close: append: %s\n", err.msg);
	else
		snprintf(ret_id, size, "%s", ev.id);
	nbe_event_clear(&ev);
	return r;
}

/*
 * The foreign process (this program re-executed with --foreign PATH, so no
 * SQLite state is inherited across fork): reports whether somebody holds
 * SQLite's SHARED lock on @path, then reads the buffer with a plain
 * connection and closes it, which checkpoints and removes the WAL when it
 * believes it is the last user. Returns its exit code (PROBE_*).
 */
static int foreign_main(const char *path)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = SQLITE_SHARED_FIRST,
		.l_len = SQLITE_SHARED_SIZE,
	};
	sqlite3 *db = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC), code = PROBE_HELD;

	if (fd < 0 || fcntl(fd, F_GETLK, &fl) != 0)
		return PROBE_ERROR;
	if (fl.l_type == F_UNLCK)
		code = PROBE_LOST;
	close(fd);
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, "SELECT count(*) FROM events", NULL, NULL, NULL) != SQLITE_OK)
		code = PROBE_ERROR;
	sqlite3_close(db);
	return code;
}

/* Runs the foreign process on @path; returns its exit code. */
static int foreign_reader(const char *path)
{
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return PROBE_ERROR;
	if (pid == 0) {
		execl("/proc/self/exe", "foreign_close", "--foreign", path, (char *)NULL);
		_exit(PROBE_ERROR);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return PROBE_ERROR;
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : PROBE_ERROR;
}

/* Returns 0 (pass), 1 (fail) or 2 (setup error). */
static int scenario(const char *dir, const char *boot_id, bool full_check)
{
	char path[PATH_MAX], ids[2][NBE_UUID_LEN + 1];
	const char *how = full_check ? "full_check=true" : "full_check=false (as the CLI)";
	struct nbe_buffer_opts o;
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *b = NULL;
	int probe, ret = 0, n;

	n = snprintf(path, sizeof(path), "%s/%s.db", dir, full_check ? "full" : "quick");
	if (n < 0 || (size_t)n >= sizeof(path))
		return 2;
	/* an existing buffer: the hot path of every record after the first */
	o = opts_for(path, false);
	if (nbe_buffer_open(&o, &b, NULL, &err) < 0) {
		fprintf(stderr, "foreign_close: create: %s\n", err.msg);
		return 2;
	}
	nbe_buffer_close(b);

	o = opts_for(path, full_check);
	if (nbe_buffer_open(&o, &b, NULL, &err) < 0) {
		fprintf(stderr, "foreign_close: open: %s\n", err.msg);
		return 2;
	}
	if (append_one(b, boot_id, ids[0], sizeof(ids[0])) < 0) {
		nbe_buffer_close(b);
		return 2;
	}
	probe = foreign_reader(path);
	if (probe == PROBE_ERROR) {
		nbe_buffer_close(b);
		fprintf(stderr, "foreign_close: the foreign reader failed\n");
		return 2;
	}
	if (probe == PROBE_LOST) {
		fprintf(stderr,
			"FAIL %s: the producer no longer holds its SHARED lock on the "
			"database file after nbe_buffer_open() (a second descriptor of "
			"the file was closed in its process)\n",
			how);
		ret = 1;
	}
	if (append_one(b, boot_id, ids[1], sizeof(ids[1])) < 0) {
		nbe_buffer_close(b);
		return 2;
	}
	nbe_buffer_close(b);

	o = opts_for(path, true);
	if (nbe_buffer_open(&o, &b, NULL, &err) < 0) {
		fprintf(stderr, "foreign_close: reopen: %s\n", err.msg);
		return 2;
	}
	for (int i = 0; i < 2; i++) {
		struct nbe_event ev = { 0 };

		if (nbe_buffer_get(b, ids[i], &ev, &err) < 0) {
			fprintf(stderr, "FAIL %s: acknowledged event %d (%s) lost: %s\n", how,
				i + 1, ids[i], err.msg);
			ret = 1;
		}
		nbe_event_clear(&ev);
	}
	nbe_buffer_close(b);
	printf("foreign_close: %s: %s\n", how, ret ? "FAIL" : "ok");
	return ret;
}

static void cleanup(const char *dir)
{
	static const char *const names[] = { "quick.db", "quick.db-wal", "quick.db-shm",
					     "full.db",	 "full.db-wal",	 "full.db-shm" };
	char p[PATH_MAX + 16];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
}

int main(int argc, char **argv)
{
	char dir[PATH_MAX], boot_id[NBE_UUID_LEN + 1];
	const char *base = getenv("NBE_BUILD_DIR");
	int r, ret;

	if (argc == 3 && strcmp(argv[1], "--foreign") == 0)
		return foreign_main(argv[2]);
	if (argc != 1) {
		fprintf(stderr, "usage: foreign_close\n");
		return 2;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	nbe_json_install_hooks();
	if (nbe_boot_id_read(NBE_BOOT_ID_FILE, boot_id, sizeof(boot_id)) < 0)
		return 2;
	r = snprintf(dir, sizeof(dir), "%s/foreign-close-XXXXXX", base && *base ? base : ".");
	if (r < 0 || (size_t)r >= sizeof(dir) || !mkdtemp(dir)) {
		fprintf(stderr, "foreign_close: cannot make a work directory\n");
		return 2;
	}
	ret = scenario(dir, boot_id, true);
	r = scenario(dir, boot_id, false);
	if (r > ret)
		ret = r;
	if (ret == 0)
		cleanup(dir);
	else
		fprintf(stderr, "foreign_close: evidence kept in %s\n", dir);
	return ret;
}
