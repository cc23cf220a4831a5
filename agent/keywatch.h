/*
 * keywatch: the SSH key watcher (DESIGN §6.2). inotify on the directory of
 * each configured authorized_keys file (or its nearest existing ancestor,
 * to see it created later), robust to atomic replacement, deletion and
 * re-creation. Each key added or removed since the last scan becomes
 * nuvlabox.add-ssh-key.completed / nuvlabox.revoke-ssh-key.completed with
 * its type, comment and SHA256 fingerprint (never the key), linked to the
 * request a producer recorded with that fingerprint. The keys last seen are
 * kept in the buffer, committed with the events: nothing is reported twice,
 * and changes made while the daemon was down are reported at its start.
 */
#ifndef NBE_KEYWATCH_H
#define NBE_KEYWATCH_H

#include "buffer.h"
#include "config.h"
#include "error.h"

#include <stdbool.h>

struct keywatch;

/* @paths: NULL-terminated absolute paths. */
int keywatch_new(struct nbe_buffer *buf, char *const *paths, const char *boot_id,
		 const char *timesync_file, struct keywatch **ret, struct nbe_error *err);
void keywatch_free(struct keywatch *kw);

/* The inotify fd to poll. */
int keywatch_fd(const struct keywatch *kw);

/* Drains the fd; true when something changed (scan after a short pause). */
bool keywatch_read(struct keywatch *kw);

/* Compares every file with what was last seen; *ret_events counts what was
 * recorded. Returns 0 or the first error (each reported once per episode). */
int keywatch_scan(struct keywatch *kw, int *ret_events, struct nbe_error *err);

#endif
