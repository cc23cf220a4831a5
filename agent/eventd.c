/*
 * nuvlabox-eventd: uploads buffered events the moment connectivity allows
 * and sleeps otherwise (DESIGN §1). One thread, one poll loop: the notify
 * socket (producers poke it), a signalfd (TERM/INT stop, HUP reloads), a
 * timerfd for the backoff, netlink (the network came back: cut the backoff
 * short), and the systemd watchdog. With nothing to do it blocks in poll().
 */
#include "config.h"
#include "event.h"
#include "detect.h"
#include "jobpull.h"
#include "keywatch.h"
#include "newatch.h"
#include "buffer.h"
#include "clock.h"
#include "fsutil.h"
#include "json.h"
#include "log.h"
#include "netwatch.h"
#include "notify.h"
#include "random.h"
#include "sdnotify.h"
#include "sysinfo.h"
#include "upload_setup.h"
#include "alloc.h"
#include "version.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

/* A round uploads for at most this long before the loop looks at its fds. */
#define ROUND_SLICE_MS 5000
/* After the network comes back, retry within this (spread devices out). */
#define NET_UP_JITTER_MS 3000
/* How often to retry the upload lock while another uploader holds it. */
#define LOCK_RETRY_MS 1000
/* setup(): a stop signal came while it waited: exit 0. */
#define SETUP_STOPPED (-1)
/* Auth failures back off up to an hour (DESIGN §5). */
#define AUTH_BACKOFF_CAP_MS (3600 * 1000)

enum {
	FD_SIGNAL,
	FD_TIMER,
	FD_NOTIFY,
	FD_NET,
	FD_WATCHDOG,
	FD_KEYS,
	FD_KEYTIMER,
	FD_NUVLAEDGE,
	FD_STATECHECK,
	FD_JOBTIMER,
	FD_JOBCHILD,
	FD_COUNT
};

/* authorized_keys settle this long after a change before they are read */
#define KEYS_SETTLE_MS 200

struct daemon {
	const char *config_path;
	bool config_explicit;
	struct nbe_config cfg;
	char boot_id[NBE_UUID_LEN + 1];
	char *secret;
	struct nbe_buffer *buf;
	struct nbe_nuvla *nuvla;
	struct nbe_uploader *up;
	int lock_fd;
	struct pollfd fds[FD_COUNT];
	char *notify_path;
	const char *sd_socket;
	uint64_t watchdog_usec;

	bool stop;
	bool work;	      /* pending events may be waiting */
	int64_t next_attempt; /* monotonic ms; 0 = now */
	enum nbe_upload_fail fail;
	char last_error[512];
	int64_t sent_total;
	int64_t rounds;
	struct keywatch *keys;
	struct newatch *nuvlaedge;
	bool decommissioned; /* refused after a decommission: retry only when asked */
	int64_t auth_failures;
	bool fail_network; /* the last failure had no HTTP answer */
	bool fail_buffer;  /* the last round failed on the buffer itself (disk) */
	struct jobpull *jobs;
	int wake_fds[2];
	bool net_joined; /* listening to rtnetlink (FD_NET) */
	bool net_failed; /* joining failed once: said so */
};

static const char *env_get(const char *name)
{
	return getenv(name);
}

