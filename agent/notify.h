/*
 * notify: the datagrams producers and the CLI send to the daemon's socket
 * (<runtime_dir>/notify.sock): "poke" (new events are in the buffer) and
 * "flush" (upload now, whatever the backoff).
 */
#ifndef NBE_NOTIFY_H
#define NBE_NOTIFY_H

#define NBE_NOTIFY_SOCKET "notify.sock"
#define NBE_NOTIFY_POKE	  "poke"
#define NBE_NOTIFY_FLUSH  "flush"

/* The upload lock in the state directory: one uploader at a time. */
#define NBE_UPLOAD_LOCK "upload.lock"

/* Sends @msg to the daemon under @runtime_dir without blocking. Returns 0
 * when it was delivered, -errno otherwise (no daemon: -ENOENT or
 * -ECONNREFUSED). */
int nbe_notify_send(const char *runtime_dir, const char *msg);

#endif
