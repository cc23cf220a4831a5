/*
 * sdnotify: systemd's notification protocol without libsystemd: one
 * datagram per message to $NOTIFY_SOCKET (a path, or an abstract name when
 * it starts with '@').
 */
#ifndef NBE_PLATFORM_SDNOTIFY_H
#define NBE_PLATFORM_SDNOTIFY_H

#include <stdint.h>

/*
 * Sends @state ("READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1") to
 * @socket_path (normally getenv("NOTIFY_SOCKET")). Returns 1 when sent, 0
 * when there is no socket (not under systemd), or -errno.
 */
int nbe_sd_notify(const char *socket_path, const char *state);

/*
 * The watchdog interval in microseconds from WATCHDOG_USEC and WATCHDOG_PID
 * (the values of those variables, either may be NULL): 0 when the watchdog
 * is off or meant for another process (@pid is ours).
 */
uint64_t nbe_sd_watchdog_usec(const char *usec, const char *for_pid, long pid);

#endif
