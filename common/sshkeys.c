#include "sshkeys.h"

#include "alloc.h"
#include "crypto.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *const key_types[] = {
	"ssh-ed25519",
	"ssh-rsa",
	"ssh-dss",
	"ecdsa-sha2-nistp256",
	"ecdsa-sha2-nistp384",
	"ecdsa-sha2-nistp521",
	"sk-ssh-ed25519@openssh.com",
	"sk-ecdsa-sha2-nistp256@openssh.com",
	"ssh-ed448",
	"ssh-ed25519-cert-v01@openssh.com",
	"ssh-rsa-cert-v01@openssh.com",
	"ssh-dss-cert-v01@openssh.com",
	"ecdsa-sha2-nistp256-cert-v01@openssh.com",
	"ecdsa-sha2-nistp384-cert-v01@openssh.com",
	"ecdsa-sha2-nistp521-cert-v01@openssh.com",
	"sk-ssh-ed25519-cert-v01@openssh.com",
	"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
};

bool nbe_sshkey_type_known(const char *type, size_t len)
{
	for (size_t i = 0; i < sizeof(key_types) / sizeof(key_types[0]); i++) {
		if (strlen(key_types[i]) == len && memcmp(key_types[i], type, len) == 0)
			return true;
	}
	return false;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* The length of the next whitespace-free word at @p (within @end). */
static size_t word_len(const char *p, const char *end)
{
	const char *q = p;

	while (q < end && !is_space(*q))
		q++;
	return (size_t)(q - p);
}

/* Skips an options field as sshd does: up to the first unquoted blank;
 * inside double quotes, \" does not end the string. NULL if a quote is
 * never closed. */
static const char *skip_options(const char *p, const char *end)
{
	bool quoted = false;

	for (; p < end; p++) {
		if (!quoted && is_space(*p))
			return p;
		if (*p == '\\' && quoted && p + 1 < end && p[1] == '"')
			p++;
		else if (*p == '"')
			quoted = !quoted;
	}
	return quoted ? NULL : p;
}

/* The type string inside an ssh key blob (uint32 length, then the name). */
static bool blob_type_is(const unsigned char *blob, size_t n, const char *type, size_t tlen)
{
	size_t l;

	if (n < 4)
		return false;
	l = (size_t)blob[0] << 24 | (size_t)blob[1] << 16 | (size_t)blob[2] << 8 | blob[3];
	return l == tlen && n >= 4 + l && memcmp(blob + 4, type, tlen) == 0;
}

int nbe_sshkey_parse_line(const char *line, size_t len, struct nbe_sshkey *ret)
{
	const char *p = line, *end = line + len, *type, *b64;
	struct nbe_sshkey k = { 0 };
	unsigned char *blob = NULL, digest[32];
	char *enc = NULL;
	size_t tlen, blen, bloblen;
	int r;

	while (p < end && is_space(*p))
		p++;
	while (end > p && (end[-1] == '\r' || is_space(end[-1])))
		end--;
	if (p == end || *p == '#')
		return 0;
	if (len > NBE_SSH_LINE_MAX)
		return -EINVAL;
	tlen = word_len(p, end);
	if (!nbe_sshkey_type_known(p, tlen)) {
		/* options first */
		p = skip_options(p, end);
		if (!p)
			return -EINVAL;
		while (p < end && is_space(*p))
			p++;
		tlen = word_len(p, end);
		if (!nbe_sshkey_type_known(p, tlen))
			return -EINVAL;
		k.has_options = true;
	}
	type = p;
	p += tlen;
	while (p < end && is_space(*p))
		p++;
	b64 = p;
	blen = word_len(p, end);
	if (blen == 0)
		return -EINVAL;
	p += blen;
	while (p < end && is_space(*p))
		p++;
	r = nbe_base64_decode(b64, blen, &blob, &bloblen);
	if (r < 0)
		return r;
	if (!blob_type_is(blob, bloblen, type, tlen)) {
		nbe_free(blob);
		return -EINVAL;
	}
	nbe_crypto_sha256(blob, bloblen, digest);
	nbe_free(blob);
	r = nbe_base64_encode(digest, sizeof(digest), false, &enc);
	if (r < 0)
		return r;
	snprintf(k.fingerprint, sizeof(k.fingerprint), "SHA256:%s", enc);
	nbe_free(enc);
	snprintf(k.type, sizeof(k.type), "%.*s", (int)tlen, type);
	snprintf(k.comment, sizeof(k.comment), "%.*s", (int)(end - p), p);
	*ret = k;
	return 1;
}

int nbe_sshkeys_parse(const char *text, size_t len, struct nbe_sshkey *keys, size_t max,
		      size_t *ret_n)
{
	const char *p = text, *end = text + len;
	size_t n = 0;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t line_len = nl ? (size_t)(nl - p) : (size_t)(end - p);
		struct nbe_sshkey k;
		bool dup = false;
		int r;

		/* sshd reads a line as a C string: a NUL ends it */
		r = nbe_sshkey_parse_line(p, strnlen(p, line_len), &k);
		p += line_len + (nl ? 1 : 0);
		if (r == -ENOMEM)
			return r;
		if (r != 1)
			continue; /* sshd ignores what it cannot read */
		for (size_t i = 0; i < n && !dup; i++)
			dup = strcmp(keys[i].fingerprint, k.fingerprint) == 0;
		if (!dup && n < max)
			keys[n++] = k;
	}
	*ret_n = n;
	return 0;
}
