/*
 * bench_append: capture rate of the durable buffer against the raw fsync rate
 * of the same file system (DESIGN §9, §11 "Benchmarks"). Not a test: it
 * prints a table, and checks nothing but that each step worked.
 *
 *   raw       4 KiB write + fdatasync, appending to a file (it grows)
 *   raw-ow    4 KiB pwrite + fdatasync over blocks that already exist
 *   single    nbe_buffer_append, one event per durable transaction
 *   batch     nbe_buffer_append_batch of 100 events per transaction
 *   cli       wall time of `nuvlabox-event record` on a buffer that already
 *             holds --prefill events (fork, exec, open, append, close, exit)
 *   cli-ver   wall time of `nuvlabox-event --version`: the process floor
 *
 * raw, raw-ow and single run in interleaved slices, so the noise of a shared
 * machine falls on all three alike. Only the operation itself is timed
 * (events are built outside the clock).
 *
 * usage: bench_append [-d DIR] [-c CLI] [-t SECONDS] [-n OPS] [-r RUNS]
 *                     [-p PREFILL] [-o rate,batch,cli] [-k]
 */
#include "buffer.h"
#include "clock.h"
#include "event.h"
#include "ids.h"
#include "json.h"
#include "parse.h"
#include "sysinfo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/magic.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef NBE_BENCH_BUILD_DIR
#define NBE_BENCH_BUILD_DIR "."
#endif
#ifndef NBE_BENCH_CLI
#define NBE_BENCH_CLI "nuvlabox-event"
#endif

#define BLOCK	     4096
#define RAW_FILE_MAX (64LL * 1024 * 1024) /* the appending file starts over here */
#define OW_BLOCKS    256		  /* raw-ow cycles over 1 MiB */
#define SLICES	     10
#define BATCH	     100
#define MAX_SAMPLES  (1 << 22)
#define MAX_RUNS     100000
/* Caps far above what a run writes: the benchmark measures appends, not
 * eviction. */
#define BENCH_MAX_BYTES	 (8LL * 1024 * 1024 * 1024)
#define BENCH_MAX_EVENTS 100000000LL

/* Timings of one kind of operation. */
struct series {
	const char *name;
	int64_t ops;	 /* operations timed */
	int64_t items;	 /* events (or blocks) they carried */
	int64_t busy_ns; /* time inside the operations */
	int64_t *lat;	 /* per-operation latency, ns (the first MAX_SAMPLES) */
	size_t nlat, caplat;
};

