#include "uploader.h"

#include "alloc.h"
#include "clock.h"
#include "ids.h"
#include "json.h"
#include "random.h"
#include "wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Events read from the buffer at a time. */
#define QUEUE_MAX 64
/* The in-flight mark runs this far ahead of the events sent (one fsync per
 * this many events). */
#define MARK_WINDOW 64
/* In-doubt events looked up in one search. */
#define LOOKUP_MAX 20
#define MAX_SLOTS  64
/*
 * Acknowledgements are committed this many at a time (one write transaction
 * per batch instead of one per answer), and at least this often. Until then
 * the events are still pending in the buffer, but at or below the durable
 * in-flight mark: a crash in between leads to lookups, never to duplicates.
 */
#define ACK_BATCH      64
#define ACK_MAX_AGE_MS 200
/* reap() leaves fewer than ACK_BATCH, then up to MAX_SLOTS answers come */
#define ACK_CAP (ACK_BATCH + MAX_SLOTS)
/* Whether the clock is synchronised is read at the start of each round and
 * at most this often within one (two system calls: not once per event). */
#define SYNC_CHECK_MS 1000

struct slot {
	bool used, done;
	int64_t seq;
	char id[NBE_UUID_LEN + 1];
	char *wire;
	struct nbe_http_response resp;
};

struct nbe_uploader {
	struct nbe_uploader_opts o;
	char *nuvlabox_id, *api_key, *api_secret, *agent_version, *boot_id, *timesync_file;
	char *owner;
	bool need_doc;	  /* read the nuvlabox document (owner, state) this round */
	char state[32];	  /* the nuvlabox's state as last read, "" if never */
	bool state_check; /* a round is wanted even with nothing pending */
	bool recovered;
	int64_t mark;
	unsigned failures; /* consecutive failed rounds, for the backoff */
	struct slot slots[MAX_SLOTS];
	int in_flight;
	/* answered but not yet committed: server ids and bodies owned here */
	struct nbe_ack acks[ACK_CAP];
	char *ack_owned[2 * ACK_CAP];
	size_t nacks;
	int64_t acks_since_ms; /* monotonic time of the oldest of them */
	bool synced;	       /* the clock was synchronised ... */
	int64_t synced_at_ms;  /* ... at this monotonic time, 0: read again */
};

const char *nbe_upload_state_for(enum nbe_upload_fail f)
{
	switch (f) {
	case NBE_FAIL_NONE:
		return "idle";
	case NBE_FAIL_RETRYABLE:
		return "backoff";
	case NBE_FAIL_CONNECT:
	case NBE_FAIL_ENDPOINT:
	case NBE_FAIL_CONFIG:
		return "offline";
	case NBE_FAIL_GATEWAY:
	case NBE_FAIL_AUTH:
		return "auth-failed";
	}
	return "idle";
}