static void sd(struct daemon *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sd(struct daemon *d, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	if (!d->sd_socket)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* one assignment per message: a server's text must not add others */
	for (char *p = msg; *p; p++) {
		if ((unsigned char)*p < 0x20)
			*p = ' ';
	}
	nbe_sd_notify(d->sd_socket, msg);
}

static int load_config(struct daemon *d, struct nbe_config *cfg, struct nbe_error *err)
{
	const struct nbe_config_source src = { .path = d->config_path,
					       .required = d->config_explicit,
					       .getenv_fn = env_get,
					       .identity = true };

	return nbe_config_load(cfg, &src, err);
}

static void arm_timer(struct daemon *d, int64_t delay_ms)
{
	struct itimerspec its = { 0 };

	if (delay_ms < 1)
		delay_ms = 1;
	its.it_value.tv_sec = (time_t)(delay_ms / 1000);
	its.it_value.tv_nsec = (long)(delay_ms % 1000) * 1000000L;
	timerfd_settime(d->fds[FD_TIMER].fd, 0, &its, NULL);
}

static void disarm_timer(struct daemon *d)
{
	struct itimerspec its = { 0 };

	timerfd_settime(d->fds[FD_TIMER].fd, 0, &its, NULL);
}

/* (Re)makes the client and uploader from the current configuration. */
static int setup_uploader(struct daemon *d)
{
	struct nbe_error err = { { 0 } };
	int r;

	nbe_uploader_free(d->up);
	nbe_nuvla_free(d->nuvla);
	d->up = NULL;
	d->nuvla = NULL;
	nbe_free_secret_str(d->secret);
	d->secret = NULL;
	r = nbe_config_check_key(&d->cfg, &err);
	if (r == 0)
		r = nbe_config_read_secret(&d->cfg, &d->secret, &err);
	if (r < 0) {
		log_error("%s", err.msg);
		return r;
	}
	r = upload_setup(&d->cfg, d->buf, d->secret, d->boot_id, &d->nuvla, &d->up, &err);
	if (r < 0) {
		log_error("%s", err.msg);
		return r;
	}
	return 0;
}

static bool interrupt_check(void *userdata);
static bool stop_pending(void);

static void install_interrupt(struct daemon *d)
{
	const int wake[] = { d->fds[FD_SIGNAL].fd, d->fds[FD_WATCHDOG].fd };

	nbe_nuvla_set_interrupt(d->nuvla, wake, d->fds[FD_WATCHDOG].fd >= 0 ? 2 : 1,
				interrupt_check, d);
}

/* Feeds the watchdog if its timer expired. */
static void watchdog_tick(struct daemon *d)
{
	uint64_t n;

	if (d->fds[FD_WATCHDOG].fd < 0)
		return;
	if (read(d->fds[FD_WATCHDOG].fd, &n, sizeof(n)) == (ssize_t)sizeof(n))
		sd(d, "WATCHDOG=1");
}

/* Called by the client while requests are in flight: keep the watchdog fed
 * and stop at once when a signal arrived. */
static bool interrupt_check(void *userdata)
{
	watchdog_tick(userdata);
	/* only a stop request interrupts: a reload waits for the round's end
	 * (abandoning a window costs lookups, and a refused reload keeps going) */
	return stop_pending();
}

static void save_state(struct daemon *d, const char *state, int64_t next_wall_ms)
{
	upload_save_state(d->buf, state, d->fail, d->last_error, next_wall_ms);
}

/* Counts finished rounds, so `flush` knows its request was acted on. */
static void count_round(struct daemon *d)
{
	char num[32];

	detect_boot_alive(d->buf, false);
	d->rounds++;
	snprintf(num, sizeof(num), "%" PRId64, d->rounds);
	nbe_buffer_meta_set_lazy(d->buf, "rounds", num, NULL);
}

static void check_decommission(struct daemon *d, const struct nbe_upload_result *res);

/* One round of uploading, and what follows from its outcome. */
static void do_round(struct daemon *d)
{
	struct nbe_upload_result res;
	struct nbe_buffer_stats st;
	struct nbe_error err = { { 0 } };
	int64_t now = nbe_clock_monotonic_ms(), wait;
	int r;

	{
		/* a producer may have quarantined a corrupt buffer under us */
		bool reopened = false;
		if (nbe_buffer_follow(d->buf, &reopened, &err) < 0)
			log_error("the buffer: %s", err.msg);
		else if (reopened)
			log_warning("the buffer was replaced (quarantined by another process): "
				    "continuing with the new one");
	}
	if (!d->up) {
		/* not configured: say so to a waiting flush */
		d->work = false;
		d->fail = NBE_FAIL_CONFIG;
		snprintf(d->last_error, sizeof(d->last_error),
			 "the configuration is incomplete or wrong (see the daemon's log)");
		save_state(d, "offline", 0);
		count_round(d);
		return;
	}
	sd(d, "STATUS=uploading");
	save_state(d, "uploading", 0);
	r = nbe_uploader_round(d->up, now + ROUND_SLICE_MS, NULL, NULL, &res, &err);
	if (r == -EBADMSG) {
		/* our own queries met corruption: quarantine and salvage, as a
		 * producer would, and go on with the fresh buffer */
		struct nbe_error qerr = { { 0 } };
		log_error("the buffer is corrupt (%s): quarantining it", err.msg);
		if (nbe_buffer_quarantine(d->buf, err.msg, &qerr) < 0)
			log_error("quarantine: %s", qerr.msg);
	}
	if (r < 0) {
		/* the buffer itself failed (disk full, I/O): keep running, retry */
		log_error("uploading: %s", err.msg);
		d->fail_buffer = true;
		snprintf(d->last_error, sizeof(d->last_error), "%s", err.msg);
		save_state(d, "backoff", nbe_clock_wall_ms() + d->cfg.retry_cap_ms);
		count_round(d);
		d->next_attempt = nbe_clock_monotonic_ms() + d->cfg.retry_cap_ms;
		arm_timer(d, d->cfg.retry_cap_ms);
		return;
	}
	d->fail_buffer = false;
	if (res.interrupted)
		return; /* a signal: the loop handles it */
	check_decommission(d, &res);
	d->sent_total += res.sent + res.found;
	if (res.sent + res.found + res.dead > 0)
		log_debug("sent %" PRId64 ", found %" PRId64 ", dead-lettered %" PRId64, res.sent,
			  res.found, res.dead);
	if (res.dead > 0)
		log_warning("%" PRId64
			    " event%s dead-lettered (see: nuvlabox-event list --state dead)",
			    res.dead, res.dead == 1 ? "" : "s");

	if (res.fail == NBE_FAIL_NONE) {
		if (d->fail != NBE_FAIL_NONE)
			log_notice("uploading again after: %s", d->last_error);
		d->fail = NBE_FAIL_NONE;
		if (nbe_buffer_stats(d->buf, &st, &err) == 0 && st.pending > 0) {
			d->work = true; /* more arrived, the slice ran out, or lookups wait */
			d->next_attempt = 0;
			if (res.not_before_ms > 0) {
				d->next_attempt = nbe_clock_monotonic_ms() + res.not_before_ms;
				arm_timer(d, res.not_before_ms);
			}
			save_state(d, "uploading", 0);
			count_round(d);
			return;
		}
		d->work = false;
		d->next_attempt = 0;
		disarm_timer(d);
		if (d->fds[FD_STATECHECK].fd >= 0) {
			/* ask the server for the nuvlabox's state now and then */
			struct itimerspec its = { 0 };
			its.it_value.tv_sec = (time_t)(d->cfg.state_check_interval_ms / 1000);
			its.it_value.tv_nsec =
				(long)(d->cfg.state_check_interval_ms % 1000) * 1000000L;
			timerfd_settime(d->fds[FD_STATECHECK].fd, 0, &its, NULL);
		}
		nbe_buffer_checkpoint(d->buf, NULL); /* the WAL cannot grow without bound */
		nbe_alloc_trim(); /* idle: the heap of a drain goes back to the kernel */
		save_state(d, "idle", 0);
		count_round(d);
		sd(d, "STATUS=idle, %" PRId64 " events sent since start", d->sent_total);
		return;
	}

	/* one log line per failure episode, not per retry */
	if (res.fail != d->fail || strcmp(res.error, d->last_error) != 0)
		log_warning("%s: %s (events stay buffered)", nbe_upload_state_for(res.fail),
			    res.error);
	else
		log_debug("still %s: %s", nbe_upload_state_for(res.fail), res.error);
	d->fail = res.fail;
	d->fail_network = res.network;
	snprintf(d->last_error, sizeof(d->last_error), "%s", res.error);
	d->auth_failures = res.fail == NBE_FAIL_AUTH || res.fail == NBE_FAIL_GATEWAY
				   ? d->auth_failures + 1
				   : 0;
	wait = nbe_uploader_backoff_ms(d->up, &res);
	if (res.fail == NBE_FAIL_AUTH || res.fail == NBE_FAIL_GATEWAY ||
	    res.fail == NBE_FAIL_ENDPOINT || res.fail == NBE_FAIL_CONFIG) {
		/* nothing will change soon on its own: back off longer, up to an
		 * hour, jittered so a fleet does not retry in step */
		int64_t floor = d->cfg.retry_cap_ms, ceiling = floor;
		for (int64_t i = 1; i < d->auth_failures && ceiling < AUTH_BACKOFF_CAP_MS; i++)
			ceiling *= 2;
		if (ceiling > AUTH_BACKOFF_CAP_MS)
			ceiling = AUTH_BACKOFF_CAP_MS;
		if (floor > ceiling)
			floor = ceiling;
		wait = floor + (int64_t)nbe_random_below((uint64_t)(ceiling - floor) + 1);
	}
	if (d->decommissioned) {
		/* the credential is gone for good: keep the events, stop trying
		 * until asked (flush, reload) */
		d->work = false;
		disarm_timer(d);
		snprintf(d->last_error, sizeof(d->last_error),
			 "decommissioned: Nuvla no longer accepts this device's credential; events "
			 "stay buffered and are not sent");
		save_state(d, "auth-failed", 0);
		count_round(d);
		sd(d, "STATUS=decommissioned; not uploading");
		return;
	}
	if (nbe_buffer_stats(d->buf, &st, &err) == 0 && st.pending == 0) {
		/* only a state check failed: nothing waits to be sent, so no
		 * retries (the next check or a new event tries again) */
		d->work = false;
		disarm_timer(d);
		save_state(d, nbe_upload_state_for(res.fail), 0);
		count_round(d);
		return;
	}
	d->work = true;
	d->next_attempt = nbe_clock_monotonic_ms() + wait;
	arm_timer(d, wait);
	save_state(d, nbe_upload_state_for(res.fail), nbe_clock_wall_ms() + wait);
	count_round(d);
	sd(d, "STATUS=%s, next attempt in %" PRId64 " s: %s", nbe_upload_state_for(res.fail),
	   (wait + 999) / 1000, res.error);
}

static char *meta_str(struct daemon *d, const char *key)
{
	char *v = NULL;

	nbe_buffer_meta_get(d->buf, key, &v, NULL);
	return v;
}

/* Records nuvlabox.decommission once, with why we think so. */
static void record_decommission(struct daemon *d, const char *state, const char *reason)
{
	struct nbe_event_input in = { .name = "nuvlabox.decommission", .severity = "high" };
	struct nbe_event ev = { 0 };
	struct nbe_error err = { { 0 } };
	cJSON *det = cJSON_CreateObject();
	char *details = NULL;
	int r;

	if (!det || (state && !cJSON_AddStringToObject(det, "server-state", state)) ||
	    !cJSON_AddStringToObject(det, "reason", reason) ||
	    !(details = cJSON_PrintUnformatted(det))) {
		cJSON_Delete(det);
		log_error("decommission: out of memory");
		return;
	}
	cJSON_Delete(det);
	in.details_json = details;
	r = nbe_event_init_capture(&ev, &in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(),
				   d->boot_id, nbe_clock_synced(d->cfg.timesync_file), &err);
	if (r == 0)
		r = nbe_buffer_append_with_meta(d->buf, &ev, "decommission", reason, &err);
	nbe_event_clear(&ev);
	nbe_free(details);
	if (r < 0) {
		log_error("recording the decommission: %s", err.msg);
		return;
	}
	log_warning("the device is being decommissioned (%s): recorded; uploading all that is "
		    "buffered while the credential may still work",
		    reason);
	d->work = true;
	d->next_attempt = 0;
}

/*
 * After a round: what the server says of the nuvlabox, and what a refused
 * login means for a commissioned device (DESIGN §6.2 decommission).
 */
static void check_decommission(struct daemon *d, const struct nbe_upload_result *res)
{
	const char *state = d->up ? nbe_uploader_nuvlabox_state(d->up) : NULL;
	char *known = meta_str(d, "nuvlabox_state"), *done = meta_str(d, "decommission");

	if (state && (!known || strcmp(known, state) != 0)) {
		nbe_buffer_meta_set_lazy(d->buf, "nuvlabox_state", state, NULL);
		log_info("the nuvlabox is %s", state);
	}
	if (!done && state &&
	    (strcmp(state, "DECOMMISSIONING") == 0 || strcmp(state, "DECOMMISSIONED") == 0)) {
		char reason[64];
		snprintf(reason, sizeof(reason), "the server reports %s", state);
		record_decommission(d, state, reason);
	} else if (!done && res->fail == NBE_FAIL_AUTH && res->login_refused && known &&
		   (strcmp(known, "COMMISSIONED") == 0 || strcmp(known, "DECOMMISSIONING") == 0)) {
		record_decommission(d, known,
				    "Nuvla refused the credential of a commissioned device");
	}
	nbe_free(done);
	done = meta_str(d, "decommission");
	d->decommissioned = done && res->fail == NBE_FAIL_AUTH && res->login_refused;
	nbe_free(done);
	nbe_free(known);
}

/* Whether @uid is a member of the daemon's group by a supplementary group. */
static bool in_our_group(uid_t uid)
{
	struct passwd *pw = getpwuid(uid); // cppcheck-suppress getpwuidCalled ; single-threaded
	gid_t groups[64];
	int n = 64;

	if (!pw || getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0)
		return false;
	for (int i = 0; i < n; i++) {
		if (groups[i] == getegid())
			return true;
	}
	return false;
}

/* CMSG_NXTHDR() of musl converts a negative long to size_t (-Wsign-conversion) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-conversion"
static struct cmsghdr *next_cmsg(struct msghdr *mh, struct cmsghdr *cm)
{
	return CMSG_NXTHDR(mh, cm);
}
#pragma GCC diagnostic pop

/* Reads the notify socket: who may poke us, and what they want. */
static void read_notify(struct daemon *d)
{
	for (;;) {
		char data[64], cbuf[CMSG_SPACE(sizeof(struct ucred))];
		struct iovec iov = { data, sizeof(data) - 1 };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *cm;
		struct ucred *cred = NULL;
		ssize_t n = recvmsg(d->fds[FD_NOTIFY].fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

		if (n < 0)
			return; /* EAGAIN: drained */
		data[n] = '\0';
		for (cm = CMSG_FIRSTHDR(&mh); cm; cm = next_cmsg(&mh, cm)) {
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS)
				cred = (struct ucred *)CMSG_DATA(cm);
		}
		/* only root, our own user, or members of our group may poke us */
		if (!cred || (cred->uid != 0 && cred->uid != geteuid() && cred->gid != getegid() &&
			      !in_our_group(cred->uid))) {
			log_debug("ignoring a message from uid %ld", cred ? (long)cred->uid : -1L);
			continue;
		}
		if (strcmp(data, NBE_NOTIFY_FLUSH) == 0) {
			log_info("flush requested by pid %ld", (long)cred->pid);
			d->work = true;
			d->next_attempt = 0; /* now, whatever the backoff */
			d->decommissioned = false;
		} else if (strcmp(data, NBE_NOTIFY_POKE) == 0) {
			d->work = true; /* a backoff in progress stays in force */
			/* except one after the buffer itself failed (disk full, I/O):
			 * a producer just wrote to it, so the disk may be back */
			if (d->fail_buffer)
				d->next_attempt = 0;
		}
	}
}

static void scan_nuvlaedge(struct daemon *d)
{
	struct nbe_error err = { { 0 } };
	int n = 0, r;

	if (!d->nuvlaedge)
		return;
	r = newatch_scan(d->nuvlaedge, &n, &err);
	if (r < 0 && err.msg[0])
		log_warning("NuvlaEdge state: %s", err.msg);
	if (n > 0) {
		log_info("NuvlaEdge state: %d change%s recorded", n, n == 1 ? "" : "s");
		d->work = true;
	}
}

static void scan_watched(struct daemon *d)
{
	struct nbe_error err = { { 0 } };
	int n = 0, r;

	scan_nuvlaedge(d);
	if (!d->keys)
		return;
	r = keywatch_scan(d->keys, &n, &err);
	if (r < 0 && err.msg[0])
		log_warning("ssh keys: %s", err.msg);
	if (n > 0) {
		log_info("ssh keys: %d change%s recorded", n, n == 1 ? "" : "s");
		d->work = true;
	}
}

static void read_net(struct daemon *d)
{
	int r = nbe_netwatch_read(d->fds[FD_NET].fd);
	int64_t now = nbe_clock_monotonic_ms(), soon;

	if (r <= 0 || !d->work || d->next_attempt <= now)
		return;
	/* only failures no server answered: a server's Retry-After or 5xx
	 * backoff is not about our network */
	if (!d->fail_network)
		return;
	/* the network may be back: retry soon, not at the end of a long backoff */
	soon = now + (int64_t)nbe_random_below(NET_UP_JITTER_MS);
	if (soon < d->next_attempt) {
		log_info("the network changed: retrying in %" PRId64 " ms", soon - now);
		d->next_attempt = soon;
		arm_timer(d, soon - now);
	}
}

/*
 * Listens to rtnetlink only during a round (a change in the middle of a
 * failing one is not missed) and during a backoff after a failure no server
 * answered: that is all read_net() acts on, and an idle daemon must not be
 * woken by a host's interface churn (containers, VPNs, Wi-Fi).
 */
static void watch_net(struct daemon *d, bool on)
{
	int r;

	if (d->fds[FD_NET].fd < 0 || d->net_joined == on)
		return;
	r = nbe_netwatch_listen(d->fds[FD_NET].fd, on);
	if (r < 0) {
		if (!d->net_failed)
			log_warning("netlink: %s; network changes will not cut backoffs short",
				    strerror(-r));
		d->net_failed = true;
		return;
	}
	d->net_joined = on;
}

/* Names the keys whose values differ, for the reload log line. */
static void describe_changes(const struct nbe_config *a, const struct nbe_config *b, char *out,
			     size_t size)
{
#define STR_DIFF(f) ((a->f == NULL) != (b->f == NULL) || (a->f && strcmp(a->f, b->f) != 0))
	struct {
		const char *name;
		bool changed;
	} keys[] = {
		{ "endpoint", STR_DIFF(endpoint) },
		{ "nuvlabox_id", STR_DIFF(nuvlabox_id) },
		{ "insecure", a->insecure != b->insecure },
		{ "ca_file", STR_DIFF(ca_file) },
		{ "client_cert", STR_DIFF(client_cert) },
		{ "client_key", STR_DIFF(client_key) },
		{ "api_key", STR_DIFF(api_key) },
		{ "api_secret_file", STR_DIFF(api_secret_file) },
		{ "state_dir", STR_DIFF(state_dir) },
		{ "max_buffer_bytes", a->max_buffer_bytes != b->max_buffer_bytes },
		{ "max_events", a->max_events != b->max_events },
		{ "keep_sent", a->keep_sent != b->keep_sent },
		{ "retry_base", a->retry_base_ms != b->retry_base_ms },
		{ "retry_cap", a->retry_cap_ms != b->retry_cap_ms },
		{ "request_timeout", a->request_timeout_ms != b->request_timeout_ms },
		{ "connect_timeout", a->connect_timeout_ms != b->connect_timeout_ms },
		{ "max_in_flight", a->max_in_flight != b->max_in_flight },
		{ "log_level", a->log_level != b->log_level },
		{ "runtime_dir", STR_DIFF(runtime_dir) },
		{ "job_pull", a->job_pull != b->job_pull },
		{ "heartbeat_interval", a->heartbeat_interval_ms != b->heartbeat_interval_ms },
		{ "reboot_command", STR_DIFF(reboot_command) },
	};
#undef STR_DIFF
	size_t off = 0;

	out[0] = '\0';
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (keys[i].changed && off < size)
			off += (size_t)snprintf(out + off, size - off, "%s%s", off ? ", " : "",
						keys[i].name);
	}
}

