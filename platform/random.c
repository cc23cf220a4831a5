#include "random.h"

#include <errno.h>
#include <sys/random.h>

int nbe_random_bytes(void *buf, size_t len)
{
	unsigned char *p = buf;

	while (len > 0) {
		ssize_t n = getrandom(p, len, 0);
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

uint64_t nbe_random_below(uint64_t bound)
{
	uint64_t limit, v;

	if (bound == 0)
		return 0;
	/* rejection sampling: drop values from the incomplete last block */
	limit = UINT64_MAX - (UINT64_MAX % bound);
	do {
		if (nbe_random_bytes(&v, sizeof(v)) != 0)
			return 0;
	} while (v >= limit);
	return v % bound;
}
