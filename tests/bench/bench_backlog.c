/*
 * bench_backlog: fills a state directory's buffer with a backlog of pending
 * events, fast (nbe_buffer_append_batch), for the drain benchmark
 * (bench_drain.py, DESIGN §11 "Benchmarks"). 100,000 `record` runs would
 * take half an hour; batches of 100 take seconds. Not a test: it prints one
 * line of figures and checks nothing but that each step worked.
 *
 * The events are what a producer records: a name, a message and two
 * details, no parent (so that nothing waits for anything while draining).
 * The buffer is checkpointed at the end, as the daemon leaves it when idle.
 *
 * usage: bench_backlog -s STATE_DIR [-n EVENTS] [-b BATCH] [-m MAX_BYTES]
 */
#include "buffer.h"
#include "clock.h"
#include "event.h"
#include "ids.h"
#include "json.h"
#include "parse.h"
#include "sysinfo.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH_MAX 1000

struct backlog {
	const char *state_dir;
	int64_t events;
	int64_t batch;
	int64_t max_bytes;
	char boot_id[NBE_UUID_LEN + 1];
	uint64_t k; /* events made so far */
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* An event as a producer would record it: a name, a message, two details. */
static int make_event(struct backlog *bl, struct nbe_event *ev)
{
	struct nbe_error err = { { 0 } };
	char k[48];
	const char *pairs[] = { k, "source=bench_backlog", NULL };
	struct nbe_event_input in = {
		.name = "test.bench.drain",
		.message = "backlog event for the drain benchmark",
		.detail_pairs = pairs,
	};
	int r;

	snprintf(k, sizeof(k), "k=%" PRIu64, bl->k++);
	r = nbe_event_init_capture(ev, &in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(),
				   bl->boot_id, false, &err);
	if (r < 0)
		fprintf(stderr, "bench_backlog: %s\n", err.msg);
	return r;
}

static int64_t file_size(const char *dir, const char *name)
{
	char p[PATH_MAX + 64];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &st) == 0 ? (int64_t)st.st_size : 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_backlog -s STATE_DIR [-n EVENTS] [-b BATCH] [-m MAX_BYTES]\n"
		"  -s STATE_DIR  the agent's state directory (events.db is made there)\n"
		"  -n EVENTS     pending events to add (default 100000)\n"
		"  -b BATCH      events per transaction (default 100, at most %d)\n"
		"  -m MAX_BYTES  the buffer's byte cap while filling (default 8 GiB: no "
		"eviction);\n"
		"                give the agent a max_buffer_bytes that holds the result\n",
		BATCH_MAX);
}

static int parse_args(struct backlog *bl, int argc, char **argv)
{
	int opt;

	bl->events = 100000;
	bl->batch = 100;
	bl->max_bytes = 8LL * 1024 * 1024 * 1024;
	while ((opt = getopt(argc, argv, "s:n:b:m:h")) != -1) {
		switch (opt) {
		case 's':
			bl->state_dir = optarg;
			break;
		case 'n':
			if (nbe_parse_int64(optarg, 1, 100000000, &bl->events) < 0)
				goto bad;
			break;
		case 'b':
			if (nbe_parse_int64(optarg, 1, BATCH_MAX, &bl->batch) < 0)
				goto bad;
			break;
		case 'm':
			if (nbe_parse_int64(optarg, NBE_BUFFER_MIN_BYTES, INT64_MAX,
					    &bl->max_bytes) < 0)
				goto bad;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	if (optind != argc || !bl->state_dir) {
		usage(stderr);
		return -EINVAL;
	}
	return 0;
bad:
	fprintf(stderr, "bench_backlog: -%c %s: bad value\n", opt, optarg);
	return -EINVAL;
}

int main(int argc, char **argv)
{
	struct backlog bl = { 0 };
	struct nbe_event *evs = NULL;
	struct nbe_buffer *b = NULL;
	struct nbe_buffer_stats st;
	struct nbe_error err = { { 0 } };
	struct nbe_buffer_opts o;
	char path[PATH_MAX + 32];
	int64_t t0, busy = 0, done = 0;
	int r, ret = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	nbe_json_install_hooks();
	if (parse_args(&bl, argc, argv) < 0)
		return 2;
	if (mkdir(bl.state_dir, 0750) != 0 && errno != EEXIST) {
		fprintf(stderr, "bench_backlog: %s: %s\n", bl.state_dir, strerror(errno));
		return 1;
	}
	r = nbe_boot_id_read(NBE_BOOT_ID_FILE, bl.boot_id, sizeof(bl.boot_id));
	if (r < 0) {
		fprintf(stderr, "bench_backlog: %s: %s\n", NBE_BOOT_ID_FILE, strerror(-r));
		return 1;
	}
	evs = calloc((size_t)bl.batch, sizeof(*evs));
	if (!evs)
		return 1;
	snprintf(path, sizeof(path), "%s/%s", bl.state_dir, NBE_BUFFER_FILE);
	o = (struct nbe_buffer_opts){
		.path = path,
		.max_bytes = bl.max_bytes,
		.max_events = 100000000LL,
		.keep_sent = 1000,
		.busy_timeout_ms = 10000,
		.full_check = false,
		.boot_id_file = NBE_BOOT_ID_FILE,
	};
	r = nbe_buffer_open(&o, &b, NULL, &err);
	if (r < 0) {
		fprintf(stderr, "bench_backlog: %s\n", err.msg);
		goto out;
	}
	while (done < bl.events) {
		size_t n =
			bl.events - done < bl.batch ? (size_t)(bl.events - done) : (size_t)bl.batch;

		for (size_t i = 0; i < n; i++) {
			if (make_event(&bl, &evs[i]) < 0)
				goto out;
		}
		t0 = now_ns();
		r = n == 1 ? nbe_buffer_append(b, &evs[0], &err)
			   : nbe_buffer_append_batch(b, evs, n, &err);
		busy += now_ns() - t0;
		for (size_t i = 0; i < n; i++)
			nbe_event_clear(&evs[i]);
		if (r < 0) {
			fprintf(stderr, "bench_backlog: append: %s\n", err.msg);
			goto out;
		}
		done += (int64_t)n;
	}
	r = nbe_buffer_checkpoint(b, &err);
	if (r == 0)
		r = nbe_buffer_stats(b, &st, &err);
	if (r < 0) {
		fprintf(stderr, "bench_backlog: %s\n", err.msg);
		goto out;
	}
	/* one line, key=value, for the driver to parse */
	printf("backlog events=%" PRId64 " pending=%" PRId64 " dropped=%" PRId64
	       " append_s=%.2f rate=%.0f db_bytes=%" PRId64 " wal_bytes=%" PRId64 "\n",
	       done, st.pending, st.dropped, (double)busy / 1e9,
	       busy ? (double)done * 1e9 / (double)busy : 0.0,
	       file_size(bl.state_dir, NBE_BUFFER_FILE),
	       file_size(bl.state_dir, NBE_BUFFER_FILE "-wal"));
	ret = 0;
out:
	nbe_buffer_close(b);
	free(evs);
	return ret;
}