static void reload(struct daemon *d)
{
	struct nbe_config fresh;
	struct nbe_error err = { { 0 } };
	char changed[512];

	sd(d, "RELOADING=1");
	if (load_config(d, &fresh, &err) < 0) {
		log_error("reload refused, the running configuration stays: %s", err.msg);
		sd(d, "READY=1");
		return;
	}
	describe_changes(&d->cfg, &fresh, changed, sizeof(changed));
	if (strcmp(fresh.state_dir, d->cfg.state_dir) != 0 ||
	    strcmp(fresh.runtime_dir, d->cfg.runtime_dir) != 0) {
		log_warning("reload: state_dir and runtime_dir take effect at the next start; "
			    "keeping %s and %s",
			    d->cfg.state_dir, d->cfg.runtime_dir);
		nbe_free(fresh.state_dir);
		fresh.state_dir = nbe_strdup(d->cfg.state_dir);
		nbe_free(fresh.runtime_dir);
		fresh.runtime_dir = nbe_strdup(d->cfg.runtime_dir);
	}
	nbe_config_free(&d->cfg);
	d->cfg = fresh;
	log_set_level(d->cfg.log_level);
	log_notice("reloaded %s: %s", d->config_path, changed[0] ? changed : "nothing changed");
	if (d->cfg.insecure)
		log_warning("insecure = true: the server's certificate is NOT verified");
	if (setup_uploader(d) == 0)
		install_interrupt(d);
	if (d->jobs)
		jobpull_reload(d->jobs);
	/* a new configuration deserves a try now */
	d->work = true;
	d->next_attempt = 0;
	d->fail = NBE_FAIL_NONE;
	sd(d, "READY=1");
}

