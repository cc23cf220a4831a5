/*
 * buffer: the durable SQLite event buffer (DESIGN §5, §9).
 *
 * A producer appends; the append returns only after the commit is durable
 * (WAL, synchronous=FULL). The buffer keeps itself within max_bytes (WAL
 * included, after a checkpoint) and max_events by evicting in the documented
 * order and accounting every eviction in an agent.events.dropped event. A
 * corrupt file is renamed aside, its readable events are salvaged into a
 * fresh buffer and an agent.buffer.reset event reports the counts.
 *
 * Several processes may hold the same buffer open (the daemon and any number
 * of CLI producers); SQLite's locking serialises writers (busy_timeout).
 */
#ifndef NBE_BUFFER_H
#define NBE_BUFFER_H

#include "error.h"
#include "event.h"

#include <stdbool.h>
#include <stdint.h>

/* "NBEV" in the database header: this file is ours. */
#define NBE_BUFFER_APPLICATION_ID 0x4E424556
#define NBE_BUFFER_SCHEMA_VERSION 2
#define NBE_BUFFER_FILE		  "events.db"
/* The smallest max_bytes that can hold the schema and one largest event. */
#define NBE_BUFFER_MIN_BYTES (256 * 1024)

struct nbe_buffer;

struct nbe_buffer_opts {
	const char *path;	   /* the database file */
	int64_t max_bytes;	   /* cap on database + WAL after checkpoint */
	int64_t max_events;	   /* cap on the number of events of any state */
	int64_t keep_sent;	   /* sent events kept as history */
	int64_t busy_timeout_ms;   /* how long to wait for another writer */
	bool full_check;	   /* run PRAGMA quick_check at open */
	const char *boot_id_file;  /* for the agent's own events */
	const char *timesync_file; /* see nbe_clock_synced(); may be NULL */
};

/* What nbe_buffer_open() found and did. */
struct nbe_buffer_open_info {
	bool created;	       /* a new, empty buffer */
	bool reset;	       /* the old file was corrupt and was quarantined */
	char quarantined[512]; /* where it went, if reset */
	int64_t salvaged;      /* events carried over, if reset */
	char reason[256];      /* why it was judged corrupt, if reset */
};

/*
 * Opens (creating if needed, with mode 0660, owned like its directory) the buffer at opts->path,
 * migrating its schema and, with opts->full_check, verifying it. A corrupt or
 * foreign file is quarantined and salvaged (see @ret_info, may be NULL).
 * Returns 0 or -errno: -EACCES/-EROFS/-ENOENT (cannot open or create),
 * -ENOSPC (disk full), -EBUSY (locked by another writer past the timeout),
 * -EPROTO (written by a newer agent: schema version too high), -ENOMEM, -EIO.
 */
int nbe_buffer_open(const struct nbe_buffer_opts *opts, struct nbe_buffer **ret,
		    struct nbe_buffer_open_info *ret_info, struct nbe_error *err);

/*
 * For a long-lived holder (the daemon): when the file at opts->path is not
 * the one open (another process quarantined it and made a fresh one),
 * reopens it in place. Sets *ret_reopened. Returns 0 or -errno.
 */
int nbe_buffer_follow(struct nbe_buffer *b, bool *ret_reopened, struct nbe_error *err);

/* Quarantines the open buffer as a corrupt one (see nbe_buffer_open()),
 * for a holder whose own queries met SQLITE_CORRUPT. */
int nbe_buffer_quarantine(struct nbe_buffer *b, const char *reason, struct nbe_error *err);

/* Closes the buffer. Accepts NULL. */
void nbe_buffer_close(struct nbe_buffer *b);

/*
 * Appends @ev durably: resolves its local parent (an explicit device event
 * id, or the automatic link of "<op>.completed"/"<op>.failed" to the latest
 * "<op>" of the same job), makes room under the caps, inserts, commits.
 * Sets ev->seq and the linkage fields on success. Returns 0 or: -ENOENT (the
 * parent device event id is not in the buffer), -ENOBUFS (only events that
 * are never evicted remain), -ENOSPC (disk full), -EBUSY, -EIO, -ENOMEM.
 */
int nbe_buffer_append(struct nbe_buffer *b, struct nbe_event *ev, struct nbe_error *err);

