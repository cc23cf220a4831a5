/* Unit tests: spawn (a child in a clean state, exec failures reported). */
#include "testutil.h"

#include "spawn.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs @argv with that stdin and stdout, and returns its exit status. */
static int run(const char *const *argv, enum nbe_spawn_stdio in, enum nbe_spawn_stdio out)
{
	struct nbe_spawn_opts o = { .argv = (char *const *)(uintptr_t)argv,
				    .std_in = in,
				    .std_out = out };
	int status = -1;
	pid_t pid = 0;

	assert_int_equal(nbe_spawn(&o, &pid, NULL), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* The same for `sh -c @script`. */
static int run_sh(const char *script, enum nbe_spawn_stdio in, enum nbe_spawn_stdio out)
{
	const char *argv[] = { "/bin/sh", "-c", script, NULL };

	return run(argv, in, out);
}

/* No child is left behind (none to reap). */
static void assert_no_child(void)
{
	assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);
}

static int spawn_argv0(const char *prog, bool search)
{
	char *argv[] = { (char *)(uintptr_t)prog, NULL };
	struct nbe_spawn_opts o = { .argv = argv, .search_path = search };
	pid_t pid = 0;
	int r = nbe_spawn(&o, &pid, NULL), status;

	if (r == 0)
		assert_int_equal(waitpid(pid, &status, 0), pid);
	return r;
}

static void test_exit_status(void **state)
{
	(void)state;
	assert_int_equal(run_sh("exit 3", NBE_SPAWN_INHERIT, NBE_SPAWN_INHERIT), 3);
	assert_int_equal(run_sh("exit 0", NBE_SPAWN_INHERIT, NBE_SPAWN_INHERIT), 0);
}

static void test_exec_failure(void **state)
{
	char *dir = tu_mkdtemp(), *plain = tu_write(dir, "plain", "#!/bin/sh\nexit 0\n");

	(void)state;
	assert_int_equal(spawn_argv0("/nonexistent/program", false), -ENOENT);
	assert_no_child();
	assert_int_equal(chmod(plain, 0644), 0);
	assert_int_equal(spawn_argv0(plain, false), -EACCES); /* root too: no x bit */
	assert_no_child();
	assert_int_equal(spawn_argv0("sh", false), -ENOENT); /* not looked up */
	assert_int_equal(spawn_argv0("sh", true), 0);
	assert_int_equal(spawn_argv0("nbe-no-such-program", true), -ENOENT);
	assert_no_child();
	free(plain);
	tu_rmtree(dir);
}

static void test_bad_options(void **state)
{
	char *argv[] = { NULL };
	struct nbe_spawn_opts o = { .argv = argv };
	pid_t pid = 0;

	(void)state;
	assert_int_equal(nbe_spawn(NULL, &pid, NULL), -EINVAL);
	assert_int_equal(nbe_spawn(&o, &pid, NULL), -EINVAL);
	assert_int_equal(pid, 0);
}

static void on_usr1(int sig)
{
	(void)sig;
}

/* A parent that blocks, ignores and handles signals and leaks fds (below
 * and above the error pipe's) has a child that sees none of it. */
static void test_clean_child(void **state)
{
	struct sigaction usr1 = { .sa_handler = on_usr1 }, old_usr1, old_pipe;
	sigset_t block, old_mask;
	int fd = open("/dev/null", O_RDONLY); /* not CLOEXEC; the lowest free fd */
	char low[64];
	const char *no_fds[] = { "/usr/bin/test",   "!", "-e", low, "-a", "!", "-e",
				 "/proc/self/fd/9", NULL };
	const char *no_blocked[] = { "/bin/grep", "-Eq", "^SigBlk:[[:space:]]*0+$",
				     "/proc/self/status", NULL };
	const char *no_ignored[] = { "/bin/grep", "-Eq", "^SigIgn:[[:space:]]*0+$",
				     "/proc/self/status", NULL };

	(void)state;
	assert_true(fd >= 0 && fd < 9);
	snprintf(low, sizeof(low), "/proc/self/fd/%d", fd);
	assert_int_equal(dup2(fd, 9), 9);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGCHLD);
	assert_int_equal(sigprocmask(SIG_BLOCK, &block, &old_mask), 0);
	assert_int_equal(sigaction(SIGUSR1, &usr1, &old_usr1), 0);
	assert_int_equal(
		sigaction(SIGPIPE, &(struct sigaction){ .sa_handler = SIG_IGN }, &old_pipe), 0);
	/* no shell (a shell resets signals itself): each program looks at its own
	 * fds and status */
	assert_int_equal(run(no_fds, NBE_SPAWN_INHERIT, NBE_SPAWN_INHERIT), 0);
	assert_int_equal(run(no_blocked, NBE_SPAWN_INHERIT, NBE_SPAWN_INHERIT), 0);
	assert_int_equal(run(no_ignored, NBE_SPAWN_INHERIT, NBE_SPAWN_INHERIT), 0);
	assert_int_equal(sigprocmask(SIG_SETMASK, &old_mask, NULL), 0);
	assert_int_equal(sigaction(SIGUSR1, &old_usr1, NULL), 0);
	assert_int_equal(sigaction(SIGPIPE, &old_pipe, NULL), 0);
	close(9);
	close(fd);
}