static void read_signals(struct daemon *d)
{
	struct signalfd_siginfo si;

	while (read(d->fds[FD_SIGNAL].fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGHUP) {
			reload(d);
		} else {
			log_info("stopping on signal %u", si.ssi_signo);
			d->stop = true;
		}
	}
}

static int open_notify_socket(struct daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, one = 1, r, n;

	r = nbe_mkdir_exist_ok(d->cfg.runtime_dir, 0750);
	if (r < 0) {
		log_error("runtime directory %s: %s", d->cfg.runtime_dir, strerror(-r));
		return r;
	}
	n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", d->cfg.runtime_dir,
		     NBE_NOTIFY_SOCKET);
	if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
		log_error("runtime directory %s: path too long for a socket", d->cfg.runtime_dir);
		return -ENAMETOOLONG;
	}
	d->notify_path = nbe_strdup(sa.sun_path);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	unlink(sa.sun_path); /* a stale one from a previous run; we hold the lock */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0) {
		r = -errno;
		log_error("%s: %s", sa.sun_path, strerror(-r));
		close(fd);
		return r;
	}
	/* producers of the group may poke; SCM_CREDENTIALS says who did */
	chmod(sa.sun_path, 0660);
	d->fds[FD_NOTIFY].fd = fd;
	return 0;
}

