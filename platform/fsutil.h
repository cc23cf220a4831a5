/*
 * fsutil: file-system helpers with the durability rules the agent keeps:
 * every fd O_CLOEXEC, state written atomically (temp, fsync, rename, fsync the
 * directory), reads bounded.
 */
#ifndef NBE_PLATFORM_FSUTIL_H
#define NBE_PLATFORM_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* fsyncs the directory @path. Returns 0 or -errno. */
int nbe_fsync_dir(const char *path);

/* fsyncs the directory that contains @file_path. Returns 0 or -errno. */
int nbe_fsync_parent_dir(const char *file_path);

/*
 * Creates directory @path with @mode if it does not exist (the parent must
 * exist). Returns 0 when it exists or was created, -ENOTDIR if something else
 * is there, or -errno.
 */
int nbe_mkdir_exist_ok(const char *path, mode_t mode);

/*
 * Reads the whole file @path into a newly allocated NUL-terminated buffer,
 * refusing files larger than @max_bytes (-EFBIG). On success *ret_data (free
 * with nbe_free()) and *ret_len are set. Returns 0 or -errno.
 */
int nbe_read_file(const char *path, size_t max_bytes, char **ret_data, size_t *ret_len);

/* The same for a file already open as @fd (a regular file, else -EINVAL). */
int nbe_read_fd(int fd, size_t max_bytes, char **ret_data, size_t *ret_len);

/*
 * Writes @len bytes to @path atomically with @mode: a temporary file in the
 * same directory, fsync, rename over @path, fsync of the directory. Returns 0
 * or -errno; on failure @path is untouched and the temporary file is removed.
 */
int nbe_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/*
 * Replaces the file @name in the directory open as @dfd without following
 * a symbolic link anywhere: a temporary file created in @dfd (O_EXCL,
 * O_NOFOLLOW) with exactly @mode, @uid and @gid, fsync, renameat over
 * @name, fsync of @dfd. For a file that belongs to someone else
 * (authorized_keys): needs the right to chown unless @uid/@gid are the
 * caller's. Returns 0 or -errno; on failure @name is untouched.
 */
int nbe_replace_at(int dfd, const char *name, const void *data, size_t len, mode_t mode, uid_t uid,
		   gid_t gid);

/*
 * Takes an exclusive flock(2) on @path (created with @mode if missing)
 * without waiting. On success *ret_fd holds the lock until closed. Returns
 * 0, -EWOULDBLOCK when another process holds it, or -errno.
 */
int nbe_lock_try(const char *path, mode_t mode, int *ret_fd);

/*
 * When running as root, gives the file open on @fd the owner and group of
 * the directory that contains @path: a file root creates in the agent's
 * state directory (a producer before the daemon ever ran) must stay usable
 * by the daemon's user and group. A no-op for other users. Returns 0 or -errno.
 */
int nbe_chown_like_parent(int fd, const char *path);

/* Joins @dir and @name with one '/'. Returns a new string (nbe_free()) or NULL. */
char *nbe_path_join(const char *dir, const char *name);

#endif
