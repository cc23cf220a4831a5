#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * The child's side runs between fork() and exec(): only async-signal-safe
 * calls (the daemon may have libcurl's resolver threads).
 */

/* Tells the parent why the child could not start, and ends it. */
__attribute__((noreturn)) static void child_fail(int errfd, int e)
{
	ssize_t w;

	do
		w = write(errfd, &e, sizeof(e));
	while (w < 0 && errno == EINTR);
	_exit(127);
}

/* Closes the fds @first..@last, both included. */
static void close_fds(unsigned first, unsigned last)
{
	struct rlimit rl;
	unsigned max = 65536;

	/* the system call: musl has no close_range() wrapper */
	if (first > last || syscall(SYS_close_range, first, last, 0) == 0)
		return;
	/* a kernel before 5.9: every fd the limit allows */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < max)
		max = (unsigned)rl.rlim_cur;
	for (unsigned fd = first; fd < max && fd <= last; fd++)
		(void)close((int)fd);
}

/* Makes fd @target what @how says. Returns 0, or -1 with errno. */
static int set_stdio(int target, enum nbe_spawn_stdio how)
{
	int fd, r, e;

	if (how != NBE_SPAWN_DEVNULL)
		return 0;
	fd = open("/dev/null", target == STDIN_FILENO ? O_RDONLY : O_WRONLY);
	if (fd < 0 || fd == target) /* @target was closed: it is /dev/null now */
		return fd < 0 ? -1 : 0;
	r = dup2(fd, target);
	e = errno;
	(void)close(fd);
	errno = e;
	return r < 0 ? -1 : 0;
}

__attribute__((noreturn)) static void child(const struct nbe_spawn_opts *o, int rfd, int errfd)
{
	struct sigaction dfl = { 0 };
	sigset_t none;

	(void)close(rfd);
	if (errfd <= STDERR_FILENO) {
		/* the parent's stdio was closed: keep the pipe out of the way */
		int fd = fcntl(errfd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
		if (fd < 0)
			child_fail(errfd, errno);
		(void)close(errfd);
		errfd = fd;
	}
	/* dispositions first: no signal may reach a handler of the parent */
	dfl.sa_handler = SIG_DFL;
	for (int sig = 1; sig < NSIG; sig++) {
		if (sig != SIGKILL && sig != SIGSTOP)
			(void)sigaction(sig, &dfl, NULL); /* glibc's own signals: EINVAL */
	}
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) != 0)
		child_fail(errfd, errno);
	if (set_stdio(STDIN_FILENO, o->std_in) < 0 || set_stdio(STDOUT_FILENO, o->std_out) < 0 ||
	    set_stdio(STDERR_FILENO, o->std_err) < 0)
		child_fail(errfd, errno);
	/* the pipe stays open until exec() closes it (CLOEXEC) */
	close_fds(STDERR_FILENO + 1, (unsigned)errfd - 1);
	close_fds((unsigned)errfd + 1, ~0U);
	if (o->search_path)
		execvp(o->argv[0], o->argv);
	else
		execv(o->argv[0], o->argv);
	child_fail(errfd, errno);
}

static int pidfd_of(pid_t pid)
{
#ifdef SYS_pidfd_open
	return (int)syscall(SYS_pidfd_open, pid, 0); /* always O_CLOEXEC */
#else
	(void)pid;
	errno = ENOSYS;
	return -1;
#endif
}

static void reap(pid_t pid)
{
	int status;

	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
}

int nbe_spawn(const struct nbe_spawn_opts *o, pid_t *ret_pid, int *ret_pidfd)
{
	int p[2], e = 0;
	ssize_t n;
	pid_t pid;

	if (!o || !o->argv || !o->argv[0])
		return -EINVAL;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	(void)fflush(NULL); /* before fork(): the child must not repeat buffered output */
	pid = fork();
	if (pid < 0) {
		e = errno;
		(void)close(p[0]);
		(void)close(p[1]);
		return -e;
	}
	if (pid == 0)
		child(o, p[0], p[1]);
	(void)close(p[1]);
	/* end of file: exec() closed the pipe; an int: the child's errno */
	do
		n = read(p[0], &e, sizeof(e));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		e = errno;
	(void)close(p[0]);
	if (n != 0) {
		if (n < 0)
			(void)kill(pid, SIGKILL); /* it may run: we cannot tell */
		else if (n != (ssize_t)sizeof(e) || e <= 0)
			e = EIO;
		reap(pid);
		return -e;
	}
	if (ret_pidfd)
		*ret_pidfd = pidfd_of(pid);
	*ret_pid = pid;
	return 0;
}