/* Whether SIGTERM or SIGINT is waiting (they are blocked: the signal fd
 * reads them). */
static bool stop_pending(void)
{
	sigset_t pending;

	if (sigpending(&pending) != 0)
		return false;
	return sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1;
}

static int take_lock(struct daemon *d)
{
	char *path = nbe_path_join(d->cfg.state_dir, NBE_UPLOAD_LOCK);
	const struct timespec retry = { LOCK_RETRY_MS / 1000, LOCK_RETRY_MS % 1000 * 1000000L };
	bool said = false;
	int r;

	if (!path)
		return -ENOMEM;
	for (;;) {
		r = nbe_lock_try(path, 0660, &d->lock_fd);
		if (r != -EWOULDBLOCK)
			break;
		if (!said)
			log_notice("%s is held by another uploader (a flush?); waiting", path);
		said = true;
		nanosleep(&retry, NULL); /* not usleep(): POSIX caps it below 1 s */
		if (stop_pending()) {
			/* the signal fd is not read yet: a stop must not wait for a
			 * flush that may run for minutes */
			d->stop = true;
			r = -EINTR;
			break;
		}
	}
	if (r == -EINTR)
		log_info("stopping on a signal while waiting for %s", path);
	else if (r < 0)
		log_error("%s: %s", path, strerror(-r));
	nbe_free(path);
	return r;
}

