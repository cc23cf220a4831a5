#include "clock.h"

#include <sys/timex.h>
#include <time.h>
#include <unistd.h>

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;

	if (clock_gettime(id, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t nbe_clock_wall_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}

int64_t nbe_clock_boottime_ms(void)
{
	return clock_ms(CLOCK_BOOTTIME);
}

int64_t nbe_clock_monotonic_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

bool nbe_clock_synced_from(int adjtimex_status, bool timesync_file_exists)
{
	if (timesync_file_exists)
		return true;
	if (adjtimex_status < 0)
		return false;
	return (adjtimex_status & STA_UNSYNC) == 0;
}

bool nbe_clock_synced(const char *timesync_file)
{
	struct timex tx = { 0 };
	int status = -1;
	bool file = false;

	/* modes = 0: read only, needs no privilege */
	if (adjtimex(&tx) >= 0)
		status = tx.status;
	if (timesync_file && access(timesync_file, F_OK) == 0)
		file = true;
	return nbe_clock_synced_from(status, file);
}
