#include "fsutil.h"

#include "alloc.h"
#include "random.h"

#include <errno.h>
#include <limits.h>
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

/* Opens the directory that holds @file_path. Returns the fd or -errno. */
static int open_parent_dir(const char *file_path)
{
	const char *slash = strrchr(file_path, '/');
	char *dir;
	int fd;

	if (!slash || slash == file_path)
		dir = nbe_strdup(slash ? "/" : ".");
	else
		dir = nbe_strndup(file_path, (size_t)(slash - file_path));
	if (!dir)
		return -ENOMEM;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	fd = fd < 0 ? -errno : fd;
	nbe_free(dir);
	return fd;
}

int nbe_fsync_parent_dir(const char *file_path)
{
	int fd = open_parent_dir(file_path), r = 0;

	if (fd < 0)
		return fd;
	if (fsync(fd) != 0)
		r = -errno;
	close(fd);
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

int nbe_read_fd(int fd, size_t max_bytes, char **ret_data, size_t *ret_len)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;

	if (fstat(fd, &st) != 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	buf = nbe_malloc(max_bytes + 1);
	if (!buf)
		return -ENOMEM;
	/* read up to max_bytes + 1 so a file that grew past the cap is seen */
	for (;;) {
		ssize_t n = read(fd, buf + len, max_bytes + 1 - len);
		if (n < 0) {
			int e = errno;
			if (e == EINTR)
				continue;
			nbe_free(buf);
			return -e;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max_bytes) {
			nbe_free(buf);
			return -EFBIG;
		}
	}
	buf[len] = '\0';
	*ret_data = buf;
	*ret_len = len;
	return 0;
}

int nbe_read_file(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY), r;

	if (fd < 0)
		return -errno;
	r = nbe_read_fd(fd, max_bytes, ret_data, ret_len);
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

int nbe_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
	size_t tlen = strlen(path) + sizeof(".tmp.XXXXXX");
	char *tmp = nbe_malloc(tlen);
	int fd, dfd, r;

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
	r = nbe_chown_like_parent(fd, path);
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
	/* everything that can fail for want of memory or fds before the
	 * rename: after it, only the directory's fsync can (an I/O error) */
	dfd = open_parent_dir(path);
	if (dfd < 0) {
		r = dfd;
		goto err_unlink;
	}
	if (rename(tmp, path) != 0) {
		r = -errno;
		close(dfd);
		goto err_unlink;
	}
	nbe_free(tmp);
	r = fsync(dfd) == 0 ? 0 : -errno;
	close(dfd);
	return r;

err_unlink:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
err_free:
	nbe_free(tmp);
	return r;
}

int nbe_replace_at(int dfd, const char *name, const void *data, size_t len, mode_t mode, uid_t uid,
		   gid_t gid)
{
	char tmp[NAME_MAX + 1];
	unsigned char rnd[6];
	int fd = -1, r;

	if (strlen(name) + 20 > NAME_MAX)
		return -ENAMETOOLONG;
	r = nbe_random_bytes(rnd, sizeof(rnd));
	if (r < 0)
		return r;
	snprintf(tmp, sizeof(tmp), ".%s.%02x%02x%02x%02x%02x%02x", name, rnd[0], rnd[1], rnd[2],
		 rnd[3], rnd[4], rnd[5]);
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (fchown(fd, uid, gid) != 0 || fchmod(fd, mode) != 0) {
		r = -errno;
		goto err;
	}
	r = write_all(fd, data, len);
	if (r < 0)
		goto err;
	if (fsync(fd) != 0) {
		r = -errno;
		goto err;
	}
	r = close(fd);
	fd = -1;
	if (r != 0 || renameat(dfd, tmp, dfd, name) != 0) {
		r = -errno;
		goto err;
	}
	return fsync(dfd) == 0 ? 0 : -errno;
err:
	if (fd >= 0)
		close(fd);
	unlinkat(dfd, tmp, 0);
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
	/* NOLINTNEXTLINE(bugprone-not-null-terminated-result): the name's copy brings the NUL */
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
	if (stat(dir, &st) != 0 || fchown(fd, st.st_uid, st.st_gid) != 0)
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
