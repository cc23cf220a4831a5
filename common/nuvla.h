/*
 * nuvla: the HTTP client for the Nuvla API (NUVLA-CONTRACT §1-§3) over
 * libcurl: TLS server verification (host name always checked unless
 * insecure), a client certificate for mTLS gateways, bounded timeouts and
 * response sizes, api-key session login with the cookie kept in a jar file
 * (0600) across restarts, and several requests in flight on one connection
 * (HTTP/2 multiplexing where the server offers it).
 *
 * Every response is classified once (enum nbe_http_class), so the uploader
 * and the CLI agree on what a failure means (DESIGN §5).
 */
#ifndef NBE_NUVLA_H
#define NBE_NUVLA_H

#include "error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NBE_NUVLA_MAX_BODY (1024 * 1024)
/* Retry-After is obeyed up to this (DESIGN §5). */
#define NBE_RETRY_AFTER_MAX_S 3600

struct nbe_nuvla_opts {
	const char *endpoint; /* "https://host[:port]" */
	bool insecure;	      /* no server verification at all (loudly warned by the caller) */
	const char *ca_file;  /* NULL: the system trust store */
	const char *client_cert, *client_key; /* NULL: no client certificate */
	const char *cookie_file;	      /* the jar, or NULL for none */
	int64_t connect_timeout_ms, request_timeout_ms;
	size_t max_body;    /* responses larger than this fail (0: NBE_NUVLA_MAX_BODY) */
	long max_in_flight; /* requests at once */
	const char *user_agent;
};

enum nbe_http_class {
	NBE_HTTP_OK,		/* 2xx */
	NBE_HTTP_NUVLA_ERROR,	/* a Nuvla error document ({"status":N,"message":...}) */
	NBE_HTTP_GATEWAY_ERROR, /* 4xx/5xx that is not Nuvla's (nginx's HTML, ...) */
	NBE_HTTP_CONNECT,	/* nothing was sent: DNS, TCP, TLS, certificate verification */
	NBE_HTTP_IN_DOUBT,	/* sent, outcome unknown: timeout, reset, truncated answer */
};

struct nbe_http_response {
	enum nbe_http_class cls;
	long status; /* HTTP status, 0 without one */
	char *body;  /* NUL-terminated, may be NULL; owned */
	size_t body_len;
	int64_t retry_after_s; /* -1 when absent; capped at NBE_RETRY_AFTER_MAX_S */
	char message[512];     /* what went wrong, for logs and status: never a secret */
};

void nbe_http_response_clear(struct nbe_http_response *r);

struct nbe_nuvla;

/* Creates a client. Returns 0 or -errno with @err set. */
int nbe_nuvla_new(const struct nbe_nuvla_opts *opts, struct nbe_nuvla **ret, struct nbe_error *err);
void nbe_nuvla_free(struct nbe_nuvla *n);

/* Called when a request finishes; @resp is valid during the call only. */
typedef void (*nbe_nuvla_done_fn)(void *userdata, struct nbe_http_response *resp);

/*
 * Starts a request: @method "GET"/"POST"/"PUT", @path under the endpoint
 * ("/api/event"), @body JSON or NULL. @done is called from
 * nbe_nuvla_perform(). Returns 0, -EBUSY when max_in_flight requests are
 * running, -ENOMEM.
 */
int nbe_nuvla_start(struct nbe_nuvla *n, const char *method, const char *path, const char *body,
		    nbe_nuvla_done_fn done, void *userdata, struct nbe_error *err);

/*
 * Makes the client wake up when one of @fds (at most 4) is readable, and
 * ask @fn whether to give up: nbe_nuvla_perform() and nbe_nuvla_request()
 * then return -EINTR. The daemon passes its signal fd, so a stop request is
 * honoured within a bounded time even in the middle of a slow request.
 */
typedef bool (*nbe_nuvla_interrupt_fn)(void *userdata);
void nbe_nuvla_set_interrupt(struct nbe_nuvla *n, const int *fds, unsigned nfds,
			     nbe_nuvla_interrupt_fn fn, void *userdata);

