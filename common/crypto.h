/*
 * crypto: the agent's own cryptography, all of it through mbedTLS and all of
 * it in this module (mbedTLS 2.28 on Debian 12 and 3.x differ): device key
 * and CSR generation, certificate inspection (expiry, key/certificate match).
 */
#ifndef NBE_CRYPTO_H
#define NBE_CRYPTO_H

#include "error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The mbedTLS version the agent was built with ("2.28.3"). */
const char *nbe_crypto_version(void);

/*
 * Makes an EC P-256 private key and a certificate signing request for
 * @subject ("CN=nuvlabox/<uuid>", X.509 name syntax). The key is written to
 * @key_path with mode 0600 and the CSR to @csr_path (0644), each atomically.
 * Refuses (-EEXIST) to overwrite an existing key. Returns 0 or -errno.
 */
int nbe_crypto_keygen(const char *key_path, const char *csr_path, const char *subject,
		      struct nbe_error *err);

struct nbe_cert_info {
	int64_t not_before; /* seconds since the epoch */
	int64_t not_after;
	char subject[256];
	char issuer[256];
};

/* Reads the first certificate of the PEM or DER file @path. */
int nbe_crypto_cert_info(const char *path, struct nbe_cert_info *ret, struct nbe_error *err);

/* Whether the private key in @key_path belongs to the certificate in
 * @cert_path: 0 when it does, -EKEYREJECTED when not, or -errno. */
int nbe_crypto_key_matches(const char *cert_path, const char *key_path, struct nbe_error *err);

/* SHA-256 of @len bytes. */
void nbe_crypto_sha256(const void *data, size_t len, unsigned char out[32]);

/* Base64 (RFC 4648, with padding). decode: *ret is new (nbe_free()), -EINVAL
 * for bad input. encode: *ret is a new NUL-terminated string; @pad false
 * drops the trailing '=' (as ssh-keygen prints fingerprints). */
int nbe_base64_decode(const char *in, size_t inlen, unsigned char **ret, size_t *ret_len);
int nbe_base64_encode(const unsigned char *in, size_t len, bool pad, char **ret);

/*
 * AES-256-CBC decryption with PKCS#7 padding removed: @in (a multiple of 16
 * bytes) with @key and @iv. *ret is new (wipe and free it), *ret_len its
 * length. -EBADMSG when the padding is wrong (a wrong key, most likely).
 */
int nbe_crypto_aes256cbc_decrypt(const unsigned char key[32], const unsigned char iv[16],
				 const unsigned char *in, size_t len, unsigned char **ret,
				 size_t *ret_len);

#endif
