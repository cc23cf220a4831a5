/*
 * newatch: NuvlaEdge's state, watched with inotify on its data directory
 * (DESIGN §6.2): its session file appearing means the device was activated
 * (nuvlabox.activate.completed, parented to and linked with the api-key
 * credential it produced); a change of the commissioned payload
 * (commission.json) means a commission (nuvlabox.commission.completed,
 * listing the changed and removed keys, never their values: only a digest
 * per key is kept). The first look is the baseline. Read only.
 */
#ifndef NBE_NEWATCH_H
#define NBE_NEWATCH_H

#include "buffer.h"
#include "error.h"

#include <stdbool.h>

struct newatch;

int newatch_new(struct nbe_buffer *buf, const char *dir, const char *boot_id,
		const char *timesync_file, struct newatch **ret, struct nbe_error *err);
void newatch_free(struct newatch *nw);
int newatch_fd(const struct newatch *nw);
bool newatch_read(struct newatch *nw);
int newatch_scan(struct newatch *nw, int *ret_events, struct nbe_error *err);

#endif
