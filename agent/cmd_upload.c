/*
 * flush and retry-dead: upload what is pending now (DESIGN §5, §7).
 */
#include "cli.h"

#include "alloc.h"
#include "clock.h"
#include "fsutil.h"
#include "parse.h"
#include "sysinfo.h"
#include "notify.h"
#include "upload_setup.h"
#include "version.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NBE_UPLOAD_LOCK "upload.lock"
#define COOKIE_JAR	"session.cookie"
#define LOOKUP_DELAY_MS 2000

struct flush_args {
	int64_t timeout_ms;
};

static int flush_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	struct flush_args *a = userdata;

	if (opt == 't' && nbe_parse_duration_ms(arg, &a->timeout_ms) < 0)
		return cli_usage_error(
			c, "--timeout '%s': expected seconds or a duration (90s, 5m)", arg);
	return 0;
}

struct progress {
	bool tty;
	int64_t total;
};

static void show_progress(void *userdata, int64_t sent, int64_t dead)
{
	const struct progress *p = userdata;
	int64_t done = sent + dead, width = 30, fill;

	if (!p->tty || p->total <= 0)
		return;
	fill = done >= p->total ? width : done * width / p->total;
	fprintf(stderr, "\r[%.*s%*s] %" PRId64 "/%" PRId64 " sent", (int)fill,
		"##############################", (int)(width - fill), "", done, p->total);
	(void)fflush(stderr); /* a progress bar: a lost update is redrawn by the next */
}

/* The exit code of DESIGN §7 for the last failure. */
static int exit_for(enum nbe_upload_fail f)
{
	switch (f) {
	case NBE_FAIL_NONE:
		return EX_OK;
	case NBE_FAIL_CONNECT:
	case NBE_FAIL_GATEWAY:
		return EX_UNAVAILABLE;
	case NBE_FAIL_AUTH:
		return EX_NOPERM;
	case NBE_FAIL_ENDPOINT:
	case NBE_FAIL_CONFIG:
		return EX_CONFIG;
	case NBE_FAIL_RETRYABLE:
		return EX_TEMPFAIL;
	}
	return EX_TEMPFAIL;
}

static bool permanent(enum nbe_upload_fail f)
{
	return f == NBE_FAIL_GATEWAY || f == NBE_FAIL_AUTH || f == NBE_FAIL_ENDPOINT ||
	       f == NBE_FAIL_CONFIG;
}

/* session_open(): the daemon holds the lock; ask it instead. */
#define FLUSH_VIA_DAEMON (-2)

static enum nbe_upload_fail meta_fail(struct nbe_buffer *buf, char *error, size_t size)
{
	char *v = NULL;
	enum nbe_upload_fail f;

	nbe_buffer_meta_get(buf, "last_fail", &v, NULL);
	f = upload_fail_parse(v);
	nbe_free(v);
	v = NULL;
	nbe_buffer_meta_get(buf, "last_error", &v, NULL);
	snprintf(error, size, "%s", v ? v : "");
	nbe_free(v);
	return f;
}

static void sleep_ms(int64_t ms);

/*
 * The daemon is the uploader: ask it to upload now (whatever its backoff)
 * and follow the buffer until nothing is pending, it reports a failure
 * that will not pass, or the timeout runs out.
 */
static int flush_via_daemon(struct cli *c, struct nbe_buffer *buf, int64_t deadline)
{
	struct progress prog = { .tty = isatty(STDERR_FILENO) == 1 };
	struct nbe_buffer_stats st;
	struct nbe_error err = { { 0 } };
	int64_t start = nbe_clock_monotonic_ms(), rounds0, total;
	enum nbe_upload_fail f = NBE_FAIL_NONE;
	char error[512] = "";
	int r;

	rounds0 = nbe_buffer_meta_get_int(buf, "rounds");
	r = nbe_notify_send(c->cfg.runtime_dir, NBE_NOTIFY_FLUSH);
	if (r < 0) {
		cli_err(c,
			"another uploader holds %s/%s and no daemon answers on %s/%s (%s); try "
			"again later",
			c->cfg.state_dir, NBE_UPLOAD_LOCK, c->cfg.runtime_dir, NBE_NOTIFY_SOCKET,
			strerror(-r));
		return EX_TEMPFAIL;
	}
	if (nbe_buffer_stats(buf, &st, &err) < 0) {
		cli_err(c, "%s", err.msg);
		return EX_IOERR;
	}
	total = prog.total = st.pending;
	for (;;) {
		r = nbe_buffer_stats(buf, &st, &err);
		if (r < 0) {
			cli_err(c, "%s", err.msg);
			return cli_exit_for_errno(r);
		}
		show_progress(&prog, total - st.pending, 0);
		if (st.pending == 0)
			break;
		if (nbe_buffer_meta_get_int(buf, "rounds") != rounds0) {
			f = meta_fail(buf, error, sizeof(error));
			if (permanent(f))
				break;
		}
		if (nbe_clock_monotonic_ms() >= deadline)
			break;
		sleep_ms(100);
	}
	if (prog.tty && total > 0)
		fputc('\n', stderr);
	printf("flush (by the daemon): %" PRId64 " sent, %" PRId64 " pending (%.1f s)\n",
	       total > st.pending ? total - st.pending : 0, st.pending,
	       (double)(nbe_clock_monotonic_ms() - start) / 1000.0);
	if (st.pending == 0)
		return EX_OK;
	if (f == NBE_FAIL_NONE)
		f = meta_fail(buf, error, sizeof(error));
	cli_err(c, "%" PRId64 " events still pending: %s", st.pending,
		error[0] ? error : "the timeout ran out");
	return exit_for(f != NBE_FAIL_NONE ? f : NBE_FAIL_RETRYABLE);
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (ms > 0 && nanosleep(&ts, &ts) != 0)
		;
}

