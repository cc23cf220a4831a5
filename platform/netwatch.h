/*
 * netwatch: rtnetlink notifications that the network may have come back: a
 * new global address, a new route in the main table, or a link going up
 * (running, carrier). Link-local addresses and local routes do not count. The daemon uses them to
 * cut a backoff short instead of polling.
 */
#ifndef NBE_PLATFORM_NETWATCH_H
#define NBE_PLATFORM_NETWATCH_H

#include <stdbool.h>

/* Opens a non-blocking netlink socket subscribed to link, address and route
 * changes. Returns the fd or -errno. */
int nbe_netwatch_open(void);

/* Reads everything pending on @fd. Returns 1 when a message says the
 * network may be up again, 0 when not, -errno on failure. */
int nbe_netwatch_read(int fd);

#endif
