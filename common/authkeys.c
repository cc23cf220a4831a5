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
		/* sshd reads a line as a C string: a NUL ends it */
		int k = nbe_sshkey_parse_line(p, strnlen(p, llen), &have);

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

/* Opens the directory of @path without following a symbolic link as its
 * last component; *ret_base points into @path. Returns the fd or -errno. */
static int open_dir(const char *path, const char **ret_base, struct nbe_error *err)
{
	const char *slash = strrchr(path, '/');
	char *dir;
	int dfd, e;

	if (!slash || !slash[1])
		return nbe_error_set(err, -EINVAL, "%s: not an absolute file path", path);
	dir = slash == path ? nbe_strdup("/") : nbe_strndup(path, (size_t)(slash - path));
	if (!dir)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	e = errno;
	if (dfd < 0)
		nbe_error_set(err, -e, "%s: %s", dir,
			      e == ELOOP || e == ENOTDIR
				      ? "not a directory (a symbolic link?); refused"
				      : strerror(e));
	nbe_free(dir);
	*ret_base = slash + 1;
	if (dfd < 0)
		return -e;
	return dfd;
}

int nbe_authkeys_update(const char *path, const char *key, bool add, bool *ret_changed,
			struct nbe_error *err)
{
	struct stat dst, st;
	const char *base = NULL;
	char *text = NULL, *out = NULL;
	size_t len = 0, olen = 0;
	int dfd, fd, r;

	*ret_changed = false;
	dfd = open_dir(path, &base, err);
	if (dfd < 0)
		return dfd;
	if (fstat(dfd, &dst) != 0) {
		r = nbe_error_set(err, -errno, "%s: %s", path, strerror(errno));
		goto out;
	}
	/* everything through the directory's fd, never the path again: the
	 * directory's owner may swap the file for a link or a FIFO meanwhile */
	fd = openat(dfd, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd >= 0) {
		if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
			close(fd);
			r = nbe_error_set(err, -EINVAL, "%s is not a regular file; refused", path);
			goto out;
		}
		r = nbe_read_fd(fd, NBE_AUTHKEYS_MAX_FILE, &text, &len);
		close(fd);
		if (r < 0) {
			nbe_error_set(err, r, "%s: %s", path,
				      r == -EFBIG ? "larger than 1 MiB" : strerror(-r));
			goto out;
		}
	} else if (errno == ENOENT) {
		if (!add) {
			r = 0; /* nothing to revoke */
			goto out;
		}
		/* a new file belongs to the directory's owner, as sshd wants it */
		st.st_uid = dst.st_uid;
		st.st_gid = dst.st_gid;
		st.st_mode = 0600;
	} else {
		r = -errno;
		nbe_error_set(err, r, "%s: %s", path,
			      r == -ELOOP ? "a symbolic link; refused" : strerror(-r));
		goto out;
	}
	if (dst.st_uid != 0 && dst.st_uid != st.st_uid) {
		r = nbe_error_set(
			err, -EPERM,
			"%s: its directory belongs to uid %u, the file to uid %u; refused", path,
			(unsigned)dst.st_uid, (unsigned)st.st_uid);
		goto out;
	}
	r = nbe_authkeys_edit(text ? text : "", len, key, add, &out, &olen, ret_changed, err);
	if (r == 0 && *ret_changed) {
		r = nbe_replace_at(dfd, base, out, olen, st.st_mode & 07777, st.st_uid, st.st_gid);
		if (r < 0) {
			*ret_changed = false;
			nbe_error_set(err, r, "%s: cannot replace it: %s", path, strerror(-r));
		}
	} else if (r < 0) {
		char why[NBE_ERROR_MAX];
		snprintf(why, sizeof(why), "%s", err ? err->msg : "");
		nbe_error_set(err, r, "%s: %s", path, why);
	}
out:
	close(dfd);
	nbe_free(text);
	nbe_free(out);
	return r;
}
