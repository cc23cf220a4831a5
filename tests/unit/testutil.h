/*
 * testutil: helpers the unit tests share: temporary directories, a boot id
 * file, and building events without the CLI.
 */
#ifndef NBE_TESTUTIL_H
#define NBE_TESTUTIL_H

#include "buffer.h"
#include "event.h"

#include <stddef.h>

/* Creates a fresh temporary directory; the path is valid until tu_rmdir(). */
char *tu_mkdtemp(void);
/* Removes a directory tree made by tu_mkdtemp() and frees the path. */
void tu_rmtree(char *dir);
/* Writes @text to @dir/@name; returns the new path (free()). */
char *tu_write(const char *dir, const char *name, const char *text);
/* Reads a whole file (for golden files); returns malloc'd text or NULL. */
char *tu_read(const char *path);

/* A boot id file in @dir holding @boot_id; returns its path (free()). */
char *tu_boot_id_file(const char *dir, const char *boot_id);

/* Fills @ev for @name with fixed clocks; asserts success. */
void tu_event(struct nbe_event *ev, const char *name, const char *severity, const char *job,
	      const char *parent);

/* Opens a buffer at @dir/events.db with the given caps; asserts success. */
struct nbe_buffer *tu_open(const char *dir, int64_t max_bytes, int64_t max_events);

/* Appends an event named @name; returns its seq (asserts success). */
int64_t tu_append(struct nbe_buffer *b, const char *name, const char *severity, const char *job,
		  const char *parent, char ret_id[NBE_UUID_LEN + 1]);

#define TU_BOOT_ID "0b7c5d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"

#endif
