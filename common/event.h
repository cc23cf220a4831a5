/*
 * event: the device event model (DESIGN §3) and the validation of everything
 * a producer can put into one (DESIGN §7 input limits).
 *
 * struct nbe_event is a plain value: every pointer member is owned by the
 * struct and released by nbe_event_clear().
 */
#ifndef NBE_EVENT_H
#define NBE_EVENT_H

#include "error.h"
#include "ids.h"

#include <stdbool.h>
#include <stdint.h>

#define NBE_NAME_MAX	   128
#define NBE_MESSAGE_MAX	   4096
#define NBE_DETAILS_MAX	   16384
#define NBE_WIRE_MAX	   32768
#define NBE_DETAIL_KEY_MAX 64

/* Names the agent itself uses. */
#define NBE_EVENT_DROPPED      "agent.events.dropped"
#define NBE_EVENT_BUFFER_RESET "agent.buffer.reset"

enum nbe_severity {
	NBE_SEV_LOW = 0,
	NBE_SEV_MEDIUM = 1,
	NBE_SEV_HIGH = 2,
	NBE_SEV_CRITICAL = 3,
};

enum nbe_phase {
	NBE_PHASE_NONE = 0,
	NBE_PHASE_STARTED,
	NBE_PHASE_COMPLETED,
	NBE_PHASE_FAILED,
};

enum nbe_state {
	NBE_STATE_PENDING = 0,
	NBE_STATE_SENT = 1,
	NBE_STATE_DEAD = 2,
};

struct nbe_event {
	/* identity and content, fixed at capture */
	char id[NBE_UUID_LEN + 1]; /* device event id, UUID v4 */
	int64_t seq;		   /* buffer sequence (upload order); 0 until stored */
	char name[NBE_NAME_MAX + 1];
	enum nbe_severity severity;
	enum nbe_phase phase;
	char *message; /* NULL or UTF-8, <= NBE_MESSAGE_MAX bytes */
	char *details; /* JSON object text, never NULL once valid */
	char *job;     /* NULL or "job/<id>" */
	char *parent;  /* as recorded: NULL, an href, or a device event id */
	char *links;   /* NULL or a JSON array of extra linked hrefs */

	/* time at capture */
	int64_t wall_ms;
	int64_t boottime_ms;
	char boot_id[NBE_UUID_LEN + 1];
	bool clock_synced;

	/* local linkage, set by the buffer at capture */
	int64_t parent_seq;		     /* 0 or the seq of a local parent event */
	char parent_local[NBE_UUID_LEN + 1]; /* its device event id, "" if none */
	char *parent_fallback; /* href used if the local parent never gets a server id */

	/* delivery */
	enum nbe_state state;
	char *server_id; /* "event/<uuid>" once sent */
	int64_t attempts;
	int64_t next_attempt_ms;
	char *last_error;
	bool in_doubt;
	char *wire; /* the body as posted, once sent; NULL otherwise */
};

/* Releases the owned members and zeroes the struct. Accepts NULL. */
void nbe_event_clear(struct nbe_event *ev);

/* Whether @name matches ^[a-z0-9][a-z0-9._-]{0,127}$. */
bool nbe_event_name_valid(const char *name);

/* The phase a name implies: ".completed", ".failed", "nuvlabox.<op>" of the
 * six lifecycle operations (started), otherwise none. */
enum nbe_phase nbe_event_phase_for_name(const char *name);

/* Whether @op is one of the six lifecycle operations. */
bool nbe_event_is_lifecycle_op(const char *op, size_t len);

const char *nbe_severity_str(enum nbe_severity s);
int nbe_severity_parse(const char *s, enum nbe_severity *ret);
/* NULL for NBE_PHASE_NONE. */
const char *nbe_phase_str(enum nbe_phase p);
const char *nbe_state_str(enum nbe_state s);
int nbe_state_parse(const char *s, enum nbe_state *ret);

/*
 * Builder for the inputs of `record`: collects name, details and links from
 * untrusted text, validating each piece as it arrives, and produces a
 * complete event with nbe_event_init_capture().
 */
struct nbe_event_input {
	const char *name;
	const char *severity;		 /* NULL = default ("medium") */
	const char *job;		 /* NULL or "job/<id>" */
	const char *parent;		 /* NULL, an href or a device event id */
	const char *message;		 /* NULL or text */
	const char *details_json;	 /* NULL or a JSON object */
	const char *const *detail_pairs; /* NULL-terminated "KEY=VALUE" strings, may be NULL */
	const char *const *links;	 /* NULL-terminated extra hrefs for linked-identifiers */
};

/*
 * Validates @in and fills @ev (which must be zeroed) with a new device event
 * id, the content, and the capture-time clocks (@wall_ms, @boottime_ms,
 * @boot_id, @synced). On failure returns -EINVAL (bad input; -E2BIG/-EMSGSIZE
 * when over a limit; -ENOMEM) with a message in @err, and @ev stays zeroed.
 */
int nbe_event_init_capture(struct nbe_event *ev, const struct nbe_event_input *in, int64_t wall_ms,
			   int64_t boottime_ms, const char *boot_id, bool synced,
			   struct nbe_error *err);

/* Keys of content.resource.content that the agent sets itself. */
bool nbe_event_detail_key_reserved(const char *key);

#endif
