/*
 * jobpull: optional job pulling in the daemon (DESIGN §6.3, `job_pull`,
 * off by default so that it never competes with a NuvlaEdge agent). Every
 * heartbeat_interval it sends the nuvlabox's heartbeat, which answers with
 * the ids of its pending jobs; each new id runs once as a child process
 * (`nuvlabox-event-net job run job/ID`), one at a time, even though the
 * server lists a job again on every heartbeat until it is final
 * (NUVLA-CONTRACT §4). The ids already run are kept in the buffer's meta
 * table, so a restart does not run them again.
 *
 * The heartbeat is a blocking request of the daemon's loop, bounded by
 * request_timeout and interrupted by a stop signal.
 */
#ifndef NBE_JOBPULL_H
#define NBE_JOBPULL_H

#include "buffer.h"
#include "config.h"
#include "error.h"
#include "nuvla.h"

struct jobpull_opts {
	const struct nbe_config *cfg; /* the daemon's; may change on reload */
	const char *config_path;      /* passed to the job runner */
	char *const *secret;	      /* the daemon's secret (may change on reload) */
	struct nbe_buffer *buf;
	const int *wake_fds; /* interrupt a heartbeat when one is readable */
	unsigned n_wake;
	nbe_nuvla_interrupt_fn interrupt;
	void *interrupt_userdata;
};

struct jobpull;

/* Returns 0 or -errno (@err). The heartbeat timer runs when job_pull is on. */
int jobpull_new(const struct jobpull_opts *o, struct jobpull **ret, struct nbe_error *err);

/* Frees it; a job still running is left to finish on its own. */
void jobpull_free(struct jobpull *jp);

/* The configuration changed: start or stop the timer, log in again. */
void jobpull_reload(struct jobpull *jp);

/* The timer's fd (always valid) and the running job's pidfd (-1: none). */
int jobpull_timer_fd(const struct jobpull *jp);
int jobpull_child_fd(const struct jobpull *jp);

/* The timer fired: heartbeat, then start the next new job if none runs. */
void jobpull_tick(struct jobpull *jp);

/* The running job's pidfd is readable: reap it, start the next one. */
void jobpull_reap(struct jobpull *jp);

#endif
