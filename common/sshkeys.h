/*
 * sshkeys: authorized_keys lines as OpenSSH's sshd reads them (options,
 * quoted strings, key types including ecdsa, sk-* and certificates) and
 * the SHA256 fingerprint exactly as `ssh-keygen -l` prints it. Never keeps
 * the key itself.
 */
#ifndef NBE_SSHKEYS_H
#define NBE_SSHKEYS_H

#include <stdbool.h>
#include <stddef.h>

#define NBE_SSH_LINE_MAX 16384

struct nbe_sshkey {
	char type[64];	      /* "ssh-ed25519", "ecdsa-sha2-nistp256", ... */
	char fingerprint[64]; /* "SHA256:<43 base64 characters>" */
	char comment[256];    /* may be empty; cut at 255 bytes */
	bool has_options;
};

/* Whether @type is a key type OpenSSH accepts in authorized_keys. */
bool nbe_sshkey_type_known(const char *type, size_t len);

/*
 * Parses one line (without its newline). Returns 1 with @ret filled for a
 * key, 0 for a blank or comment line, -EINVAL for a line sshd would ignore
 * as malformed (unknown type, bad base64, a blob of another type), -ENOMEM.
 */
int nbe_sshkey_parse_line(const char *line, size_t len, struct nbe_sshkey *ret);

/*
 * Parses the @len bytes of an authorized_keys file into @keys (at most @max,
 * in file order; a key already seen, by fingerprint, is not repeated; lines
 * sshd would ignore are skipped). *ret_n is the count. Returns 0 or -ENOMEM.
 */
int nbe_sshkeys_parse(const char *text, size_t len, struct nbe_sshkey *keys, size_t max,
		      size_t *ret_n);

#endif
