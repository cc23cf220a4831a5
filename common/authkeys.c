#include "authkeys.h"

#include "alloc.h"
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int nbe_authkeys_check_key(const char *key, struct nbe_sshkey *ret, struct nbe_error *err)
{
	size_t len = key ? strlen(key) : 0;
	int r;

	if (len == 0)
		return nbe_error_set(err, -EINVAL, "the public key is empty");
	if (strpbrk(key, "\r\n"))
		return nbe_error_set(err, -EINVAL, "the public key spans several lines");
	r = nbe_sshkey_parse_line(key, len, ret);
	if (r == -ENOMEM)
		return nbe_error_set(err, r, "out of memory");
	if (r <= 0)
		return nbe_error_set(err, -EINVAL,
				     "not a public key sshd accepts (\"type base64 [comment]\")");
	if (ret->has_options)
		return nbe_error_set(err, -EINVAL,
				     "the public key carries authorized_keys options; refused");
	return 0;
}

/* Appends @n bytes of @s to the growing text. */
static int put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t ncap = (*len + n + 1) * 2;
		char *nb = nbe_realloc(*buf, ncap);
		if (!nb)
			return -ENOMEM;
		*buf = nb;
		*cap = ncap;
	}
	memcpy(*buf + *len, s, n);
	*len += n;
	(*buf)[*len] = '\0';
	return 0;
}

int nbe_authkeys_edit(const char *text, size_t len, const char *key, bool add, char **ret_text,
		      size_t *ret_len, bool *ret_changed, struct nbe_error *err)
{
	struct nbe_sshkey want, have;
	const char *p = text, *end = text + len;
	char *out = NULL;
	size_t olen = 0, cap = 0;
	bool found = false;
	int r;

	*ret_text = NULL;
	*ret_len = 0;
	*ret_changed = false;
	r = nbe_authkeys_check_key(key, &want, err);
	if (r < 0)
		return r;
	if (len > NBE_AUTHKEYS_MAX_FILE)
		return nbe_error_set(err, -E2BIG, "larger than %d bytes", NBE_AUTHKEYS_MAX_FILE);
	r = put(&out, &olen, &cap, "", 0);
	while (r == 0 && p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t llen = nl ? (size_t)(nl - p) : (size_t)(end - p);
		size_t with_nl = nl ? llen + 1 : llen;
		int k = nbe_sshkey_parse_line(p, llen, &have);

		if (k == -ENOMEM) {
			r = k;
			break;
		}
		if (k == 1 && strcmp(have.fingerprint, want.fingerprint) == 0) {
			found = true;
			if (!add) {
				p += with_nl; /* revoked: the line goes */
				continue;
			}
		}
		r = put(&out, &olen, &cap, p, with_nl);
		p += with_nl;
	}
	if (r == 0 && add && !found) {
		if (olen > 0 && out[olen - 1] != '\n')
			r = put(&out, &olen, &cap, "\n", 1);
		if (r == 0)
			r = put(&out, &olen, &cap, key, strlen(key));
		if (r == 0)
			r = put(&out, &olen, &cap, "\n", 1);
	}
	if (r < 0) {
		nbe_free(out);
		return nbe_error_set(err, r, "out of memory");
	}
	*ret_changed = add ? !found : found;
	*ret_text = out;
	*ret_len = olen;
	return 0;
}

int nbe_authkeys_update(const char *path, const char *key, bool add, bool *ret_changed,
			struct nbe_error *err)
{
	struct stat st;
	char *text = NULL, *out = NULL;
	size_t len = 0, olen = 0;
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1;
	mode_t mode = 0600;
	int r;

	*ret_changed = false;
	if (lstat(path, &st) == 0) {
		if (!S_ISREG(st.st_mode))
			return nbe_error_set(
				err, -EINVAL,
				"%s is not a regular file (a symbolic link?); refusing "
				"to replace it",
				path);
		uid = st.st_uid;
		gid = st.st_gid;
		mode = st.st_mode & 07777;
		r = nbe_read_file(path, NBE_AUTHKEYS_MAX_FILE, &text, &len);
		if (r < 0)
			return nbe_error_set(err, r, "%s: %s", path,
					     r == -EFBIG ? "larger than 1 MiB" : strerror(-r));
	} else if (errno != ENOENT) {
		r = -errno;
		return nbe_error_set(err, r, "%s: %s", path, strerror(-r));
	} else if (!add) {
		return 0; /* nothing to revoke */
	}
	r = nbe_authkeys_edit(text ? text : "", len, key, add, &out, &olen, ret_changed, err);
	if (r == 0 && *ret_changed) {
		r = uid == (uid_t)-1 ? nbe_write_file_atomic(path, out, olen, mode)
				     : nbe_replace_file_as(path, out, olen, mode, uid, gid);
		if (r < 0) {
			*ret_changed = false;
			nbe_error_set(err, r, "%s: cannot replace it: %s", path, strerror(-r));
		}
	} else if (r < 0) {
		char why[NBE_ERROR_MAX];
		snprintf(why, sizeof(why), "%s", err ? err->msg : "");
		nbe_error_set(err, r, "%s: %s", path, why);
	}
	nbe_free(text);
	nbe_free(out);
	return r;
}