/* Job pulling (off unless job_pull): its timer and its running job. */
static void setup_jobs(struct daemon *d)
{
	struct jobpull_opts o = { 0 };
	struct nbe_error err = { { 0 } };

	d->wake_fds[0] = d->fds[FD_SIGNAL].fd;
	d->wake_fds[1] = d->fds[FD_WATCHDOG].fd;
	o.cfg = &d->cfg;
	o.config_path = d->config_path;
	o.secret = &d->secret;
	o.buf = d->buf;
	o.wake_fds = d->wake_fds;
	o.n_wake = d->fds[FD_WATCHDOG].fd >= 0 ? 2 : 1;
	o.interrupt = interrupt_check;
	o.interrupt_userdata = d;
	if (jobpull_new(&o, &d->jobs, &err) < 0) {
		log_error("jobs: %s", err.msg);
		return;
	}
	d->fds[FD_JOBTIMER].fd = jobpull_timer_fd(d->jobs);
}

static int setup(struct daemon *d)
{
	struct nbe_buffer_open_info info = { 0 };
	struct nbe_buffer_opts bo = { 0 };
	struct nbe_error err = { { 0 } };
	sigset_t mask;
	char *path;
	int r;

	for (int i = 0; i < FD_COUNT; i++) {
		d->fds[i].fd = -1;
		d->fds[i].events = POLLIN;
	}
	d->lock_fd = -1;
	r = nbe_boot_id_read(d->cfg.boot_id_file, d->boot_id, sizeof(d->boot_id));
	if (r < 0) {
		log_error("%s: cannot read the boot id: %s", d->cfg.boot_id_file, strerror(-r));
		return EX_OSFILE;
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
		log_error("signals: %s", strerror(errno));
		return EX_OSERR;
	}
	d->fds[FD_SIGNAL].fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	d->fds[FD_STATECHECK].fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	d->fds[FD_TIMER].fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (d->fds[FD_SIGNAL].fd < 0 || d->fds[FD_TIMER].fd < 0) {
		log_error("signalfd/timerfd: %s", strerror(errno));
		return EX_OSERR;
	}
	r = nbe_netwatch_open();
	if (r < 0)
		log_warning("netlink: %s; network changes will not cut backoffs short",
			    strerror(-r));
	else
		d->fds[FD_NET].fd = r;
	d->sd_socket = getenv("NOTIFY_SOCKET");
	d->watchdog_usec = nbe_sd_watchdog_usec(getenv("WATCHDOG_USEC"), getenv("WATCHDOG_PID"),
						(long)getpid());
	if (d->watchdog_usec > 0) {
		struct itimerspec its = { 0 };
		uint64_t half = d->watchdog_usec / 2;
		d->fds[FD_WATCHDOG].fd =
			timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
		its.it_value.tv_sec = its.it_interval.tv_sec = (time_t)(half / 1000000);
		its.it_value.tv_nsec = its.it_interval.tv_nsec = (long)(half % 1000000) * 1000;
		if (d->fds[FD_WATCHDOG].fd >= 0)
			timerfd_settime(d->fds[FD_WATCHDOG].fd, 0, &its, NULL);
	}

	r = nbe_mkdir_exist_ok(d->cfg.state_dir, 0750);
	if (r < 0) {
		log_error("state directory %s: %s", d->cfg.state_dir, strerror(-r));
		return EX_IOERR;
	}
	r = take_lock(d);
	if (r == -EINTR)
		return SETUP_STOPPED;
	if (r < 0)
		return EX_IOERR;
	path = nbe_path_join(d->cfg.state_dir, NBE_BUFFER_FILE);
	if (!path)
		return EX_OSERR;
	bo.path = path;
	bo.max_bytes = d->cfg.max_buffer_bytes;
	bo.max_events = d->cfg.max_events;
	bo.keep_sent = d->cfg.keep_sent;
	bo.busy_timeout_ms = d->cfg.busy_timeout_ms;
	bo.full_check = true;
	bo.boot_id_file = d->cfg.boot_id_file;
	bo.timesync_file = d->cfg.timesync_file;
	r = nbe_buffer_open(&bo, &d->buf, &info, &err);
	nbe_free(path);
	if (r < 0) {
		log_error("%s", err.msg);
		return EX_IOERR;
	}
	if (info.reset)
		log_warning("the buffer was corrupt (%s): moved to %s, %" PRId64 " events salvaged",
			    info.reason, info.quarantined, info.salvaged);
	{
		char name[64];
		r = detect_boot(d->buf, d->boot_id, d->cfg.timesync_file, name, &err);
		if (r < 0)
			log_error("boot detection: %s", err.msg);
		else if (name[0])
			log_notice("this is a new boot: recorded %s", name);
		detect_boot_alive(d->buf, false);
	}
	r = newatch_new(d->buf, d->cfg.nuvlaedge_dir, d->boot_id, d->cfg.timesync_file,
			&d->nuvlaedge, &err);
	if (r < 0)
		log_warning("NuvlaEdge's state is not watched: %s", err.msg);
	else
		d->fds[FD_NUVLAEDGE].fd = newatch_fd(d->nuvlaedge);
	if (d->fds[FD_KEYTIMER].fd < 0)
		d->fds[FD_KEYTIMER].fd =
			timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (d->cfg.authorized_keys[0]) {
		r = keywatch_new(d->buf, d->cfg.authorized_keys, d->boot_id, d->cfg.timesync_file,
				 &d->keys, &err);
		if (r < 0) {
			log_warning("ssh keys are not watched: %s", err.msg);
		} else {
			d->fds[FD_KEYS].fd = keywatch_fd(d->keys);
		}
	}
	scan_watched(d); /* changes made while the daemon was not running (both watchers) */
	/* last: producers and flush find the socket once the daemon is ready */
	r = open_notify_socket(d);
	if (r < 0)
		return EX_IOERR;
	if (setup_uploader(d) == 0)
		install_interrupt(d);
	setup_jobs(d);
	return 0;
}

