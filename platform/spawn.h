/*
 * spawn: starts another program as a child process in a clean state, for
 * the agent's programs that run others (the reboot command of `job run`,
 * the daemon's pulled jobs). The child gets:
 * - no inherited fd above stderr (libcurl's wakeup pairs are not CLOEXEC):
 *   close_range(), or a loop up to RLIMIT_NOFILE on kernels without it;
 * - an empty signal mask and every signal's default disposition (a daemon
 *   blocks its signals for signalfd and ignores SIGPIPE: a child must not);
 * - stdin, stdout and stderr as the caller asks.
 * An exec failure reaches the parent as its errno through a CLOEXEC pipe
 * before nbe_spawn() returns (the child is reaped then): no exit status
 * 127 to guess from, and no race with the child's own exit.
 */
#ifndef NBE_PLATFORM_SPAWN_H
#define NBE_PLATFORM_SPAWN_H

#include <stdbool.h>
#include <sys/types.h>

/* What a child's stdin, stdout or stderr is. */
enum nbe_spawn_stdio {
	NBE_SPAWN_INHERIT = 0, /* the parent's */
	NBE_SPAWN_DEVNULL,     /* /dev/null */
};

struct nbe_spawn_opts {
	/* the program and its arguments, NULL-terminated; argv[0] is run */
	char *const *argv;
	bool search_path; /* look argv[0] up in PATH when it has no '/' */
	enum nbe_spawn_stdio std_in, std_out, std_err;
};

/*
 * Starts @o->argv. Returns 0 with *@ret_pid set (the caller reaps it), and
 * with *@ret_pidfd a pidfd of the child (O_CLOEXEC; -1 when the kernel has
 * no pidfd_open()) when @ret_pidfd is not NULL. Returns -errno when the
 * child could not be made (pipe, fork) or could not start @o->argv[0]
 * (exec, or setting up its stdio), with nothing left behind: the child,
 * if any, is reaped. Flushes stdio's buffers first, so the child does not
 * repeat buffered output.
 */
int nbe_spawn(const struct nbe_spawn_opts *o, pid_t *ret_pid, int *ret_pidfd);

#endif