static void set_fail(struct nbe_upload_result *res, enum nbe_upload_fail f, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_fail(struct nbe_upload_result *res, enum nbe_upload_fail f, const char *fmt, ...)
{
	va_list ap;

	if (res->fail != NBE_FAIL_NONE)
		return; /* the first failure of a round is the one reported */
	res->fail = f;
	va_start(ap, fmt);
	vsnprintf(res->error, sizeof(res->error), fmt, ap);
	va_end(ap);
}

/* The class of a failed login or lookup (not an event post). */
static enum nbe_upload_fail request_fail(const struct nbe_http_response *r)
{
	switch (r->cls) {
	case NBE_HTTP_OK:
		return NBE_FAIL_NONE;
	case NBE_HTTP_CONNECT:
		return NBE_FAIL_CONNECT;
	case NBE_HTTP_IN_DOUBT:
		return NBE_FAIL_RETRYABLE;
	case NBE_HTTP_GATEWAY_ERROR:
		if (r->status >= 300 && r->status < 400)
			return NBE_FAIL_ENDPOINT; /* a redirect: the endpoint is wrong */
		return r->status >= 500 || r->status == 429 ? NBE_FAIL_RETRYABLE : NBE_FAIL_GATEWAY;
	case NBE_HTTP_NUVLA_ERROR:
		if (r->status == 403)
			return NBE_FAIL_AUTH;
		if (r->status == 404 || r->status == 405)
			return NBE_FAIL_ENDPOINT;
		return NBE_FAIL_RETRYABLE;
	}
	return NBE_FAIL_RETRYABLE;
}

/* Notes failures that no server answered: the network may be at fault, so
 * the network coming back is a reason to retry early. */
static void note_network(struct nbe_upload_result *res, const struct nbe_http_response *r)
{
	if (r->cls == NBE_HTTP_CONNECT || (r->cls == NBE_HTTP_IN_DOUBT && r->status == 0))
		res->network = true;
}

static void take_retry_after(struct nbe_upload_result *res, const struct nbe_http_response *r)
{
	note_network(res, r);
	if (r->retry_after_s >= 0 && res->retry_after_ms < 0)
		res->retry_after_ms = r->retry_after_s * 1000;
}

static int login(struct nbe_uploader *up, struct nbe_upload_result *res, struct nbe_error *err)
{
	up->need_doc = true; /* the state is checked on every login */
	struct nbe_http_response r = { 0 };
	enum nbe_upload_fail f;
	int rc = nbe_nuvla_login(up->o.nuvla, up->api_key, up->api_secret, &r, err);

	if (rc < 0)
		return rc;
	f = request_fail(&r);
	if (f != NBE_FAIL_NONE) {
		take_retry_after(res, &r);
		set_fail(res, f, "login as %s: %s", up->api_key, r.message);
		if (r.cls == NBE_HTTP_NUVLA_ERROR && r.status == 403)
			res->login_refused = true;
	}
	nbe_http_response_clear(&r);
	return 0;
}

/*
 * Reads the nuvlabox document: its owner (cached in the buffer, for the ACL)
 * and its state (for decommission detection). Once per session and when
 * asked (nbe_uploader_check_state()); a failure to read it stops the round
 * only when the server could not be reached.
 */
static int read_nuvlabox(struct nbe_uploader *up, bool *relogged, struct nbe_upload_result *res,
			 struct nbe_error *err)
{
	struct nbe_http_response r = { 0 };
	char path[160], *owner = NULL;
	int rc;

	if (!up->owner) {
		rc = nbe_buffer_meta_get(up->o.buf, "owner", &up->owner, err);
		if (rc < 0)
			return rc;
	}
	if (!up->need_doc)
		return 0;
	snprintf(path, sizeof(path), "/api/%s", up->nuvlabox_id);
	for (;;) {
		rc = nbe_nuvla_request(up->o.nuvla, "GET", path, NULL, &r, err);
		if (rc < 0)
			return rc;
		if (r.cls == NBE_HTTP_NUVLA_ERROR && r.status == 403 && !*relogged) {
			nbe_http_response_clear(&r);
			*relogged = true;
			rc = login(up, res, err);
			if (rc < 0 || res->fail != NBE_FAIL_NONE)
				return rc;
			continue;
		}
		break;
	}
	if (r.cls == NBE_HTTP_OK) {
		rc = nbe_nuvla_parse_nuvlabox(r.body, up->state, sizeof(up->state), &owner);
		if (rc < 0) {
			rc = nbe_error_set(err, rc, "out of memory");
		} else if (!up->owner && owner) {
			up->owner = owner;
			owner = NULL;
			rc = nbe_buffer_meta_set(up->o.buf, "owner", up->owner, err);
		}
		nbe_free(owner);
		up->need_doc = false;
	} else if (r.cls == NBE_HTTP_NUVLA_ERROR && r.status >= 400 && r.status < 500) {
		up->need_doc = false; /* not allowed to read it: events carry no owner */
	} else {
		take_retry_after(res, &r);
		set_fail(res, request_fail(&r), "reading %s: %s", up->nuvlabox_id, r.message);
	}
	nbe_http_response_clear(&r);
	return rc;
}

/* Percent-encodes @s into @out (RFC 3986 unreserved kept). */
static void url_encode(const char *s, char *out, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (; *s && o + 4 < size; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '_' || c == '.' || c == '~') {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
}

/*
 * Looks up in-doubt events by their device-event tag. Found ones are
 * acknowledged with the server's id; *ret_found counts them, and @looked[i]
 * says which were searched successfully (and so may be sent now).
 */
static int lookup(struct nbe_uploader *up, struct nbe_event *evs, size_t n, bool *looked,
		  struct nbe_upload_result *res, struct nbe_error *err)
{
	char filter[LOOKUP_MAX * 64], enc[LOOKUP_MAX * 64 * 3 + 1], *path;
	struct nbe_http_response r = { 0 };
	struct nbe_ack acks[LOOKUP_MAX];
	char tags[LOOKUP_MAX][sizeof("device-event/") + NBE_UUID_LEN];
	const char *tagp[LOOKUP_MAX];
	char *ids[LOOKUP_MAX] = { 0 };
	size_t off = 0, nacks = 0;
	int rc;

	for (size_t i = 0; i < n; i++)
		off += (size_t)snprintf(filter + off, sizeof(filter) - off,
					"%stags='device-event/%s'", i ? " or " : "", evs[i].id);
	url_encode(filter, enc, sizeof(enc));
	path = nbe_malloc(strlen(enc) + 64);
	if (!path)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	snprintf(path, strlen(enc) + 64, "/api/event?filter=%s&select=id,tags&last=%zu", enc,
		 2 * n);
	rc = nbe_nuvla_request(up->o.nuvla, "GET", path, NULL, &r, err);
	if (rc == 0 && r.cls == NBE_HTTP_NUVLA_ERROR && r.status == 403) {
		/* the session expired (a week, or a restart after a long outage):
		 * log in again once, as for any other request */
		nbe_http_response_clear(&r);
		nbe_nuvla_drop_session(up->o.nuvla);
		rc = login(up, res, err);
		if (rc == 0 && res->fail == NBE_FAIL_NONE)
			rc = nbe_nuvla_request(up->o.nuvla, "GET", path, NULL, &r, err);
		else if (rc == 0) {
			nbe_free(path);
			return 0;
		}
	}
	nbe_free(path);
	if (rc < 0)
		return rc;
	if (r.cls != NBE_HTTP_OK) {
		take_retry_after(res, &r);
		set_fail(res, request_fail(&r), "looking up in-doubt events: %s", r.message);
		nbe_http_response_clear(&r);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		snprintf(tags[i], sizeof(tags[i]), "device-event/%s", evs[i].id);
		tagp[i] = tags[i];
	}
	rc = nbe_nuvla_parse_search(r.body, tagp, n, ids);
	nbe_http_response_clear(&r);
	if (rc == -ENOMEM)
		return nbe_error_set(err, rc, "out of memory");
	if (rc < 0) {
		set_fail(res, NBE_FAIL_RETRYABLE, "looking up in-doubt events: unexpected answer");
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		looked[i] = true;
		if (ids[i]) {
			acks[nacks].seq = evs[i].seq;
			acks[nacks].server_id = ids[i];
			acks[nacks].wire = evs[i].wire; /* kept when it went in doubt */
			nacks++;
		} else if ((rc = nbe_buffer_clear_doubt(up->o.buf, evs[i].seq, err)) < 0) {
			/* not on the server after its refresh delay: it may be sent again */
			goto out;
		}
	}
	if (nacks) {
		rc = nbe_buffer_mark_sent(up->o.buf, acks, nacks, err);
		if (rc == 0)
			res->found += (int64_t)nacks;
	}
out:
	for (size_t i = 0; i < n; i++)
		nbe_free(ids[i]);
	return rc;
}

static void on_done(void *userdata, struct nbe_http_response *resp)
{
	struct slot *s = userdata;

	s->resp = *resp;
	resp->body = NULL;
	s->done = true;
}

/* The corrected capture time of an event taken while the clock was not
 * synchronised, once it is, in the same boot (DESIGN §5 Clock); 0 if none. */
static int64_t restamp(const struct nbe_uploader *up, const struct nbe_event *ev, bool synced,
		       int64_t now_ms)
{
	if (ev->clock_synced || !synced || strcmp(ev->boot_id, up->boot_id) != 0)
		return 0;
	return now_ms - (nbe_clock_boottime_ms() - ev->boottime_ms);
}

/* Whether the wall clock is synchronised, read at most every SYNC_CHECK_MS. */
static bool clock_synced(struct nbe_uploader *up)
{
	int64_t now = nbe_clock_monotonic_ms();

	if (up->synced_at_ms == 0 || now - up->synced_at_ms >= SYNC_CHECK_MS) {
		up->synced = nbe_clock_synced(up->timesync_file);
		up->synced_at_ms = now > 0 ? now : 1;
	}
	return up->synced;
}

/* Builds the body and starts the POST of @ev. *ret_wait when its parent has
 * no server id yet. */
static int dispatch(struct nbe_uploader *up, const struct nbe_event *ev, bool *ret_wait,
		    struct nbe_upload_result *res, struct nbe_error *err)
{
	struct nbe_wire_ctx ctx = { 0 };
	struct nbe_event fresh = { 0 };
	struct slot *s = NULL;
	char *parent = NULL, *body = NULL;
	char ref[32];
	int rc;

	rc = nbe_buffer_resolve_parent(up->o.buf, ev, &parent, ret_wait, err);
	if (rc < 0 || *ret_wait)
		return rc;
	/* the mark first: from now on nothing changes this event in the buffer
	 * (a drop report stops taking counts, eviction spares it) */
	if (ev->seq > up->mark) {
		rc = nbe_buffer_set_inflight_mark(up->o.buf, ev->seq + MARK_WINDOW, err);
		if (rc < 0)
			goto out;
		up->mark = ev->seq + MARK_WINDOW;
	}
	if (strcmp(ev->name, NBE_EVENT_DROPPED) == 0) {
		/* its counts may have grown since it was read: post the latest */
		snprintf(ref, sizeof(ref), "%" PRId64, ev->seq);
		rc = nbe_buffer_get(up->o.buf, ref, &fresh, err);
		if (rc < 0)
			goto out;
		ev = &fresh;
	}
	ctx.nuvlabox_id = up->nuvlabox_id;
	ctx.owner = up->owner;
	ctx.agent_version = up->agent_version;
	ctx.parent_href = parent;
	ctx.now_ms = nbe_clock_wall_ms();
	ctx.now_synced = clock_synced(up);
	ctx.restamp_ms = restamp(up, ev, ctx.now_synced, ctx.now_ms);
	rc = nbe_wire_build(ev, &ctx, &body, err);
	if (rc == -EMSGSIZE || rc == -EINVAL) {
		/* cannot ever be sent as it is: a dead letter, not a stuck queue */
		rc = nbe_buffer_mark_dead(up->o.buf, ev->seq, err->msg, err);
		if (rc == 0)
			res->dead++;
		goto out;
	}
	if (rc < 0)
		goto out;
	for (int i = 0; i < MAX_SLOTS; i++) {
		if (!up->slots[i].used) {
			s = &up->slots[i];
			break;
		}
	}
	if (!s) {
		rc = nbe_error_set(err, -EBUSY, "no free request slot");
		goto out;
	}
	memset(s, 0, sizeof(*s));
	rc = nbe_nuvla_start(up->o.nuvla, "POST", "/api/event", body, on_done, s, err);
	if (rc < 0)
		goto out;
	s->used = true;
	s->seq = ev->seq;
	memcpy(s->id, ev->id, sizeof(s->id));
	s->wire = body;
	body = NULL;
	up->in_flight++;
out:
	nbe_free(body);
	nbe_free(parent);
	nbe_event_clear(&fresh);
	return rc;
}

/*
 * Handles the answer to one POST. Acknowledgements are collected in the
 * uploader's list (the slot's server id and body move there) for
 * flush_acks(); failures are recorded on the event and in @res. Sets
 * *need_login on a 403.
 */
static int handle(struct nbe_uploader *up, struct slot *s, bool *need_login,
		  struct nbe_upload_result *res, struct nbe_error *err)
{
	struct nbe_http_response *r = &s->resp;
	int64_t next = nbe_clock_wall_ms() + up->o.lookup_delay_ms;
	bool in_doubt = false, dead = false;
	enum nbe_upload_fail f = NBE_FAIL_NONE;
	char msg[600];

	note_network(res, r);
	switch (r->cls) {
	case NBE_HTTP_OK: {
		char *id = nbe_nuvla_resource_id(r->body);
		if (r->status == 201 && id && nbe_href_is(id, "event")) {
			size_t n = up->nacks++;
			if (n == 0)
				up->acks_since_ms = nbe_clock_monotonic_ms();
			up->acks[n].seq = s->seq;
			up->acks[n].server_id = id;
			up->acks[n].wire = s->wire;
			up->ack_owned[2 * n] = id;
			up->ack_owned[2 * n + 1] = s->wire;
			s->wire = NULL;
			return 0;
		}
		nbe_free(id);
		in_doubt = true; /* a 2xx we cannot read: it may have been stored */
		f = NBE_FAIL_RETRYABLE;
		snprintf(msg, sizeof(msg), "unexpected answer (HTTP %ld) to creating an event",
			 r->status);
		break;
	}
	case NBE_HTTP_NUVLA_ERROR:
		snprintf(msg, sizeof(msg), "%s", r->message);
		if (r->status == 403) {
			*need_login = true;
			f = NBE_FAIL_AUTH;
		} else if (r->status == 404 || r->status == 405) {
			f = NBE_FAIL_ENDPOINT;
		} else if (r->status == 429 || r->status == 503) {
			f = NBE_FAIL_RETRYABLE;
		} else if (r->status >= 500 || r->status == 408) {
			in_doubt = true;
			f = NBE_FAIL_RETRYABLE;
		} else {
			dead = true; /* 400, 413 and other permanent refusals of this event */
		}
		break;
	case NBE_HTTP_GATEWAY_ERROR:
		snprintf(msg, sizeof(msg), "%s", r->message);
		if (r->status >= 500 || r->status == 429 || r->status == 408) {
			in_doubt = r->status != 429;
			f = NBE_FAIL_RETRYABLE;
		} else if (r->status >= 300 && r->status < 400) {
			f = NBE_FAIL_ENDPOINT; /* a redirect: the endpoint is wrong */
		} else {
			f = NBE_FAIL_GATEWAY; /* about the connection, not the event */
		}
		break;
	case NBE_HTTP_CONNECT:
		snprintf(msg, sizeof(msg), "%s", r->message);
		f = NBE_FAIL_CONNECT;
		break;
	case NBE_HTTP_IN_DOUBT:
		snprintf(msg, sizeof(msg), "%s", r->message);
		in_doubt = true;
		f = NBE_FAIL_RETRYABLE;
		/* no answer: the server may still be working on it; its lookup
		 * waits a whole request timeout longer */
		next += up->o.request_timeout_ms;
		break;
	}
	if (dead) {
		int rc = nbe_buffer_mark_dead(up->o.buf, s->seq, msg, err);
		if (rc == 0)
			res->dead++;
		return rc;
	}
	take_retry_after(res, r);
	if (f != NBE_FAIL_AUTH)
		set_fail(res, f, "%s", msg);
	/* in doubt, the body may be on the server: keep it for `show` */
	return nbe_buffer_mark_retry(up->o.buf, s->seq, in_doubt, in_doubt ? next : 0, msg,
				     in_doubt ? s->wire : NULL, err);
}

/*
 * Commits the acknowledgements collected so far in one transaction and
 * empties the list, whatever the outcome: when the commit fails, the
 * in-flight mark still covers those events, and the next round looks them
 * up (the caller makes it recover) instead of sending them again.
 */
static int flush_acks(struct nbe_uploader *up, nbe_upload_progress_fn fn, void *userdata,
		      struct nbe_upload_result *res, struct nbe_error *err)
{
	size_t n = up->nacks;
	int rc = 0;

	if (n == 0)
		return 0;
	rc = nbe_buffer_mark_sent(up->o.buf, up->acks, n, err);
	for (size_t i = 0; i < 2 * n; i++) {
		nbe_free(up->ack_owned[i]);
		up->ack_owned[i] = NULL;
	}
	up->nacks = 0;
	if (rc < 0)
		return rc;
	res->sent += (int64_t)n;
	if (fn)
		fn(userdata, res->sent + res->found, res->dead);
	return 0;
}

/*
 * Processes finished requests. Their acknowledgements are committed once
 * ACK_BATCH have gathered or the oldest is ACK_MAX_AGE_MS old (flush_acks()
 * also runs before the queue is refilled, before a child waits for its
 * parent, and at the end of a round).
 */
static int reap(struct nbe_uploader *up, bool *need_login, nbe_upload_progress_fn fn,
		void *userdata, struct nbe_upload_result *res, struct nbe_error *err)
{
	int64_t dead_before = res->dead;
	int rc = 0;

	/* every finished request is handled, even after a local error on one
	 * of them: an answer dropped here would be sent again */
	for (int i = 0; i < MAX_SLOTS; i++) {
		struct slot *s = &up->slots[i];
		struct nbe_error e = { { 0 } };
		int r;

		if (!s->used || !s->done)
			continue;
		r = handle(up, s, need_login, res, &e);
		if (r < 0 && rc == 0) {
			rc = r;
			if (err)
				*err = e;
		}
		nbe_http_response_clear(&s->resp);
		nbe_free(s->wire);
		s->wire = NULL;
		s->used = false;
		up->in_flight--;
	}
	if (up->nacks >= ACK_BATCH ||
	    (up->nacks && nbe_clock_monotonic_ms() - up->acks_since_ms >= ACK_MAX_AGE_MS) ||
	    (rc < 0 && up->nacks)) {
		struct nbe_error e = { { 0 } };
		int r = flush_acks(up, fn, userdata, res, &e);
		if (r < 0 && rc == 0) {
			rc = r;
			if (err)
				*err = e;
		}
	}
	if (rc == 0 && fn && res->dead != dead_before)
		fn(userdata, res->sent + res->found, res->dead);
	return rc;
}

static bool slot_in_flight(const struct nbe_uploader *up, int64_t seq)
{
	for (int i = 0; i < MAX_SLOTS; i++) {
		if (up->slots[i].used && up->slots[i].seq == seq)
			return true;
	}
	return false;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* Looks up the in-doubt events at the head of @q (after the refresh delay).
 * Returns how many were handled (found or cleared to send), 0 to stop. */
static int lookup_head(struct nbe_uploader *up, struct nbe_event *q, size_t qn, int64_t deadline,
		       bool *looked, struct nbe_upload_result *res, struct nbe_error *err)
{
	size_t n = 0;
	int64_t wait, latest = 0;
	int rc;

	/* every event of the group must be past its own refresh delay */
	while (n < qn && n < LOOKUP_MAX && q[n].in_doubt) {
		if (q[n].next_attempt_ms > latest)
			latest = q[n].next_attempt_ms;
		n++;
	}
	wait = latest - nbe_clock_wall_ms();
	if (wait > up->o.lookup_delay_ms)
		wait = up->o.lookup_delay_ms; /* a clock step must not stall us */
	if (wait > 0) {
		if (nbe_clock_monotonic_ms() + wait > deadline) {
			/* come back when their refresh delay is over */
			res->not_before_ms = wait;
			return 0;
		}
		sleep_ms(wait);
	}
	memset(looked, 0, n * sizeof(*looked));
	rc = lookup(up, q, n, looked, res, err);
	if (rc < 0)
		return rc;
	return res->fail == NBE_FAIL_NONE ? (int)n : 0;
}

static int round_inner(struct nbe_uploader *up, int64_t deadline_ms, nbe_upload_progress_fn fn,
		       void *userdata, struct nbe_upload_result *res, struct nbe_error *err)
{
	struct nbe_event q[QUEUE_MAX];
	bool looked[QUEUE_MAX] = { 0 };
	size_t qn = 0, qi = 0;
	int64_t after = 0;
	bool relogged = false, stop = false, need_login = false;
	int rc = 0;

	memset(res, 0, sizeof(*res));
	memset(q, 0, sizeof(q));
	res->retry_after_ms = -1;
	up->synced_at_ms = 0; /* read the clock's state afresh */
	if (!up->nuvlabox_id || !up->api_key || !up->api_secret) {
		set_fail(res, NBE_FAIL_CONFIG, "%s",
			 !up->nuvlabox_id ? "the nuvlabox id is not known (nuvlabox_id)"
					  : "no api key and secret (api_key, api_secret_file)");
		return 0;
	}
	if (!up->recovered) {
		int64_t n;
		rc = nbe_buffer_recover_inflight(up->o.buf, up->o.lookup_delay_ms, &n, err);
		if (rc < 0)
			return rc;
		up->recovered = true;
		up->mark = 0;
	}
	{
		/* nothing to send and nothing asked of the server: stay quiet (an
		 * idle device must not keep logging in to an unreachable endpoint) */
		struct nbe_event probe = { 0 };
		size_t np = 0;
		rc = nbe_buffer_pending(up->o.buf, 0, 1, &probe, &np, err);
		if (rc < 0)
			return rc;
		nbe_event_clear(&probe);
		if (np == 0 && !up->state_check)
			return 0;
		up->state_check = false;
	}
	if (!nbe_nuvla_has_session(up->o.nuvla)) {
		rc = login(up, res, err);
		if (rc < 0 || res->fail != NBE_FAIL_NONE)
			return rc;
		relogged = true;
	}
	rc = read_nuvlabox(up, &relogged, res, err);
	if (rc < 0 || res->fail != NBE_FAIL_NONE)
		return rc;

	for (;;) {
		bool wait = false;

		/* refill the queue of events to send */
		if (qi == qn && !stop) {
			for (size_t i = 0; i < qn; i++)
				nbe_event_clear(&q[i]);
			qn = qi = 0;
			/* what is read as pending must be: commit the answers first */
			rc = flush_acks(up, fn, userdata, res, err);
			if (rc < 0)
				break;
			rc = nbe_buffer_pending(up->o.buf, after, QUEUE_MAX, q, &qn, err);
			if (rc < 0)
				break;
			memset(looked, 0, sizeof(looked));
		}
		/* dispatch in capture order while the window has room */
		while (!stop && qi < qn && up->in_flight < up->o.max_in_flight &&
		       nbe_clock_monotonic_ms() < deadline_ms) {
			struct nbe_event *ev = &q[qi];

			if (ev->in_doubt && !looked[qi]) {
				int k;
				if (up->in_flight > 0)
					break; /* keep the order: look up with nothing in flight */
				k = lookup_head(up, &q[qi], qn - qi, deadline_ms, &looked[qi], res,
						err);
				if (k < 0) {
					rc = k;
					goto out;
				}
				if (k == 0) {
					stop = true;
					break;
				}
				/* found ones are sent now: re-read from here */
				after = ev->seq - 1;
				qi = qn;
				break;
			}
			rc = dispatch(up, ev, &wait, res, err);
			if (rc < 0)
				goto out;
			if (wait && up->nacks > 0) {
				/* its parent (or the one it falls back to) may be
				 * answered but not committed: commit, then again */
				rc = flush_acks(up, fn, userdata, res, err);
				if (rc < 0)
					goto out;
				wait = false;
				continue;
			}
			if (wait) {
				if (!slot_in_flight(up, ev->parent_seq) && up->in_flight == 0) {
					/* the parent is neither in flight nor sent: it failed
					 * in this round, so its children wait for the next */
					stop = true;
				}
				break;
			}
			after = ev->seq;
			qi++;
		}
		if (up->in_flight == 0) {
			if (need_login) {
				need_login = false;
				if (relogged) {
					set_fail(res, NBE_FAIL_AUTH,
						 "Nuvla refused the credentials of %s (403 after a "
						 "new login)",
						 up->api_key);
					break;
				}
				relogged = true;
				nbe_nuvla_drop_session(up->o.nuvla);
				rc = login(up, res, err);
				if (rc < 0 || res->fail != NBE_FAIL_NONE)
					break;
				/* start again from the oldest pending event */
				stop = false;
				after = 0;
				qi = qn;
				continue;
			}
			if (stop || res->fail != NBE_FAIL_NONE)
				break;
			if (qi == qn && qn == 0)
				break; /* nothing left */
			if (nbe_clock_monotonic_ms() >= deadline_ms)
				break;
			if (wait && qi < qn)
				continue;
		}
		rc = nbe_nuvla_perform(up->o.nuvla, 50, err);
		if (rc < 0)
			break;
		{
			int64_t before = res->sent + (int64_t)up->nacks + res->dead;
			rc = reap(up, &need_login, fn, userdata, res, err);
			if (rc < 0)
				break;
			/* an answer after the new login: the credentials work, so a later
			 * 403 (the session expired again) earns another login */
			if (res->sent + (int64_t)up->nacks + res->dead > before && !need_login)
				relogged = false;
		}
		if (need_login || res->fail != NBE_FAIL_NONE)
			stop = true;
	}
out:
	if (rc == -EINTR) {
		/* the answers in hand are kept (else each costs a lookup) */
		struct nbe_error e2;
		flush_acks(up, fn, userdata, res, &e2);
		for (size_t i = 0; i < qn; i++)
			nbe_event_clear(&q[i]);
		return rc; /* the caller abandons what is in flight */
	}
	/* a local error: let what is in flight finish and be recorded */
	while (up->in_flight > 0) {
		struct nbe_error e2;
		if (nbe_nuvla_perform(up->o.nuvla, 50, &e2) < 0 ||
		    reap(up, &need_login, fn, userdata, res, &e2) < 0)
			break;
	}
	for (size_t i = 0; i < qn; i++)
		nbe_event_clear(&q[i]);
	{
		/* the end of a round: every answer committed before the mark
		 * goes back to 0 (a failed commit keeps the mark: lookups) */
		struct nbe_error e2 = { { 0 } };
		int r = flush_acks(up, fn, userdata, res, &e2);
		if (r < 0 && rc == 0) {
			rc = r;
			if (err)
				*err = e2;
		}
	}
	if (rc == 0 && up->in_flight == 0 && up->mark != 0) {
		/* nothing in flight: a restart needs no lookups */
		rc = nbe_buffer_set_inflight_mark(up->o.buf, 0, err);
		if (rc == 0)
			up->mark = 0;
	}
	if (rc == 0) {
		if (res->fail == NBE_FAIL_NONE)
			up->failures = 0;
		else if (up->failures < 62)
			up->failures++;
	}
	return rc;
}

int nbe_uploader_round(struct nbe_uploader *up, int64_t deadline_ms, nbe_upload_progress_fn fn,
		       void *userdata, struct nbe_upload_result *res, struct nbe_error *err)
{
	int rc = round_inner(up, deadline_ms, fn, userdata, res, err);

	/* the handles kept for the round's requests are not kept while idle */
	nbe_nuvla_trim(up->o.nuvla);
	if (rc < 0) {
		/* what was in flight may have been stored: the in-flight mark
		 * still covers it, and the next round looks it up first */
		up->recovered = false;
	}
	if (rc != -EINTR)
		return rc;
	/* asked to stop: abandon what is in flight; the in-flight mark makes
	 * those events in doubt at the next start */
	nbe_nuvla_abort_all(up->o.nuvla);
	for (int i = 0; i < MAX_SLOTS; i++) {
		nbe_free(up->slots[i].wire);
		nbe_http_response_clear(&up->slots[i].resp);
		memset(&up->slots[i], 0, sizeof(up->slots[i]));
	}
	up->in_flight = 0;
	res->interrupted = true;
	return 0;
}

const char *nbe_uploader_nuvlabox_state(const struct nbe_uploader *up)
{
	return up->state[0] ? up->state : NULL;
}

void nbe_uploader_check_state(struct nbe_uploader *up)
{
	up->need_doc = true;
	up->state_check = true;
}

int64_t nbe_uploader_backoff_ms(struct nbe_uploader *up, const struct nbe_upload_result *res)
{
	int64_t ceiling;
	unsigned n = up->failures ? up->failures - 1 : 0;

	if (res->retry_after_ms >= 0) {
		/* "0", or a date in the past (a wrong clock): not faster than base */
		int64_t w = res->retry_after_ms;
		if (w < up->o.retry_base_ms)
			w = up->o.retry_base_ms;
		return w < NBE_RETRY_AFTER_MAX_S * 1000 ? w : NBE_RETRY_AFTER_MAX_S * 1000;
	}
	ceiling = up->o.retry_base_ms;
	while (n-- > 0 && ceiling < up->o.retry_cap_ms)
		ceiling *= 2;
	if (ceiling > up->o.retry_cap_ms)
		ceiling = up->o.retry_cap_ms;
	return (int64_t)nbe_random_below((uint64_t)ceiling + 1);
}

void nbe_uploader_free(struct nbe_uploader *up)
{
	if (!up)
		return;
	for (int i = 0; i < MAX_SLOTS; i++) {
		nbe_free(up->slots[i].wire);
		nbe_http_response_clear(&up->slots[i].resp);
	}
	for (size_t i = 0; i < 2 * up->nacks; i++)
		nbe_free(up->ack_owned[i]);
	nbe_free(up->nuvlabox_id);
	nbe_free(up->api_key);
	nbe_free_secret_str(up->api_secret);
	nbe_free(up->agent_version);
	nbe_free(up->boot_id);
	nbe_free(up->timesync_file);
	nbe_free(up->owner);
	nbe_free(up);
}

int nbe_uploader_new(const struct nbe_uploader_opts *opts, struct nbe_uploader **ret,
		     struct nbe_error *err)
{
	struct nbe_uploader *up = nbe_calloc(1, sizeof(*up));

	if (!up)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	up->o = *opts;
	if (up->o.max_in_flight < 1)
		up->o.max_in_flight = 1;
	if (up->o.max_in_flight > MAX_SLOTS)
		up->o.max_in_flight = MAX_SLOTS;
	if (up->o.retry_base_ms < 1)
		up->o.retry_base_ms = 1;
	if (up->o.retry_cap_ms < up->o.retry_base_ms)
		up->o.retry_cap_ms = up->o.retry_base_ms;
#define DUP(f)                                                                                     \
	do {                                                                                       \
		if (opts->f && !(up->f = nbe_strdup(opts->f)))                                     \
			goto err_oom;                                                              \
	} while (0)
	DUP(nuvlabox_id);
	DUP(api_key);
	DUP(api_secret);
	DUP(agent_version);
	DUP(boot_id);
	DUP(timesync_file);
#undef DUP
	if (!up->agent_version || !up->boot_id)
		goto err_oom;
	up->need_doc = true;
	up->state_check = true; /* the state is checked at the first login */
	*ret = up;
	return 0;
err_oom:
	nbe_uploader_free(up);
	return nbe_error_set(err, -ENOMEM, "out of memory");
}
