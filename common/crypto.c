#include "crypto.h"

#include "alloc.h"
#include "fsutil.h"

#include <errno.h>
#include <mbedtls/aes.h>
#include <mbedtls/base64.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PEM_MAX 4096

const char *nbe_crypto_version(void)
{
	return MBEDTLS_VERSION_STRING;
}

static int mbed_error(struct nbe_error *err, int ret, int mret, const char *what)
{
	char buf[160];

	mbedtls_strerror(mret, buf, sizeof(buf));
	return nbe_error_set(err, ret, "%s: %s", what, buf);
}

struct rng {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
};

static int rng_init(struct rng *r, struct nbe_error *err)
{
	static const unsigned char pers[] = "nuvlabox-event keygen";
	int m;

	mbedtls_entropy_init(&r->entropy);
	mbedtls_ctr_drbg_init(&r->drbg);
	m = mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy, pers,
				  sizeof(pers) - 1);
	return m ? mbed_error(err, -EIO, m, "seeding the random generator") : 0;
}

static void rng_free(struct rng *r)
{
	mbedtls_ctr_drbg_free(&r->drbg);
	mbedtls_entropy_free(&r->entropy);
}

int nbe_crypto_keygen(const char *key_path, const char *csr_path, const char *subject,
		      struct nbe_error *err)
{
	unsigned char key_pem[PEM_MAX], csr_pem[PEM_MAX];
	mbedtls_x509write_csr csr;
	mbedtls_pk_context key;
	struct rng rng;
	int m, r;

	if (access(key_path, F_OK) == 0)
		return nbe_error_set(err, -EEXIST, "%s exists already; not overwriting a key",
				     key_path);
	mbedtls_pk_init(&key);
	mbedtls_x509write_csr_init(&csr);
	r = rng_init(&rng, err);
	if (r < 0)
		goto out;
	m = mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
	if (!m)
		m = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key),
					mbedtls_ctr_drbg_random, &rng.drbg);
	if (m) {
		r = mbed_error(err, -EIO, m, "generating an EC P-256 key");
		goto out;
	}
	m = mbedtls_pk_write_key_pem(&key, key_pem, sizeof(key_pem));
	if (m) {
		r = mbed_error(err, -EIO, m, "encoding the key");
		goto out;
	}
	mbedtls_x509write_csr_set_md_alg(&csr, MBEDTLS_MD_SHA256);
	mbedtls_x509write_csr_set_key(&csr, &key);
	m = mbedtls_x509write_csr_set_subject_name(&csr, subject);
	if (m) {
		r = mbed_error(err, -EINVAL, m, "subject");
		goto out;
	}
	m = mbedtls_x509write_csr_pem(&csr, csr_pem, sizeof(csr_pem), mbedtls_ctr_drbg_random,
				      &rng.drbg);
	if (m) {
		r = mbed_error(err, -EIO, m, "writing the CSR");
		goto out;
	}
	r = nbe_write_file_atomic(key_path, key_pem, strlen((char *)key_pem), 0600);
	if (r < 0) {
		nbe_error_set(err, r, "%s: %s", key_path, strerror(-r));
		goto out;
	}
	r = nbe_write_file_atomic(csr_path, csr_pem, strlen((char *)csr_pem), 0644);
	if (r < 0)
		nbe_error_set(err, r, "%s: %s", csr_path, strerror(-r));
out:
	mbedtls_platform_zeroize(key_pem, sizeof(key_pem));
	mbedtls_x509write_csr_free(&csr);
	mbedtls_pk_free(&key);
	rng_free(&rng);
	return r;
}

static int64_t x509_time_to_epoch(const mbedtls_x509_time *t)
{
	struct tm tm = { 0 };

	tm.tm_year = t->year - 1900;
	tm.tm_mon = t->mon - 1;
	tm.tm_mday = t->day;
	tm.tm_hour = t->hour;
	tm.tm_min = t->min;
	tm.tm_sec = t->sec;
	return (int64_t)timegm(&tm);
}

int nbe_crypto_cert_info(const char *path, struct nbe_cert_info *ret, struct nbe_error *err)
{
	struct nbe_cert_info info = { 0 };
	mbedtls_x509_crt crt;
	int m;

	mbedtls_x509_crt_init(&crt);
	m = mbedtls_x509_crt_parse_file(&crt, path);
	if (m) {
		int r = mbed_error(err, m == MBEDTLS_ERR_PK_FILE_IO_ERROR ? -ENOENT : -EINVAL, m,
				   path);
		mbedtls_x509_crt_free(&crt);
		return r;
	}
	info.not_before = x509_time_to_epoch(&crt.valid_from);
	info.not_after = x509_time_to_epoch(&crt.valid_to);
	mbedtls_x509_dn_gets(info.subject, sizeof(info.subject), &crt.subject);
	mbedtls_x509_dn_gets(info.issuer, sizeof(info.issuer), &crt.issuer);
	mbedtls_x509_crt_free(&crt);
	*ret = info;
	return 0;
}

