/*
 * ids: device event ids (random UUID v4) and Nuvla resource references
 * ("job/<uuid>", "event/<uuid>", ...): making, checking, normalising.
 */
#ifndef NBE_IDS_H
#define NBE_IDS_H

#include <stdbool.h>
#include <stddef.h>

#define NBE_UUID_LEN 36
#define NBE_HREF_MAX 128

/* Writes a new random UUID v4 (lower case, 37 bytes with NUL) to @ret.
 * Returns 0 or -errno (no randomness available). */
int nbe_uuid_v4(char ret[NBE_UUID_LEN + 1]);

/* Whether @s is exactly a UUID in 8-4-4-4-12 hex form (any case). */
bool nbe_uuid_valid(const char *s);

/*
 * Whether @s is a Nuvla resource href as the event schema accepts for
 * `parent`: ^[a-z]([a-z-]*[a-z])?(/[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?)?$
 * and at most NBE_HREF_MAX bytes. With @require_id the "/<id>" part must be
 * present.
 */
bool nbe_href_valid(const char *s, bool require_id);

/* Whether @s has the resource type @type ("job" for "job/..."), and a valid id. */
bool nbe_href_is(const char *s, const char *type);

/* Whether @s is an ACL principal: ^[a-z-]+/[a-z0-9-]+$ */
bool nbe_principal_valid(const char *s);

/*
 * Normalises a nuvlabox id the way NuvlaEdge does: a bare uuid gets the
 * "nuvlabox/" prefix and upper-case hex becomes lower case. Returns a new
 * string (nbe_free()) or NULL when @s is neither "<uuid>" nor
 * "nuvlabox/<uuid>" or on allocation failure.
 */
char *nbe_nuvlabox_id_normalize(const char *s);

#endif
