/*
 * authkeys: adding and removing one public key in an authorized_keys file
 * for the ssh-key jobs (DESIGN §6.3): the key is validated as sshd would
 * read it, a key already present is not added twice, every other line
 * (comments, options, blank lines, keys sshd would ignore) stays byte for
 * byte, and the file is replaced atomically with its owner and mode.
 */
#ifndef NBE_AUTHKEYS_H
#define NBE_AUTHKEYS_H

#include "error.h"
#include "sshkeys.h"

#include <stdbool.h>
#include <stddef.h>

#define NBE_AUTHKEYS_MAX_FILE (1024 * 1024)

/*
 * Checks a public key as Nuvla hands it over ("type base64 [comment]", one
 * line, no options) and fills @ret. Returns 0, or -EINVAL with the reason in
 * @err (never the key itself).
 */
int nbe_authkeys_check_key(const char *key, struct nbe_sshkey *ret, struct nbe_error *err);

/*
 * Edits the text of an authorized_keys file in memory: with @add, appends
 * @key (checked) unless a line already holds the same key (same
 * fingerprint, with or without options); without, drops every line that
 * holds it. *ret_text is the new text (nbe_free()), *ret_changed whether it
 * differs. Returns 0, -EINVAL (@err), -E2BIG or -ENOMEM.
 */
int nbe_authkeys_edit(const char *text, size_t len, const char *key, bool add, char **ret_text,
		      size_t *ret_len, bool *ret_changed, struct nbe_error *err);

/*
 * Applies nbe_authkeys_edit() to the file @path (absolute), working through
 * an fd of its directory so that nothing is followed that the directory's
 * owner could swap in (a symbolic link, a FIFO, a link as the directory
 * itself). A missing file (adding only) is created 0600 for the directory's
 * owner; an existing one is replaced with its owner and mode; a directory
 * that belongs to neither root nor the file's owner is refused. The file is
 * only rewritten when the key list changes. Returns 0 or -errno (@err).
 */
int nbe_authkeys_update(const char *path, const char *key, bool add, bool *ret_changed,
			struct nbe_error *err);

#endif
