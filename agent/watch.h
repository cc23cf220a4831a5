/*
 * watch: inotify on where a file lives: its directory, or while that does
 * not exist its nearest existing ancestor, so the file's creation is seen
 * whatever is created first. Watching again is harmless (same watch).
 */
#ifndef NBE_WATCH_H
#define NBE_WATCH_H

/* Watches the directory of @path (or an ancestor) on the inotify fd @fd. */
void watch_path(int fd, const char *path);

/* Watches @dir itself (or an ancestor while it does not exist). */
void watch_dir(int fd, const char *dir);

/* Drains @fd; returns 1 when anything happened, 0 when not. */
int watch_drain(int fd);

#endif
