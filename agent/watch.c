#include "watch.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#define WATCH_MASK                                                                                 \
	(IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CLOSE_WRITE | IN_ATTRIB |        \
	 IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

void watch_dir(int fd, const char *dir)
{
	char d[PATH_MAX];
	char *slash;

	snprintf(d, sizeof(d), "%s", dir);
	for (;;) {
		if (inotify_add_watch(fd, d, WATCH_MASK) >= 0)
			return;
		if ((errno != ENOENT && errno != ENOTDIR) || strcmp(d, "/") == 0)
			return;
		slash = strrchr(d, '/');
		if (!slash)
			return;
		if (slash == d)
			d[1] = '\0';
		else
			*slash = '\0';
	}
}

void watch_path(int fd, const char *path)
{
	char d[PATH_MAX];
	char *slash;

	snprintf(d, sizeof(d), "%s", path);
	slash = strrchr(d, '/');
	if (!slash)
		return;
	if (slash == d)
		d[1] = '\0';
	else
		*slash = '\0';
	watch_dir(fd, d);
}

int watch_drain(int fd)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int any = 0;

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			return any || (n < 0 && errno == ENOSPC);
		any = 1;
	}
}