static void teardown(struct daemon *d)
{
	jobpull_free(d->jobs);
	d->fds[FD_JOBTIMER].fd = d->fds[FD_JOBCHILD].fd = -1; /* closed by jobpull_free() */
	keywatch_free(d->keys);
	d->fds[FD_KEYS].fd = -1; /* closed by keywatch_free() */
	newatch_free(d->nuvlaedge);
	d->fds[FD_NUVLAEDGE].fd = -1;
	nbe_uploader_free(d->up);
	nbe_nuvla_free(d->nuvla);
	if (d->buf)
		nbe_buffer_close(d->buf);
	if (d->notify_path) {
		unlink(d->notify_path);
		nbe_free(d->notify_path);
	}
	for (int i = 0; i < FD_COUNT; i++) {
		if (d->fds[i].fd >= 0)
			close(d->fds[i].fd);
	}
	nbe_free_secret_str(d->secret);
	if (d->lock_fd >= 0)
		close(d->lock_fd);
	nbe_config_free(&d->cfg);
}

static void loop(struct daemon *d)
{
	while (!d->stop) {
		int64_t now = nbe_clock_monotonic_ms();
		int n;

		if (d->work && d->next_attempt <= now) {
			watch_net(d, true);
			do_round(d);
			/* look at the fds without waiting before the next slice */
			n = poll(d->fds, FD_COUNT, 0);
		} else {
			watch_net(d, d->work && d->next_attempt > now && d->fail != NBE_FAIL_NONE &&
					     d->fail_network);
			/* nothing to do until an fd fires: no timeout, no wakeups */
			n = poll(d->fds, FD_COUNT, -1);
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("poll: %s", strerror(errno));
			break;
		}
		if (d->fds[FD_SIGNAL].revents & POLLIN)
			read_signals(d);
		if (d->fds[FD_TIMER].revents & POLLIN) {
			uint64_t x;
			if (read(d->fds[FD_TIMER].fd, &x, sizeof(x)) < 0 && errno != EAGAIN)
				log_debug("timerfd: %s", strerror(errno));
		}
		if (d->fds[FD_NOTIFY].revents & POLLIN)
			read_notify(d);
		if (d->fds[FD_STATECHECK].fd >= 0 && (d->fds[FD_STATECHECK].revents & POLLIN)) {
			uint64_t x;
			if (read(d->fds[FD_STATECHECK].fd, &x, sizeof(x)) == (ssize_t)sizeof(x) &&
			    d->up && !d->decommissioned) {
				nbe_uploader_check_state(d->up);
				if (!d->work) {
					d->work = true;
					d->next_attempt = 0;
				}
			}
		}
		if (d->fds[FD_NET].fd >= 0 && (d->fds[FD_NET].revents & POLLIN))
			read_net(d);
		if (d->jobs && (d->fds[FD_JOBTIMER].revents & POLLIN))
			jobpull_tick(d->jobs);
		if (d->jobs && d->fds[FD_JOBCHILD].fd >= 0 &&
		    (d->fds[FD_JOBCHILD].revents & POLLIN))
			jobpull_reap(d->jobs);
		if (d->jobs)
			d->fds[FD_JOBCHILD].fd = jobpull_child_fd(d->jobs);
		if (d->fds[FD_WATCHDOG].fd >= 0 && (d->fds[FD_WATCHDOG].revents & POLLIN))
			watchdog_tick(d);
		bool changed = false;
		if (d->fds[FD_KEYS].fd >= 0 && (d->fds[FD_KEYS].revents & POLLIN))
			changed = keywatch_read(d->keys);
		if (d->fds[FD_NUVLAEDGE].fd >= 0 && (d->fds[FD_NUVLAEDGE].revents & POLLIN))
			changed = newatch_read(d->nuvlaedge) || changed;
		if (changed) {
			/* editors write in steps: read the files once they settle */
			struct itimerspec its = { .it_value = { 0, KEYS_SETTLE_MS * 1000000L } };
			timerfd_settime(d->fds[FD_KEYTIMER].fd, 0, &its, NULL);
		}
		if (d->fds[FD_KEYTIMER].fd >= 0 && (d->fds[FD_KEYTIMER].revents & POLLIN)) {
			uint64_t x;
			if (read(d->fds[FD_KEYTIMER].fd, &x, sizeof(x)) == (ssize_t)sizeof(x))
				scan_watched(d);
		}
	}
}

