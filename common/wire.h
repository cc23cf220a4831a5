/*
 * wire: the exact `POST /api/event` body of an event (DESIGN §3, contract),
 * within Nuvla's closed event schema (NUVLA-CONTRACT §3) and nothing else.
 */
#ifndef NBE_WIRE_H
#define NBE_WIRE_H

#include "error.h"
#include "event.h"

#include <stdbool.h>
#include <stdint.h>

/* 2020-01-01T00:00:00Z: no true timestamp of a device event is older. */
#define NBE_WIRE_MIN_VALID_MS INT64_C(1577836800000)
/* How far ahead of a synchronised clock a timestamp may be. */
#define NBE_WIRE_MAX_AHEAD_MS (5 * 60 * 1000)

#define NBE_TIMESTAMP_LEN 24 /* "2026-03-01T10:15:42.123Z" */

struct nbe_wire_ctx {
	const char *nuvlabox_id;   /* "nuvlabox/<uuid>", required */
	const char *owner;	   /* "user/<uuid>" or NULL when unknown */
	const char *agent_version; /* required */
	const char *parent_href;   /* the resolved parent, or NULL for none */
	int64_t now_ms;		   /* the uploader's wall clock... */
	bool now_synced;	   /* ...and whether it is synchronised */
	int64_t restamp_ms;	   /* > 0: corrected capture time (DESIGN §5 Clock) */
};

/*
 * Formats @ms since the epoch as "YYYY-MM-DDTHH:MM:SS.mmmZ" into @out
 * (NBE_TIMESTAMP_LEN + 1 bytes). Returns 0, or -ERANGE for years outside
 * 1970..9999.
 */
int nbe_wire_timestamp(int64_t ms, char out[NBE_TIMESTAMP_LEN + 1]);

/*
 * Builds the body for @ev in @ctx. On success *ret_body is a new
 * NUL-terminated compact JSON text (nbe_free()). Returns -EINVAL when the
 * context is incomplete (no nuvlabox id), -EMSGSIZE over NBE_WIRE_MAX, or
 * -ENOMEM; with a message in @err.
 */
int nbe_wire_build(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx, char **ret_body,
		   struct nbe_error *err);

/*
 * Whether @ev, once uploaded, fits in NBE_WIRE_MAX whatever the context: its
 * body is built with the longest nuvlabox id, owner and parent there can be.
 * Returns 0, -EMSGSIZE (with a message in @err) or -ENOMEM. Every event is
 * checked before it is buffered, so none is stored that could never be sent.
 */
int nbe_wire_check_fits(const struct nbe_event *ev, struct nbe_error *err);

/* The `clock` value the body will carry: "synced", "corrected", "unsynced" or "invalid". */
const char *nbe_wire_clock_state(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx);

#endif