int nbe_crypto_key_matches(const char *cert_path, const char *key_path, struct nbe_error *err)
{
	mbedtls_x509_crt crt;
	mbedtls_pk_context key;
	struct rng rng;
	int m, r = 0;

	mbedtls_x509_crt_init(&crt);
	mbedtls_pk_init(&key);
	r = rng_init(&rng, err);
	if (r < 0)
		goto out;
	m = mbedtls_x509_crt_parse_file(&crt, cert_path);
	if (m) {
		r = mbed_error(err, -EINVAL, m, cert_path);
		goto out;
	}
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
	m = mbedtls_pk_parse_keyfile(&key, key_path, NULL, mbedtls_ctr_drbg_random, &rng.drbg);
#else
	m = mbedtls_pk_parse_keyfile(&key, key_path, NULL);
#endif
	if (m) {
		r = mbed_error(err, -EINVAL, m, key_path);
		goto out;
	}
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
	m = mbedtls_pk_check_pair(&crt.pk, &key, mbedtls_ctr_drbg_random, &rng.drbg);
#else
	m = mbedtls_pk_check_pair(&crt.pk, &key);
#endif
	if (m)
		r = nbe_error_set(err, -EKEYREJECTED, "%s does not belong to %s", key_path,
				  cert_path);
out:
	mbedtls_pk_free(&key);
	mbedtls_x509_crt_free(&crt);
	rng_free(&rng);
	return r;
}

void nbe_crypto_sha256(const void *data, size_t len, unsigned char out[32])
{
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
	mbedtls_sha256(data, len, out, 0);
#else
	mbedtls_sha256_ret(data, len, out, 0);
#endif
}

int nbe_base64_decode(const char *in, size_t inlen, unsigned char **ret, size_t *ret_len)
{
	size_t need = 0;
	unsigned char *out;
	int m = mbedtls_base64_decode(NULL, 0, &need, (const unsigned char *)in, inlen);

	if (m == MBEDTLS_ERR_BASE64_INVALID_CHARACTER)
		return -EINVAL;
	out = nbe_malloc(need + 1);
	if (!out)
		return -ENOMEM;
	m = mbedtls_base64_decode(out, need + 1, &need, (const unsigned char *)in, inlen);
	if (m) {
		nbe_free(out);
		return -EINVAL;
	}
	*ret = out;
	*ret_len = need;
	return 0;
}

int nbe_base64_encode(const unsigned char *in, size_t len, bool pad, char **ret)
{
	size_t need = 0, n;
	unsigned char *out;

	mbedtls_base64_encode(NULL, 0, &need, in, len);
	out = nbe_malloc(need + 1);
	if (!out)
		return -ENOMEM;
	if (mbedtls_base64_encode(out, need + 1, &n, in, len) != 0) {
		nbe_free(out);
		return -EINVAL;
	}
	out[n] = '\0';
	while (!pad && n > 0 && out[n - 1] == '=')
		out[--n] = '\0';
	*ret = (char *)out;
	return 0;
}

int nbe_crypto_aes256cbc_decrypt(const unsigned char key[32], const unsigned char iv[16],
				 const unsigned char *in, size_t len, unsigned char **ret,
				 size_t *ret_len)
{
	unsigned char ivc[16], *out, padv;
	mbedtls_aes_context aes;
	int m;

	if (len == 0 || len % 16 != 0)
		return -EBADMSG;
	out = nbe_malloc(len);
	if (!out)
		return -ENOMEM;
	memcpy(ivc, iv, 16);
	mbedtls_aes_init(&aes);
	m = mbedtls_aes_setkey_dec(&aes, key, 256);
	if (!m)
		m = mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_DECRYPT, len, ivc, in, out);
	mbedtls_aes_free(&aes);
	padv = out[len - 1];
	if (m || padv == 0 || padv > 16) {
		mbedtls_platform_zeroize(out, len);
		nbe_free(out);
		return -EBADMSG;
	}
	for (size_t i = len - padv; i < len; i++) {
		if (out[i] != padv) {
			mbedtls_platform_zeroize(out, len);
			nbe_free(out);
			return -EBADMSG;
		}
	}
	*ret = out;
	*ret_len = len - padv;
	return 0;
}
