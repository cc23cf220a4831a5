/*
 * job: what the device reads of Nuvla's jobs (NUVLA-CONTRACT §4): the job
 * document (action, state, affected resources), the public key an ssh-key
 * job's get-context answer holds, and the job ids of a heartbeat answer.
 * Pure parsing, for the job runner and the daemon's puller (and the fuzzer).
 */
#ifndef NBE_JOB_H
#define NBE_JOB_H

#include "error.h"
#include "ids.h"

#include <stdbool.h>
#include <stddef.h>

#define NBE_JOB_ACTION_MAX   63
#define NBE_JOB_AFFECTED_MAX 8

struct nbe_job_doc {
	char action[NBE_JOB_ACTION_MAX + 1];
	char state[16]; /* QUEUED RUNNING SUCCESS FAILED CANCELED */
	/* target-resource's href, the device the job is for: has_target when
	 * the document names one at all, target "" when that is not a valid
	 * href (so that it matches no device) */
	bool has_target;
	char target[NBE_HREF_MAX + 1];
	char affected[NBE_JOB_AFFECTED_MAX][NBE_HREF_MAX + 1]; /* valid hrefs only */
	unsigned naffected;
};

/* Whether @state is final (SUCCESS, FAILED, CANCELED). */
bool nbe_job_state_final(const char *state);

/*
 * Parses a job document. Returns 0 with @ret filled, -EBADMSG (not a job:
 * no string action of [a-z0-9_-], or a state not of the five; @err says
 * which), or -ENOMEM.
 */
int nbe_job_parse(const char *body, size_t len, struct nbe_job_doc *ret, struct nbe_error *err);

/*
 * The public key of an ssh-key job's get-context answer: the "public-key"
 * of the credential that is among @job's affected resources first, else of
 * any "credential/..." member. Copies the credential id into @cred and the
 * key into *ret_key (nbe_free()). Returns 0, -ENOENT (none), -EBADMSG (not
 * a JSON object) or -ENOMEM.
 */
int nbe_job_context_key(const char *body, size_t len, const struct nbe_job_doc *job,
			char cred[NBE_HREF_MAX + 1], char **ret_key);

/*
 * The job ids of a heartbeat answer ({"jobs":["job/<uuid>",...]}): valid
 * job hrefs only, each once, in order, at most @max. Returns 0 with *ret_n
 * set (0 when there are none), -EBADMSG (not a JSON object) or -ENOMEM.
 */
int nbe_heartbeat_jobs(const char *body, size_t len, char (*ids)[NBE_HREF_MAX + 1], unsigned max,
		       unsigned *ret_n);

#endif
