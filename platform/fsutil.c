#include "fsutil.h"

#include "alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int nbe_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) != 0)
		r = -errno;
	close(fd);
	return r;
}

int nbe_fsync_parent_dir(const char *file_path)
{
	const char *slash = strrchr(file_path, '/');
	char *dir;
	int r;

	if (!slash)
		return nbe_fsync_dir(".");
	if (slash == file_path)
		return nbe_fsync_dir("/");
	dir = nbe_strndup(file_path, (size_t)(slash - file_path));
	if (!dir)
		return -ENOMEM;
	r = nbe_fsync_dir(dir);
	nbe_free(dir);
	return r;
}

int nbe_mkdir_exist_ok(const char *path, mode_t mode)
{
	struct stat st;

	if (mkdir(path, mode) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	if (stat(path, &st) != 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int nbe_read_file(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0) {
		r = -errno;
		goto err_close;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		goto err_close;
	}
	buf = nbe_malloc(max_bytes + 1);
	if (!buf) {
		r = -ENOMEM;
		goto err_close;
	}
	/* read up to max_bytes + 1 so a file that grew past the cap is seen */
	for (;;) {
		ssize_t n = read(fd, buf + len, max_bytes + 1 - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			goto err_free;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max_bytes) {
			r = -EFBIG;
			goto err_free;
		}
	}
	close(fd);
	buf[len] = '\0';
	*ret_data = buf;
	*ret_len = len;
	return 0;

err_free:
	nbe_free(buf);
err_close:
	close(fd);
	return r;
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The owner a new file gets: @uid/@gid, or the directory's (-1). */
static int set_owner(int fd, const char *path, uid_t uid, gid_t gid)
{
	if (uid == (uid_t)-1)
		return nbe_chown_like_parent(fd, path);
	return fchown(fd, uid, gid) == 0 ? 0 : -errno;
}

static int write_atomic(const char *path, const void *data, size_t len, mode_t mode, uid_t uid,
			gid_t gid);

int nbe_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
	return write_atomic(path, data, len, mode, (uid_t)-1, (gid_t)-1);
}

int nbe_replace_file_as(const char *path, const void *data, size_t len, mode_t mode, uid_t uid,
			gid_t gid)
{
	return write_atomic(path, data, len, mode, uid, gid);
}

static int write_atomic(const char *path, const void *data, size_t len, mode_t mode, uid_t uid,
			gid_t gid)
{
	size_t tlen = strlen(path) + sizeof(".tmp.XXXXXX");
	char *tmp = nbe_malloc(tlen);
	int fd, r;

	if (!tmp)
		return -ENOMEM;
	snprintf(tmp, tlen, "%s.tmp.XXXXXX", path);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		goto err_free;
	}
	if (fchmod(fd, mode) != 0) {
		r = -errno;
		goto err_unlink;
	}
	r = set_owner(fd, path, uid, gid);
	if (r < 0)
		goto err_unlink;
	r = write_all(fd, data, len);
	if (r < 0)
		goto err_unlink;
	if (fsync(fd) != 0) {
		r = -errno;
		goto err_unlink;
	}
	if (close(fd) != 0) {
		fd = -1;
		r = -errno;
		goto err_unlink;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		r = -errno;
		goto err_unlink;
	}
	nbe_free(tmp);
	return nbe_fsync_parent_dir(path);

err_unlink:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
err_free:
	nbe_free(tmp);
	return r;
}

char *nbe_path_join(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *p;

	while (dl > 1 && dir[dl - 1] == '/')
		dl--;
	p = nbe_malloc(dl + 1 + nl + 1);
	if (!p)
		return NULL;
	memcpy(p, dir, dl);
	p[dl] = '/';
	memcpy(p + dl + 1, name, nl + 1);
	return p;
}

int nbe_chown_like_parent(int fd, const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir;
	struct stat st;
	int r = 0;

	if (geteuid() != 0)
		return 0;
	dir = slash ? nbe_strndup(path, slash == path ? 1 : (size_t)(slash - path))
		    : nbe_strdup(".");
	if (!dir)
		return -ENOMEM;
	if (stat(dir, &st) != 0)
		r = -errno;
	else if (fchown(fd, st.st_uid, st.st_gid) != 0)
		r = -errno;
	nbe_free(dir);
	return r;
}

int nbe_lock_try(const char *path, mode_t mode, int *ret_fd)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode);

	/* a group member may only read it: flock works on a read-only fd */
	if (fd < 0 && errno == EACCES)
		fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	/* the mode must not depend on a umask (the unit's is 0027); only the
	 * owner can change it, which is fine when it is someone else */
	fchmod(fd, mode);
	nbe_chown_like_parent(fd, path);
	while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int e = errno;
		if (e == EINTR)
			continue;
		close(fd);
		return e == EWOULDBLOCK ? -EWOULDBLOCK : -e;
	}
	*ret_fd = fd;
	return 0;
}