/* Appends @ev and sets the meta @key to @value in the same transaction:
 * both or neither (the boot detector records one event per boot). */
int nbe_buffer_append_with_meta(struct nbe_buffer *b, struct nbe_event *ev, const char *key,
				const char *value, struct nbe_error *err);

/* The same for @n events (n may be 0: only the meta key). */
int nbe_buffer_append_batch_with_meta(struct nbe_buffer *b, struct nbe_event *evs, size_t n,
				      const char *key, const char *value, struct nbe_error *err);

/* Appends @n events in one transaction: all or nothing. */
int nbe_buffer_append_batch(struct nbe_buffer *b, struct nbe_event *evs, size_t n,
			    struct nbe_error *err);

/*
 * Looks an event up by device event id, by seq (decimal), or by server id
 * ("event/<uuid>"). Fills @ret (zeroed by the caller) on success. Returns 0,
 * -ENOENT, or an error.
 */
int nbe_buffer_get(struct nbe_buffer *b, const char *ref, struct nbe_event *ret,
		   struct nbe_error *err);

/* Callback for nbe_buffer_foreach(): return 0 to go on, non-zero to stop
 * (that value is returned by nbe_buffer_foreach()). @ev is valid only during
 * the call. */
typedef int (*nbe_buffer_visit_fn)(const struct nbe_event *ev, void *userdata);

#define NBE_STATE_MASK(s)  (1u << (s))
#define NBE_STATE_MASK_ALL 0x7u

/* Visits events in the states of @state_mask, oldest first, at most @limit
 * (0 = all). */
int nbe_buffer_foreach(struct nbe_buffer *b, unsigned state_mask, int64_t limit,
		       nbe_buffer_visit_fn fn, void *userdata, struct nbe_error *err);

struct nbe_buffer_stats {
	int64_t pending, sent, dead;
	int64_t dropped;		/* events evicted under the caps, ever */
	int64_t oldest_pending_wall_ms; /* 0 if none */
	int64_t next_attempt_ms;	/* earliest next attempt of a pending event, 0 if none */
	int64_t db_bytes, wal_bytes;
	int64_t max_bytes, max_events;
};

int nbe_buffer_stats(struct nbe_buffer *b, struct nbe_buffer_stats *ret, struct nbe_error *err);

/*
 * Deletes sent and dead events (and pending ones too with @include_pending),
 * then checkpoints and returns freed pages to the file system. Sets
 * *ret_removed. Returns 0 or an error.
 */
int nbe_buffer_purge(struct nbe_buffer *b, bool include_pending, int64_t *ret_removed,
		     struct nbe_error *err);

/* Checkpoints the WAL (truncating it), runs an incremental vacuum and gives
 * the connection's page cache back (sqlite3_db_release_memory()). */
int nbe_buffer_checkpoint(struct nbe_buffer *b, struct nbe_error *err);

/* Meta key/value store (owner cache, upload state, last error, ...).
 * get: *ret is a new string (nbe_free()) or NULL when absent. set: NULL
 * @value deletes the key. */
int nbe_buffer_meta_get(struct nbe_buffer *b, const char *key, char **ret, struct nbe_error *err);
/* The value of @key as an integer; 0 when absent, unreadable or not a number. */
int64_t nbe_buffer_meta_get_int(struct nbe_buffer *b, const char *key);
int nbe_buffer_meta_set(struct nbe_buffer *b, const char *key, const char *value,
			struct nbe_error *err);
/* The same without an fsync: for state that may be lost on power failure
 * (what `status` shows about the uploader). */
int nbe_buffer_meta_set_lazy(struct nbe_buffer *b, const char *key, const char *value,
			     struct nbe_error *err);

/*
 * The parent href an event is uploaded with, resolved now: a local parent's
 * "event/<uuid>" once it is sent; its fallback if it was dead-lettered or
 * evicted; the recorded href; or the job. *ret_href is a new string or NULL
 * (no parent). *ret_wait is set when the local parent is still pending (the
 * event must not be sent yet).
 */
int nbe_buffer_resolve_parent(struct nbe_buffer *b, const struct nbe_event *ev, char **ret_href,
			      bool *ret_wait, struct nbe_error *err);