/*
 * Frees the handles kept for reuse between requests (a request started with
 * nbe_nuvla_start() leaves its libcurl handle, set up, for the next one; at
 * most max_in_flight are kept). Costs nothing but the next request's setup.
 */
void nbe_nuvla_trim(struct nbe_nuvla *n);

/* Abandons every request in flight without calling their callbacks. */
void nbe_nuvla_abort_all(struct nbe_nuvla *n);

/* Requests in flight. */
int nbe_nuvla_in_flight(const struct nbe_nuvla *n);

/*
 * Waits up to @timeout_ms for network activity, drives the transfers and
 * calls the done callbacks of finished ones. Returns 0 or -errno.
 */
int nbe_nuvla_perform(struct nbe_nuvla *n, int timeout_ms, struct nbe_error *err);

/*
 * Runs one request to completion. @ret is filled (clear it afterwards).
 * With nothing else in flight, no handle is kept afterwards (see
 * nbe_nuvla_trim()).
 */
int nbe_nuvla_request(struct nbe_nuvla *n, const char *method, const char *path, const char *body,
		      struct nbe_http_response *ret, struct nbe_error *err);

/*
 * Logs in with an api key (POST /api/session) and saves the cookie jar.
 * @ret is the response (class OK on success). Returns 0 when the request
 * ran, whatever its outcome, or -errno.
 */
int nbe_nuvla_login(struct nbe_nuvla *n, const char *key, const char *secret,
		    struct nbe_http_response *ret, struct nbe_error *err);

/* Whether the jar holds a session cookie (loaded or from a login). */
bool nbe_nuvla_has_session(const struct nbe_nuvla *n);

/* Forgets the session (after a 403) and removes it from the jar. */
void nbe_nuvla_drop_session(struct nbe_nuvla *n);

/* The TLS library libcurl uses ("OpenSSL/3.0.x", "mbedTLS/2.28.x"). */
const char *nbe_nuvla_tls_library(void);

/*
 * Parses a Nuvla error document ({"status":N,"message":"..."}, N a whole
 * number 100..599): on success copies its message into @out (one printable
 * line) and returns N; returns -1 when @body is not one.
 */
long nbe_nuvla_parse_error(const char *body, char *out, size_t out_size);

/* Reads "resource-id" of a create response, else "id". New string or NULL. */
char *nbe_nuvla_resource_id(const char *body);

/*
 * The pure parts of reading an answer, apart so that they can be tested and
 * fuzzed without a server.
 */

/*
 * Classifies a complete HTTP answer with status @status and body @r->body
 * (may be NULL): sets @r->status, @r->cls (OK, NUVLA_ERROR or GATEWAY_ERROR)
 * and @r->message (one printable line).
 */
void nbe_nuvla_classify_answer(long status, struct nbe_http_response *r);

/*
 * The seconds a "Retry-After:" header line (@n bytes, not NUL-terminated,
 * CRLF allowed) asks for, as seconds or an HTTP date after @now_s, capped
 * at NBE_RETRY_AFTER_MAX_S; -1 for another header or an unreadable value.
 */
int64_t nbe_nuvla_parse_retry_after(const char *line, size_t n, int64_t now_s);

/*
 * Reads a nuvlabox document (GET /api/nuvlabox/<uuid>): its "state" into
 * @state (left as it is when absent or not shorter than @state_size), and
 * its "owner" into *ret_owner (a new string, or NULL when absent or not an
 * ACL principal). A body that is not JSON has neither. Returns 0 or -ENOMEM.
 */
int nbe_nuvla_parse_nuvlabox(const char *body, char *state, size_t state_size, char **ret_owner);

/*
 * Reads a search answer ({"resources": [...]}): for each of the @n @tags,
 * @ret_ids[i] is the "id" (event/<uuid>) of the first resource carrying it,
 * a new string, or NULL when none does. Returns 0, -EINVAL when @body is
 * not a search answer, -ENOMEM (then no string is left in @ret_ids).
 */
int nbe_nuvla_parse_search(const char *body, const char *const *tags, size_t n, char **ret_ids);

#endif
