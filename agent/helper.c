#include "helper.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void nbe_net_helper_path(char *out, size_t size)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	out[0] = '\0';
	if (n > 0) {
		char *slash;
		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			snprintf(out, size, "%s/nuvlabox-event-net", self);
		}
	}
	if (!out[0] || access(out, X_OK) != 0)
		snprintf(out, size, "%s/nuvlabox-event-net", NBE_LIBEXEC_DIR);
}