struct bench {
	char dir[PATH_MAX];
	char config[PATH_MAX + 16];
	const char *cli;
	double seconds;
	int64_t ops_limit; /* 0: by time */
	int64_t runs;
	int64_t prefill;
	bool keep;
	bool run_rate, run_batch, run_cli;
	char boot_id[NBE_UUID_LEN + 1];
	uint64_t k; /* events made so far */
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int series_add(struct series *s, int64_t ns, int64_t items)
{
	s->ops++;
	s->items += items;
	s->busy_ns += ns;
	if (s->nlat == s->caplat) {
		size_t cap = s->caplat ? s->caplat * 2 : 4096;
		int64_t *p;

		if (cap > MAX_SAMPLES)
			return 0; /* enough samples: keep counting, stop storing */
		p = realloc(s->lat, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->lat = p;
		s->caplat = cap;
	}
	s->lat[s->nlat++] = ns;
	return 0;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* The @p-th percentile (0..100) in ms, nearest rank. */
static double pct_ms(const struct series *s, double p)
{
	size_t i;

	if (!s->nlat)
		return 0;
	i = (size_t)(p / 100.0 * (double)s->nlat + 0.999999);
	if (i < 1)
		i = 1;
	if (i > s->nlat)
		i = s->nlat;
	return (double)s->lat[i - 1] / 1e6;
}

static double rate(const struct series *s)
{
	return s->busy_ns ? (double)s->items * 1e9 / (double)s->busy_ns : 0;
}

/* ---- file system ---------------------------------------------------------- */

static const char *fs_name(long type)
{
	switch ((unsigned long)type) {
	case TMPFS_MAGIC:
		return "tmpfs";
	case EXT4_SUPER_MAGIC:
		return "ext2/3/4";
	case XFS_SUPER_MAGIC:
		return "xfs";
	case BTRFS_SUPER_MAGIC:
		return "btrfs";
	case F2FS_SUPER_MAGIC:
		return "f2fs";
	case OVERLAYFS_SUPER_MAGIC:
		return "overlayfs";
	case RAMFS_MAGIC:
		return "ramfs";
	default:
		return "unknown";
	}
}

static void check_fs(const char *dir)
{
	struct statfs sf;

	if (statfs(dir, &sf) != 0) {
		fprintf(stderr, "bench_append: statfs %s: %s\n", dir, strerror(errno));
		return;
	}
	printf("file system: %s (f_type %#lx)\n", fs_name((long)sf.f_type),
	       (unsigned long)sf.f_type);
	if ((unsigned long)sf.f_type == TMPFS_MAGIC || (unsigned long)sf.f_type == RAMFS_MAGIC)
		fprintf(stderr,
			"bench_append: WARNING: %s is in memory (%s): fsync costs nothing "
			"there and every figure below is meaningless; use -d on a disk\n",
			dir, fs_name((long)sf.f_type));
	if ((unsigned long)sf.f_type == OVERLAYFS_SUPER_MAGIC)
		fprintf(stderr,
			"bench_append: warning: %s is on overlayfs; the figures are "
			"those of its upper layer\n",
			dir);
}

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

/* ---- raw fsync ------------------------------------------------------------ */

struct raw {
	int fd;
	bool overwrite;
	int64_t off;
	char path[PATH_MAX + 16];
};

static int raw_open(struct raw *w, const char *dir, const char *name, bool overwrite)
{
	static char zero[BLOCK];

	snprintf(w->path, sizeof(w->path), "%s/%s", dir, name);
	w->overwrite = overwrite;
	w->off = 0;
	w->fd = open(w->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (w->fd < 0)
		return -errno;
	if (overwrite) {
		/* the blocks exist and are on disk before the clock starts */
		for (int i = 0; i < OW_BLOCKS; i++) {
			if (write(w->fd, zero, BLOCK) != BLOCK)
				return -EIO;
		}
		if (fsync(w->fd) != 0)
			return -errno;
	}
	return 0;
}

static int raw_op(struct raw *w, struct series *s)
{
	static char block[BLOCK];
	int64_t t0;

	if (!w->overwrite && w->off >= RAW_FILE_MAX) {
		/* start over, outside the clock */
		if (ftruncate(w->fd, 0) != 0 || fsync(w->fd) != 0)
			return -errno;
		w->off = 0;
	}
	memset(block, (int)(w->off / BLOCK) & 0xff, sizeof(block));
	t0 = now_ns();
	if (pwrite(w->fd, block, BLOCK, w->off) != BLOCK || fdatasync(w->fd) != 0)
		return -EIO;
	w->off += BLOCK;
	if (w->overwrite && w->off >= (int64_t)OW_BLOCKS * BLOCK)
		w->off = 0;
	return series_add(s, now_ns() - t0, 1);
}

/* ---- buffer appends ------------------------------------------------------- */

static struct nbe_buffer_opts buffer_opts(const char *path)
{
	struct nbe_buffer_opts o = {
		.path = path,
		.max_bytes = BENCH_MAX_BYTES,
		.max_events = BENCH_MAX_EVENTS,
		.keep_sent = 1000,
		.busy_timeout_ms = 10000,
		.full_check = false,
		.boot_id_file = NBE_BOOT_ID_FILE,
	};
	return o;
}

static int open_buffer(const char *dir, const char *name, struct nbe_buffer **ret)
{
	char path[PATH_MAX + 32];
	struct nbe_buffer_opts o;
	struct nbe_error err = { { 0 } };
	int r;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	o = buffer_opts(path);
	r = nbe_buffer_open(&o, ret, NULL, &err);
	if (r < 0)
		fprintf(stderr, "bench_append: %s\n", err.msg);
	return r;
}

/* An event as a producer would record it: a name, two details. */
static int make_event(struct bench *bn, struct nbe_event *ev)
{
	struct nbe_error err = { { 0 } };
	char k[48];
	const char *pairs[] = { k, "source=bench_append", NULL };
	struct nbe_event_input in = { .name = "test.bench.append", .detail_pairs = pairs };
	int r;

	snprintf(k, sizeof(k), "k=%" PRIu64, bn->k++);
	r = nbe_event_init_capture(ev, &in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(),
				   bn->boot_id, false, &err);
	if (r < 0)
		fprintf(stderr, "bench_append: %s\n", err.msg);
	return r;
}

/* Appends @n events as one batch (n == 1: nbe_buffer_append), timing only
 * the append. */
static int append_op(struct bench *bn, struct nbe_buffer *b, struct nbe_event *evs, size_t n,
		     struct series *s)
{
	struct nbe_error err = { { 0 } };
	int64_t t0, t1;
	int r = 0;

	for (size_t i = 0; i < n; i++) {
		r = make_event(bn, &evs[i]);
		if (r < 0)
			goto out;
	}
	t0 = now_ns();
	r = n == 1 ? nbe_buffer_append(b, &evs[0], &err) : nbe_buffer_append_batch(b, evs, n, &err);
	t1 = now_ns();
	if (r < 0) {
		fprintf(stderr, "bench_append: append: %s\n", err.msg);
		goto out;
	}
	r = series_add(s, t1 - t0, (int64_t)n);
out:
	for (size_t i = 0; i < n; i++)
		nbe_event_clear(&evs[i]);
	return r;
}

/* ---- the CLI -------------------------------------------------------------- */

/* Runs the CLI once with @argv, stdout and stdin on /dev/null, timing the
 * whole life of the process. */
static int cli_run(const char *cli, const char *const *argv, int devnull, struct series *s)
{
	int64_t t0 = now_ns(), t1;
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (dup2(devnull, STDIN_FILENO) < 0 || dup2(devnull, STDOUT_FILENO) < 0)
			_exit(126);
		execv(cli, (char *const *)(uintptr_t)argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	t1 = now_ns();
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "bench_append: %s %s failed (status %d)\n", cli, argv[1],
			WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		return -EIO;
	}
	return series_add(s, t1 - t0, 1);
}

static int bench_cli(struct bench *bn, struct series *rec, struct series *ver)
{
	struct nbe_event evs[BATCH];
	struct series fill = { .name = "prefill" };
	struct nbe_buffer *b = NULL;
	char state[PATH_MAX + 16], kbuf[48];
	int devnull, r = 0;

	memset(evs, 0, sizeof(evs));
	snprintf(state, sizeof(state), "%s/cli-state", bn->dir);
	if (mkdir(state, 0750) != 0)
		return -errno;
	r = open_buffer(state, NBE_BUFFER_FILE, &b);
	if (r < 0)
		return r;
	for (int64_t done = 0; done < bn->prefill && r == 0; done += BATCH) {
		size_t n = bn->prefill - done < BATCH ? (size_t)(bn->prefill - done) : BATCH;

		r = append_op(bn, b, evs, n, &fill);
	}
	nbe_buffer_close(b);
	free(fill.lat);
	if (r < 0)
		return r;

	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull < 0)
		return -errno;
	for (int64_t i = 0; i < bn->runs && r == 0; i++) {
		const char *argv[] = {
			bn->cli,  "--config",	    bn->config, "--state-dir", state,
			"record", "test.bench.cli", "--detail", kbuf,	       NULL
		};
		const char *vargv[] = { bn->cli, "--version", NULL };

		snprintf(kbuf, sizeof(kbuf), "k=%" PRId64, i);
		/* alternate, so both see the same noise */
		r = cli_run(bn->cli, argv, devnull, rec);
		if (r == 0)
			r = cli_run(bn->cli, vargv, devnull, ver);
	}
	close(devnull);
	return r;
}

/* ---- main ----------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_append [-d DIR] [-c CLI] [-t SECONDS] [-n OPS] [-r RUNS] "
		   "[-p PREFILL] [-o TESTS] [-k]\n"
		   "  -d DIR      where to work (default: a temporary directory under the "
		   "build directory);\n"
		   "              must be on the disk you want to measure, not tmpfs\n"
		   "  -c CLI      the nuvlabox-event binary (default: $NBE_CLI, else the built "
		   "one)\n"
		   "  -t SECONDS  duration of each rate test (default 5)\n"
		   "  -n OPS      run this many operations per rate test instead\n"
		   "  -r RUNS     CLI runs (default 300)\n"
		   "  -p PREFILL  events in the buffer before the CLI runs (default 10000)\n"
		   "  -o TESTS    which tests, comma-separated: rate (raw, raw-ow, single), "
		   "batch, cli\n"
		   "              (default: all; one alone is handy under perf or strace)\n"
		   "  -k          keep the work directory\n");
}

static int parse_args(struct bench *bn, int argc, char **argv)
{
	const char *base = NULL;
	int64_t v;
	int opt;

	bn->seconds = 5;
	bn->runs = 300;
	bn->prefill = 10000;
	bn->run_rate = bn->run_batch = bn->run_cli = true;
	bn->cli = getenv("NBE_CLI");
	if (!bn->cli || !*bn->cli)
		bn->cli = NBE_BENCH_CLI;
	while ((opt = getopt(argc, argv, "d:c:t:n:r:p:o:kh")) != -1) {
		switch (opt) {
		case 'd':
			base = optarg;
			break;
		case 'c':
			bn->cli = optarg;
			break;
		case 't':
			if (nbe_parse_int64(optarg, 1, 3600, &v) < 0)
				goto bad;
			bn->seconds = (double)v;
			break;
		case 'n':
			if (nbe_parse_int64(optarg, SLICES, 100000000, &v) < 0)
				goto bad;
			bn->ops_limit = v;
			break;
		case 'r':
			if (nbe_parse_int64(optarg, 1, MAX_RUNS, &bn->runs) < 0)
				goto bad;
			break;
		case 'p':
			if (nbe_parse_int64(optarg, 0, 10000000, &bn->prefill) < 0)
				goto bad;
			break;
		case 'o':
			bn->run_rate = strstr(optarg, "rate") != NULL;
			bn->run_batch = strstr(optarg, "batch") != NULL;
			bn->run_cli = strstr(optarg, "cli") != NULL;
			if (!bn->run_rate && !bn->run_batch && !bn->run_cli)
				goto bad;
			break;
		case 'k':
			bn->keep = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return -EINVAL;
	}
	if (access(bn->cli, X_OK) != 0) {
		fprintf(stderr, "bench_append: %s: %s (give -c CLI)\n", bn->cli, strerror(errno));
		return -ENOENT;
	}
	{
		char tmpl[PATH_MAX];
		int n = snprintf(tmpl, sizeof(tmpl), "%s/bench-XXXXXX",
				 base ? base : NBE_BENCH_BUILD_DIR);

		if (n < 0 || (size_t)n >= sizeof(tmpl) || !mkdtemp(tmpl) ||
		    !realpath(tmpl, bn->dir)) {
			fprintf(stderr, "bench_append: cannot make a work directory in %s: %s\n",
				base ? base : NBE_BENCH_BUILD_DIR, strerror(errno));
			return -EIO;
		}
	}
	return 0;
bad:
	fprintf(stderr, "bench_append: -%c %s: bad value\n", opt, optarg);
	return -EINVAL;
}

static int write_config(struct bench *bn)
{
	FILE *f;

	snprintf(bn->config, sizeof(bn->config), "%s/agent.conf", bn->dir);
	f = fopen(bn->config, "we");
	if (!f)
		return -errno;
	fprintf(f, "# bench_append: defaults\n");
	return fclose(f) == 0 ? 0 : -EIO;
}

/* Whether the slice is over: by time, or by its share of -n. */
static bool slice_done(const struct bench *bn, int64_t t_end, int64_t ops_start,
		       const struct series *s)
{
	if (bn->ops_limit)
		return s->ops - ops_start >= bn->ops_limit / SLICES;
	return now_ns() >= t_end;
}

static void row(const struct series *s, const char *unit, const char *note)
{
	printf("%-9s %9" PRId64 " %10" PRId64 " %8.2f %12.0f %-5s %8.3f %8.3f %8.3f  %s\n", s->name,
	       s->ops, s->items, (double)s->busy_ns / 1e9, rate(s), unit, pct_ms(s, 50),
	       pct_ms(s, 99), pct_ms(s, 100), note);
}

int main(int argc, char **argv)
{
	struct bench bn = { .dir = "" };
	struct series raw = { .name = "raw" }, ow = { .name = "raw-ow" },
		      single = { .name = "single" }, batch = { .name = "batch" },
		      cli = { .name = "cli" }, ver = { .name = "cli-ver" };
	struct raw rw = { .fd = -1 }, rwo = { .fd = -1 };
	struct nbe_event evs[BATCH];
	struct nbe_buffer *b = NULL;
	char note[160];
	int64_t slice_ns;
	int r, ret = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	nbe_json_install_hooks();
	memset(evs, 0, sizeof(evs));
	if (parse_args(&bn, argc, argv) < 0)
		return 2;
	r = nbe_boot_id_read(NBE_BOOT_ID_FILE, bn.boot_id, sizeof(bn.boot_id));
	if (r < 0 || write_config(&bn) < 0) {
		fprintf(stderr, "bench_append: setup failed\n");
		goto out;
	}
	printf("bench_append: dir %s\n", bn.dir);
	check_fs(bn.dir);
	printf("cli: %s; sqlite %s; %s\n", bn.cli, sqlite3_libversion(),
	       bn.ops_limit ? "by operation count" : "by time");

	slice_ns = (int64_t)(bn.seconds * 1e9) / SLICES;
	if (!bn.run_rate)
		goto batch;
	/* raw, raw-ow and single, interleaved */
	r = raw_open(&rw, bn.dir, "raw-append", false);
	if (r == 0)
		r = raw_open(&rwo, bn.dir, "raw-overwrite", true);
	if (r == 0)
		r = open_buffer(bn.dir, "single.db", &b);
	if (r < 0) {
		fprintf(stderr, "bench_append: setup: %s\n", strerror(-r));
		goto out;
	}
	for (int i = 0; i < SLICES; i++) {
		int64_t start;

		start = raw.ops;
		for (int64_t end = now_ns() + slice_ns; !slice_done(&bn, end, start, &raw);) {
			if ((r = raw_op(&rw, &raw)) < 0)
				goto fail;
		}
		start = ow.ops;
		for (int64_t end = now_ns() + slice_ns; !slice_done(&bn, end, start, &ow);) {
			if ((r = raw_op(&rwo, &ow)) < 0)
				goto fail;
		}
		start = single.ops;
		for (int64_t end = now_ns() + slice_ns; !slice_done(&bn, end, start, &single);) {
			if ((r = append_op(&bn, b, evs, 1, &single)) < 0)
				goto fail;
		}
	}
	nbe_buffer_close(b);
	b = NULL;

batch:
	if (!bn.run_batch)
		goto cli;
	r = open_buffer(bn.dir, "batch.db", &b);
	if (r < 0)
		goto fail;
	for (int i = 0; i < SLICES; i++) {
		int64_t start = batch.ops;

		for (int64_t end = now_ns() + slice_ns; !slice_done(&bn, end, start, &batch);) {
			if ((r = append_op(&bn, b, evs, BATCH, &batch)) < 0)
				goto fail;
		}
	}
	nbe_buffer_close(b);
	b = NULL;

cli:
	if (bn.run_cli) {
		r = bench_cli(&bn, &cli, &ver);
		if (r < 0)
			goto fail;
	}

	qsort(raw.lat, raw.nlat, sizeof(int64_t), cmp_i64);
	qsort(ow.lat, ow.nlat, sizeof(int64_t), cmp_i64);
	qsort(single.lat, single.nlat, sizeof(int64_t), cmp_i64);
	qsort(batch.lat, batch.nlat, sizeof(int64_t), cmp_i64);
	qsort(cli.lat, cli.nlat, sizeof(int64_t), cmp_i64);
	qsort(ver.lat, ver.nlat, sizeof(int64_t), cmp_i64);

	printf("\n%-9s %9s %10s %8s %12s %-5s %8s %8s %8s  %s\n", "test", "ops", "items", "busy s",
	       "rate", "unit", "p50 ms", "p99 ms", "max ms", "note");
	if (bn.run_rate) {
		row(&raw, "op/s", "4 KiB write + fdatasync, file grows");
		row(&ow, "op/s", "4 KiB pwrite + fdatasync, blocks exist");
		snprintf(note, sizeof(note), "%.1f%% of raw, %.1f%% of raw-ow (target >= 70%%)",
			 100.0 * rate(&single) / rate(&raw), 100.0 * rate(&single) / rate(&ow));
		row(&single, "ev/s", note);
	}
	if (bn.run_batch) {
		snprintf(note, sizeof(note), "%d per transaction (target >= 100000 ev/s)", BATCH);
		row(&batch, "ev/s", note);
	}
	if (bn.run_cli) {
		snprintf(note, sizeof(note),
			 "record, %" PRId64 "+ events buffered (target p99 <= 15 ms)", bn.prefill);
		row(&cli, "run/s", note);
		row(&ver, "run/s", "--version: process start floor");
	}
	if (!bn.run_rate || !bn.run_batch || !bn.run_cli) {
		ret = 0;
		goto out;
	}

	printf("\ntargets: single/raw %.1f%% %s, single/raw-ow %.1f%% %s, batch %.0f ev/s %s, "
	       "cli p99 %.2f ms %s\n",
	       100.0 * rate(&single) / rate(&raw),
	       rate(&single) >= 0.7 * rate(&raw) ? "met" : "MISSED",
	       100.0 * rate(&single) / rate(&ow),
	       rate(&single) >= 0.7 * rate(&ow) ? "met" : "MISSED", rate(&batch),
	       rate(&batch) >= 100000 ? "met" : "MISSED", pct_ms(&cli, 99),
	       pct_ms(&cli, 99) <= 15.0 ? "met" : "MISSED");
	ret = 0;
	goto out;

fail:
	fprintf(stderr, "bench_append: failed: %s\n", strerror(r < 0 ? -r : EIO));
out:
	nbe_buffer_close(b);
	if (rw.fd >= 0)
		close(rw.fd);
	if (rwo.fd >= 0)
		close(rwo.fd);
	if (bn.dir[0] && !bn.keep)
		remove_tree(bn.dir, 1);
	else if (bn.dir[0])
		printf("work directory kept: %s\n", bn.dir);
	free(raw.lat);
	free(ow.lat);
	free(single.lat);
	free(batch.lat);
	free(cli.lat);
	free(ver.lat);
	return ret;
}
