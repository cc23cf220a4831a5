/*
 * uploader: moves pending events from the buffer to Nuvla's event resource
 * (DESIGN §4, §5): capture order, a window of requests in flight, a child
 * only after its parent has a server id, local parents resolved at send
 * time, the failure classes (dead letter, auth failed, endpoint wrong,
 * Retry-After, full-jitter backoff), and in-doubt events looked up by their
 * device-event tag before they are sent again.
 *
 * One uploader at a time: the caller holds the upload lock.
 */
#ifndef NBE_UPLOADER_H
#define NBE_UPLOADER_H

#include "buffer.h"
#include "error.h"
#include "nuvla.h"

#include <stdbool.h>
#include <stdint.h>

/* Why a round stopped before the buffer was empty. */
enum nbe_upload_fail {
	NBE_FAIL_NONE = 0,
	NBE_FAIL_RETRYABLE, /* 5xx, 429, timeouts, in doubt: back off and retry */
	NBE_FAIL_CONNECT,   /* nothing reached the server: DNS, TCP, TLS, certificates */
	NBE_FAIL_GATEWAY,   /* a gateway refused us (client certificate) with a 4xx of its own */
	NBE_FAIL_AUTH,	    /* Nuvla refused the credentials (403 after one re-login) */
	NBE_FAIL_ENDPOINT,  /* 404/405 on /api/event: the endpoint is wrong */
	NBE_FAIL_CONFIG,    /* no nuvlabox id or credentials */
};

/* The upload_state of `status` (DESIGN §7) for a failure class. */
const char *nbe_upload_state_for(enum nbe_upload_fail f);

struct nbe_uploader_opts {
	struct nbe_buffer *buf;
	struct nbe_nuvla *nuvla;
	const char *nuvlabox_id; /* "nuvlabox/<uuid>" */
	const char *api_key;	 /* "credential/<uuid>" */
	const char *api_secret;
	const char *agent_version;
	const char *boot_id; /* this boot, for re-stamping */
	const char *timesync_file;
	int64_t retry_base_ms, retry_cap_ms;
	int64_t lookup_delay_ms;    /* wait before looking up an in-doubt event */
	int64_t request_timeout_ms; /* added to it after a request got no answer */
	int max_in_flight;
};

struct nbe_upload_result {
	enum nbe_upload_fail fail;
	int64_t sent, dead, found; /* this round; found = in-doubt events found on the server */
	int64_t retry_after_ms;	   /* from the server, -1 when none */
	bool interrupted;	   /* the client's interrupt hook said stop */
	bool login_refused;	   /* a login was answered 403 (not just a request) */
	bool network;		   /* a failure without an HTTP answer (no server said so) */
	int64_t not_before_ms;	   /* > 0: nothing to do before this long (lookups waiting) */
	char error[512];
};

struct nbe_uploader;

int nbe_uploader_new(const struct nbe_uploader_opts *opts, struct nbe_uploader **ret,
		     struct nbe_error *err);
void nbe_uploader_free(struct nbe_uploader *up);

/* Called after each acknowledged or dead-lettered event (progress bars). */
typedef void (*nbe_upload_progress_fn)(void *userdata, int64_t sent, int64_t dead);

/*
 * One round: log in if needed, learn the owner once, then send pending
 * events until none is left, a failure stops the round, or the monotonic
 * clock passes @deadline_ms. Fills @res. Returns 0, or -errno for a local
 * failure (the buffer), with @err set.
 */
int nbe_uploader_round(struct nbe_uploader *up, int64_t deadline_ms, nbe_upload_progress_fn fn,
		       void *userdata, struct nbe_upload_result *res, struct nbe_error *err);

/* The nuvlabox's state ("COMMISSIONED", "DECOMMISSIONING", ...) as last
 * read from the server, or NULL. It is read after every login and after
 * nbe_uploader_check_state() asks for it (at the next round). */
const char *nbe_uploader_nuvlabox_state(const struct nbe_uploader *up);
void nbe_uploader_check_state(struct nbe_uploader *up);

/*
 * How long to wait before the next round after @res: the server's
 * Retry-After when it gave one, else full jitter, a random time in
 * [0, min(cap, base * 2^n)] for the n-th consecutive failure.
 */
int64_t nbe_uploader_backoff_ms(struct nbe_uploader *up, const struct nbe_upload_result *res);

#endif