/* stdin and stdout: the parent's, or /dev/null. */
static void test_stdio(void **state)
{
	int saved = dup(STDIN_FILENO), p[2];

	(void)state;
	assert_true(saved >= 0);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(dup2(p[0], STDIN_FILENO), STDIN_FILENO);
	assert_int_equal(run_sh("case $(readlink /proc/$$/fd/0) in pipe:*) exit 0;; esac; exit 1",
				NBE_SPAWN_INHERIT, NBE_SPAWN_INHERIT),
			 0);
	assert_int_equal(run_sh("[ \"$(readlink /proc/$$/fd/0)\" = /dev/null ] && "
				"[ \"$(readlink /proc/$$/fd/1)\" = /dev/null ]",
				NBE_SPAWN_DEVNULL, NBE_SPAWN_DEVNULL),
			 0);
	assert_int_equal(dup2(saved, STDIN_FILENO), STDIN_FILENO);
	close(saved);
	close(p[0]);
	close(p[1]);
}

/* With the parent's stdin and stdout closed, the error pipe takes fds 0
 * and 1: an exec failure still arrives, also when the child's stdin and
 * stdout are to be /dev/null. */
static void test_closed_stdio(void **state)
{
	char *argv[] = { (char *)(uintptr_t) "/nonexistent/program", NULL };
	struct nbe_spawn_opts o = { .argv = argv,
				    .std_in = NBE_SPAWN_DEVNULL,
				    .std_out = NBE_SPAWN_DEVNULL };
	int in = dup(STDIN_FILENO), out = dup(STDOUT_FILENO), r, r2;
	pid_t pid = 0;

	(void)state;
	assert_true(in >= 0 && out >= 0);
	close(STDIN_FILENO);
	close(STDOUT_FILENO);
	r = spawn_argv0("/nonexistent/program", false);
	r2 = nbe_spawn(&o, &pid, NULL);
	dup2(in, STDIN_FILENO);
	dup2(out, STDOUT_FILENO);
	close(in);
	close(out);
	assert_int_equal(r, -ENOENT);
	assert_int_equal(r2, -ENOENT);
	assert_no_child();
}

static void test_pidfd(void **state)
{
	char *argv[] = { (char *)(uintptr_t) "/bin/sh", (char *)(uintptr_t) "-c",
			 (char *)(uintptr_t) "exit 0", NULL };
	struct nbe_spawn_opts o = { .argv = argv };
	struct pollfd pfd = { .events = POLLIN };
	pid_t pid = 0;
	int status;

	(void)state;
	pfd.fd = -2;
	assert_int_equal(nbe_spawn(&o, &pid, &pfd.fd), 0);
	if (pfd.fd >= 0) { /* -1: no pidfd_open() (valgrind 3.19 does not know it) */
		assert_true(fcntl(pfd.fd, F_GETFD) & FD_CLOEXEC);
		assert_int_equal(poll(&pfd, 1, 10000), 1);
	} else {
		assert_int_equal(pfd.fd, -1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (pfd.fd >= 0)
		close(pfd.fd);
}

/* No fd for the pipe: an error, and no child. */
static void test_no_fds(void **state)
{
	struct rlimit old, low;
	int next = dup(0), r;

	(void)state;
	assert_true(next >= 0);
	close(next);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = (rlim_t)next; /* every fd from the lowest free one on is refused */
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	r = spawn_argv0("/bin/true", false);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(r, -EMFILE);
	assert_no_child();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exit_status), cmocka_unit_test(test_exec_failure),
		cmocka_unit_test(test_bad_options), cmocka_unit_test(test_clean_child),
		cmocka_unit_test(test_stdio),	    cmocka_unit_test(test_closed_stdio),
		cmocka_unit_test(test_pidfd),	    cmocka_unit_test(test_no_fds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
