/*
 * life: what the standalone lifecycle actions share (cmd_activate.c,
 * cmd_commission.c, cmd_job.c; DESIGN §6.3, NUVLA-CONTRACT §4): the buffer
 * and a Nuvla client of their own (no cookie jar: they never disturb the
 * uploader's session), recording nuvlabox.<op> and its .completed or
 * .failed as DESIGN §4 links them, and the exit codes of DESIGN §7 for a
 * request's outcome.
 */
#ifndef NBE_LIFE_H
#define NBE_LIFE_H

#include "cli.h"

#include "event.h"
#include "ids.h"
#include "nuvla.h"

struct life {
	struct cli *c;
	struct nbe_buffer *buf;
	struct nbe_nuvla *n;
	char boot_id[NBE_UUID_LEN + 1];
};

/* The buffer and a Nuvla client. Returns 0 or an exit code. */
int life_open(struct cli *c, struct life *l);
void life_close(struct life *l);

/* Records one event and pokes a running daemon. @ret_id (may be NULL) gets
 * its device event id. Returns 0 or an exit code. */
int life_record(struct life *l, const struct nbe_event_input *in, char ret_id[NBE_UUID_LEN + 1]);

/* Records the end of an operation: @name ("nuvlabox.<op>.completed" or
 * ".failed"), after @parent (a device event id) or, with a job, after the
 * latest start of that job. */
int life_record_end(struct life *l, const char *name, const char *parent, const char *job,
		    const char *message, const char *details, const char *const *links);

/* The exit code of DESIGN §7 for a request's outcome. */
int life_exit_for(const struct nbe_http_response *r);

/* Runs one request. Returns 0 when it ran (whatever its outcome: see
 * @resp), or an exit code after printing why not. */
int life_call(struct life *l, const char *method, const char *path, const char *body,
	      struct nbe_http_response *resp);

/* Logs in with the configured (or activated) credential. Returns 0 or an
 * exit code. */
int life_login(struct life *l);

/* POSTs @body to the nuvlabox's commission. Returns 0 when it ran. */
int life_commission(struct life *l, const char *body, struct nbe_http_response *resp);

/* "/api/<href>[/<op>]" (nbe_free()), NULL when out of memory. */
char *life_api_path(const char *href, const char *op);

/* A details object as text, from key/value string pairs (NULL-terminated);
 * NULL when out of memory. */
char *life_details(const char *const *kv);

#endif