static void usage(FILE *f)
{
	fprintf(f, "usage: nuvlabox-eventd [--config FILE] [--foreground] [--version]\n"
		   "Uploads buffered NuvlaBox events to Nuvla. See nuvlabox-eventd(8).\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct daemon d = { .config_path = NBE_CONFIG_FILE };
	struct nbe_error err = { { 0 } };
	int opt, r;

	nbe_json_install_hooks();
	log_init("nuvlabox-eventd", NBE_LOG_INFO);
	while ((opt = getopt_long(argc, argv, "c:fVh", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			d.config_path = optarg;
			d.config_explicit = true;
			break;
		case 'f':
			break; /* it always runs in the foreground: systemd supervises it */
		case 'V':
			printf("nuvlabox-eventd %s (libcurl %s)\n", NBE_VERSION,
			       nbe_nuvla_tls_library());
			return EX_OK;
		case 'h':
			usage(stdout);
			return EX_OK;
		default:
			usage(stderr);
			return EX_USAGE;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return EX_USAGE;
	}
	if (load_config(&d, &d.cfg, &err) < 0) {
		log_error("%s", err.msg);
		return EX_CONFIG;
	}
	log_set_level(d.cfg.log_level);
	log_info("nuvlabox-eventd %s starting; TLS by %s; endpoint %s; state in %s", NBE_VERSION,
		 nbe_nuvla_tls_library(), d.cfg.endpoint, d.cfg.state_dir);
	if (d.cfg.insecure)
		log_warning("insecure = true: the server's certificate is NOT verified; anyone on "
			    "the path can read and change what is sent");
	r = setup(&d);
	if (r) {
		teardown(&d);
		return r == SETUP_STOPPED ? EX_OK : r;
	}
	if (!d.up)
		log_warning("not uploading until the configuration is fixed (reload with SIGHUP)");
	else if (!d.cfg.nuvlabox_id || !d.cfg.api_key || !d.secret)
		log_warning(
			"not configured yet (nuvlabox_id, api_key, api_secret_file%s%s): events "
			"are buffered; reload with SIGHUP once they are set",
			d.cfg.identity_note ? "; " : "",
			d.cfg.identity_note ? d.cfg.identity_note : "");
	else if (d.cfg.identity_source)
		log_info("identity %s and its credential from %s", d.cfg.nuvlabox_id,
			 d.cfg.identity_source);
	d.work = true; /* whatever is pending from before */
	sd(&d, "READY=1");
	sd(&d, "STATUS=started");
	loop(&d);
	sd(&d, "STOPPING=1");
	if (d.buf) {
		upload_save_state(d.buf, "idle", d.fail, d.last_error, 0);
		detect_boot_alive(d.buf, true);
	}
	log_info("stopped");
	teardown(&d);
	return EX_OK;
}
