/*
 * clock: the three clocks an event carries and whether the wall clock can be
 * trusted.
 *
 * Wall time in milliseconds since the epoch (CLOCK_REALTIME), CLOCK_BOOTTIME in
 * milliseconds (keeps counting across suspend, restarts with each boot), and
 * the synchronisation state of the wall clock as the kernel (adjtimex
 * STA_UNSYNC) or systemd-timesyncd (/run/systemd/timesync/synchronized) sees it.
 */
#ifndef NBE_PLATFORM_CLOCK_H
#define NBE_PLATFORM_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

#define NBE_TIMESYNC_FILE "/run/systemd/timesync/synchronized"

/* Wall-clock milliseconds since the epoch. */
int64_t nbe_clock_wall_ms(void);

/* CLOCK_BOOTTIME milliseconds. */
int64_t nbe_clock_boottime_ms(void);

/* CLOCK_MONOTONIC milliseconds, for timeouts within one process. */
int64_t nbe_clock_monotonic_ms(void);

/*
 * Whether the wall clock is synchronised: the kernel's STA_UNSYNC flag is clear
 * (an NTP client disciplines the clock), or @timesync_file exists (timesyncd
 * has synchronised at least once this boot). @timesync_file may be NULL to
 * consult the kernel only.
 */
bool nbe_clock_synced(const char *timesync_file);

/* Pure decision used by nbe_clock_synced(), separated so tests can cover it:
 * @adjtimex_status is the timex.status word (or -1 when adjtimex failed). */
bool nbe_clock_synced_from(int adjtimex_status, bool timesync_file_exists);

#endif
