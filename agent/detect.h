/*
 * detect: what the daemon notices by itself (DESIGN §6.2). The boot
 * detector: a boot id other than the one the buffer remembers means the
 * device rebooted.
 */
#ifndef NBE_DETECT_H
#define NBE_DETECT_H

#include "buffer.h"
#include "error.h"

#include <stdbool.h>

/*
 * Compares @boot_id with the boot the buffer remembers. On the first start
 * of a fresh state directory it only remembers it. After a reboot it
 * records nuvlabox.reboot.completed, linked to the reboot request the
 * previous boot recorded (and to its job), or nuvlabox.reboot.unplanned
 * (high) when there was none; details: the previous boot id, this boot's
 * start, and the downtime. The event and the new boot id are committed
 * together: exactly one event per boot, however often the daemon restarts.
 * @timesync_file as for nbe_clock_synced(). Sets *ret_name to the recorded
 * event's name ("" if none). Returns 0 or -errno.
 */
int detect_boot(struct nbe_buffer *buf, const char *boot_id, const char *timesync_file,
		char ret_name[64], struct nbe_error *err);

/* Remembers that this boot was alive now (and, with @clean, that the daemon
 * stopped in order): the next boot's downtime is measured from it. */
void detect_boot_alive(struct nbe_buffer *buf, bool clean);

#endif