/* Everything flush needs, made from the configuration. */
struct session {
	struct nbe_buffer *buf;
	struct nbe_nuvla *nuvla;
	struct nbe_uploader *up;
	int lock_fd;
	char *secret;
};

static void session_close(struct session *s)
{
	nbe_uploader_free(s->up);
	nbe_nuvla_free(s->nuvla);
	nbe_buffer_close(s->buf);
	nbe_free_secret_str(s->secret);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
}

static int session_open(struct cli *c, struct session *s)
{
	struct nbe_error err = { { 0 } };
	char boot_id[NBE_UUID_LEN + 1], *path;
	int r;

	s->lock_fd = -1;
	r = nbe_config_check_key(&c->cfg, &err);
	if (r == 0)
		r = nbe_config_read_secret(&c->cfg, &s->secret, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return r == -ENOMEM ? EX_OSERR : EX_CONFIG;
	}
	if (c->cfg.insecure)
		cli_warn(c, "insecure = true: the server's certificate is NOT verified; anyone "
			    "on the path can read and change what is sent");
	r = nbe_boot_id_read(c->cfg.boot_id_file, boot_id, sizeof(boot_id));
	if (r < 0) {
		cli_err(c, "%s: cannot read the boot id: %s", c->cfg.boot_id_file, strerror(-r));
		return EX_IOERR;
	}
	r = cli_open_buffer(c, true, &s->buf);
	if (r)
		return r;
	path = nbe_path_join(c->cfg.state_dir, NBE_UPLOAD_LOCK);
	if (!path)
		return EX_OSERR;
	r = nbe_lock_try(path, 0660, &s->lock_fd);
	nbe_free(path);
	if (r == -EWOULDBLOCK)
		return FLUSH_VIA_DAEMON;
	if (r < 0) {
		cli_err(c, "%s/%s: %s", c->cfg.state_dir, NBE_UPLOAD_LOCK, strerror(-r));
		return EX_IOERR;
	}
	r = upload_setup(&c->cfg, s->buf, s->secret, boot_id, &s->nuvla, &s->up, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return EX_OSERR;
	}
	return 0;
}

int cmd_flush(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "timeout", required_argument, NULL, 't' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct flush_args a = { .timeout_ms = 60 * 1000 };
	int r;

	r = cli_parse(c, argc, argv, opts, flush_opt, NULL, &a);
	if (r)
		return r;
	r = cli_load_config(c);
	if (r)
		return r;
	return cli_flush(c, a.timeout_ms);
}

int cli_flush(struct cli *c, int64_t timeout_ms)
{
	struct session s = { .lock_fd = -1 };
	struct nbe_upload_result res = { 0 }, last = { 0 };
	struct nbe_buffer_stats st;
	struct nbe_error err = { { 0 } };
	struct progress prog = { .tty = isatty(STDERR_FILENO) == 1 };
	int64_t start = nbe_clock_monotonic_ms(), deadline, sent = 0, dead = 0, next = 0;
	int r;

	deadline = start + timeout_ms;
	r = session_open(c, &s);
	if (r == FLUSH_VIA_DAEMON) {
		r = flush_via_daemon(c, s.buf, deadline);
		goto out;
	}
	if (r)
		goto out;
	if (nbe_buffer_stats(s.buf, &st, &err) == 0)
		prog.total = st.pending;

	/* at once, whatever backoff was scheduled; then retry within the timeout */
	for (;;) {
		int64_t wait, now;

		r = nbe_uploader_round(s.up, deadline, show_progress, &prog, &res, &err);
		if (r < 0) {
			cli_err(c, "%s", err.msg);
			/* flush reads no input: -EINVAL here is the agent's own fault
			 * (a request libcurl would not set up), not bad data */
			r = r == -EINVAL ? EX_SOFTWARE : cli_exit_for_errno(r);
			goto out;
		}
		sent += res.sent + res.found;
		dead += res.dead;
		if (res.fail != NBE_FAIL_NONE)
			last = res;
		r = nbe_buffer_stats(s.buf, &st, &err);
		if (r < 0) {
			cli_err(c, "%s", err.msg);
			r = cli_exit_for_errno(r);
			goto out;
		}
		if (st.pending == 0 || permanent(res.fail))
			break;
		now = nbe_clock_monotonic_ms();
		if (now >= deadline)
			break;
		wait = res.fail == NBE_FAIL_NONE ? 0 : nbe_uploader_backoff_ms(s.up, &res);
		next = nbe_clock_wall_ms() + wait;
		if (now + wait >= deadline) {
			/* the next try would come after the deadline */
			break;
		}
		sleep_ms(wait);
	}
	if (prog.tty && prog.total > 0)
		fputc('\n', stderr);
	if (st.pending == 0)
		upload_save_state(s.buf, "idle", NBE_FAIL_NONE, NULL, 0);
	else
		upload_save_state(s.buf, nbe_upload_state_for(last.fail), last.fail, last.error,
				  next);
	printf("flush: %" PRId64 " sent, %" PRId64 " dead-lettered, %" PRId64 " pending (%.1f s)\n",
	       sent, dead, st.pending, (double)(nbe_clock_monotonic_ms() - start) / 1000.0);
	if (st.pending == 0) {
		r = EX_OK;
	} else {
		enum nbe_upload_fail f =
			last.fail != NBE_FAIL_NONE ? last.fail : NBE_FAIL_RETRYABLE;
		cli_err(c, "%" PRId64 " events still pending: %s", st.pending,
			last.fail != NBE_FAIL_NONE ? last.error : "the timeout ran out");
		r = exit_for(f);
	}
out:
	session_close(&s);
	return r;
}
