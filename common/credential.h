/*
 * credential: the api-key credential `nuvlabox-event activate` obtained
 * (DESIGN §6.3). Nuvla returns the secret exactly once (NUVLA-CONTRACT §4),
 * so it is written atomically and durably, mode 0600, before anything else
 * happens: {"nuvlabox-id":..., "api-key":"credential/<uuid>",
 * "secret-key":...} in the state directory.
 */
#ifndef NBE_CREDENTIAL_H
#define NBE_CREDENTIAL_H

#include "error.h"

#include <stddef.h>

#define NBE_CREDENTIAL_FILE "credential.json"
#define NBE_CREDENTIAL_MAX  4096

struct nbe_credential {
	char *nuvlabox_id; /* "nuvlabox/<uuid>" */
	char *api_key;	   /* "credential/<uuid>" */
	char *api_secret;  /* wiped by _clear() */
};

/* Wipes the secret and frees everything. Accepts NULL. */
void nbe_credential_clear(struct nbe_credential *c);

/*
 * Parses an activate response ({"api-key":..., "secret-key":...}) or the
 * file's text. @nuvlabox_id is required in the file only (pass NULL to
 * accept its absence). Returns 0 with @ret filled, -EBADMSG (not such a
 * document; the reason in @err, never the secret), or -ENOMEM.
 */
int nbe_credential_parse(const char *text, size_t len, struct nbe_credential *ret,
			 struct nbe_error *err);

/*
 * Writes @c to @path: temporary file, fsync, rename, fsync of the directory,
 * mode 0600. On failure @path is untouched. Returns 0 or -errno (@err).
 */
int nbe_credential_write(const char *path, const struct nbe_credential *c, struct nbe_error *err);

/*
 * Reads @path. Returns 0 with @ret filled, -ENOENT when there is none,
 * -EPERM when group or others may read it (refused, as ssh refuses such
 * keys), -EBADMSG when it is not a credential, or -errno; @err says which.
 */
int nbe_credential_read(const char *path, struct nbe_credential *ret, struct nbe_error *err);

#endif
