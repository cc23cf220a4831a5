/*
 * netwatch: rtnetlink notifications that the network may have come back: a
 * new global address, a new route in the main table, or a link going up
 * (running, carrier). Link-local addresses and local routes do not count. The daemon uses them to
 * cut a backoff short instead of polling.
 */
#ifndef NBE_PLATFORM_NETWATCH_H
#define NBE_PLATFORM_NETWATCH_H

#include <stdbool.h>

/* Opens a non-blocking rtnetlink socket, not yet listening (see
 * nbe_netwatch_listen()). Returns the fd or -errno. */
int nbe_netwatch_open(void);

/*
 * Joins (@on) or leaves the link, address and route groups. Leaving also
 * discards what is queued, so nothing wakes the caller afterwards: a host
 * whose interfaces change all the time (containers, VPNs) must not wake an
 * idle daemon. Returns 0 or -errno (when joining, the groups joined so far
 * are left again).
 */
int nbe_netwatch_listen(int fd, bool on);

/* Reads everything pending on @fd. Returns 1 when a message says the
 * network may be up again, 0 when not, -errno on failure. */
int nbe_netwatch_read(int fd);

#endif
