/*
 * nuvlaedge: the device's identity and credential as NuvlaEdge left them in
 * its data directory (NUVLA-CONTRACT §5): nuvlaedge_session.json (clear
 * "credentials", or "irs2": base64 of IV || AES-256-CBC("<key>:<secret>")
 * keyed with SHA-256("<uuid>:")), else the legacy .activated and .context.
 * Read only: NuvlaEdge's files are never written or removed.
 */
#ifndef NBE_NUVLAEDGE_H
#define NBE_NUVLAEDGE_H

#include "error.h"

#include <stdbool.h>

#define NBE_NUVLAEDGE_SESSION  "nuvlaedge_session.json"
#define NBE_NUVLAEDGE_MAX_FILE (64 * 1024)

struct nbe_nuvlaedge_identity {
	char *endpoint;	   /* NULL when the files do not say */
	int insecure;	   /* -1 when the files do not say */
	char *nuvlabox_id; /* "nuvlabox/<uuid>" or NULL */
	char *api_key;	   /* "credential/<uuid>" or NULL */
	char *api_secret;  /* NULL unless api_key is set; wiped by _clear() */
	char source[600];  /* the file it came from */
};

void nbe_nuvlaedge_identity_clear(struct nbe_nuvlaedge_identity *id);

/*
 * Reads what NuvlaEdge left in @dir. Returns 0 with @ret filled (fields may
 * be partial: a NuvlaEdge that is not activated yet has no credential),
 * -ENOENT when none of its files is there, or -EINVAL / -EBADMSG for a
 * corrupt or partial file, with the reason in @err (and nothing in @ret).
 */
int nbe_nuvlaedge_read(const char *dir, struct nbe_nuvlaedge_identity *ret, struct nbe_error *err);

/*
 * The parsing of nbe_nuvlaedge_read(), without the files: @text is the
 * content of nuvlaedge_session.json, named @path in messages. Same returns.
 */
int nbe_nuvlaedge_parse_session(const char *text, const char *path,
				struct nbe_nuvlaedge_identity *ret, struct nbe_error *err);

/*
 * The legacy files of @dir (named in messages): the content of .context and
 * of .activated, each NULL when the file is absent. -ENOENT when both are.
 */
int nbe_nuvlaedge_parse_legacy(const char *context, const char *activated, const char *dir,
			       struct nbe_nuvlaedge_identity *ret, struct nbe_error *err);

#endif