/*
 * Reads a storage setting of this connection (DESIGN §9): one of
 * journal_mode (1 = wal), synchronous, secure_delete, auto_vacuum,
 * journal_size_limit, wal_autocheckpoint, application_id, user_version,
 * page_size, busy_timeout, cache_size (negative: KiB). Returns 0 or
 * -EINVAL for another name.
 */
int nbe_buffer_setting(struct nbe_buffer *b, const char *name, int64_t *ret, struct nbe_error *err);

/* ---- for the uploader (one at a time, under the upload lock) ---------- */

/*
 * Reads up to @max pending events with seq > @after_seq, oldest first, into
 * @ret (zeroed by the caller; nbe_event_clear() each). Sets *ret_n.
 */
int nbe_buffer_pending(struct nbe_buffer *b, int64_t after_seq, size_t max, struct nbe_event *ret,
		       size_t *ret_n, struct nbe_error *err);

/*
 * The in-flight mark: before an event is posted, the uploader durably
 * raises the mark to at least its seq (in windows, so this costs one fsync
 * per window, not per event). Acknowledgements are then committed without
 * an fsync of their own: a power loss can roll one back, and every pending
 * event at or below the mark is then looked up on the server before it is
 * sent again (nbe_buffer_recover_inflight()).
 */
int nbe_buffer_inflight_mark(struct nbe_buffer *b, int64_t *ret, struct nbe_error *err);
int nbe_buffer_set_inflight_mark(struct nbe_buffer *b, int64_t seq, struct nbe_error *err);

/* At the uploader's start: pending events at or below the mark become in
 * doubt (*ret_n of them), to be looked up no sooner than @delay_ms from
 * now; the mark is cleared. */
int nbe_buffer_recover_inflight(struct nbe_buffer *b, int64_t delay_ms, int64_t *ret_n,
				struct nbe_error *err);

struct nbe_ack {
	int64_t seq;
	const char *server_id; /* "event/<uuid>" */
	const char *wire;      /* the body that was posted, or NULL when unknown */
};

/* Marks @n events sent in one transaction (without an fsync, see above) and,
 * once more than keep_sent + keep_sent/16 are sent, drops the oldest sent
 * events down to keep_sent (in steps: not a walk over keep_sent entries at
 * every commit). */
int nbe_buffer_mark_sent(struct nbe_buffer *b, const struct nbe_ack *acks, size_t n,
			 struct nbe_error *err);

/* Dead-letters a pending event with the server's reason. */
int nbe_buffer_mark_dead(struct nbe_buffer *b, int64_t seq, const char *reason,
			 struct nbe_error *err);

/* Records a failed attempt: the error, whether the outcome is unknown (in
 * doubt: look it up before sending again), the earliest next attempt, and
 * (in doubt) the body that may have reached the server, or NULL. */
int nbe_buffer_mark_retry(struct nbe_buffer *b, int64_t seq, bool in_doubt, int64_t next_ms,
			  const char *error, const char *wire, struct nbe_error *err);

/* An in-doubt event was looked up and not found on the server: it may be
 * sent again. */
int nbe_buffer_clear_doubt(struct nbe_buffer *b, int64_t seq, struct nbe_error *err);

/* Re-queues dead events: those named in @refs (device ids, seqs or server
 * ids), or all when @n is 0. Sets *ret_n. -ENOENT names the first unknown
 * or not-dead reference. */
int nbe_buffer_retry_dead(struct nbe_buffer *b, const char *const *refs, size_t n, int64_t *ret_n,
			  struct nbe_error *err);

/*
 * The latest event named @name captured in boot @boot_id that no later
 * event names as its parent (an operation that never completed in that
 * boot): 0 with @ret filled, -ENOENT when there is none.
 */
int nbe_buffer_find_open(struct nbe_buffer *b, const char *name, const char *boot_id,
			 struct nbe_event *ret, struct nbe_error *err);

/* The same, matching a string detail instead of a boot: the latest open
 * @name event whose details have @key equal to @value. */
int nbe_buffer_find_open_detail(struct nbe_buffer *b, const char *name, const char *key,
				const char *value, struct nbe_event *ret, struct nbe_error *err);

/* Runs PRAGMA integrity_check; 0 when it says ok, -EBADMSG otherwise (with
 * the first finding in @err). For tests and `doctor`. */
int nbe_buffer_integrity_check(struct nbe_buffer *b, struct nbe_error *err);

#endif
