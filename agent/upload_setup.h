/*
 * upload_setup: what `flush` and the daemon share: the Nuvla client and the
 * uploader made from the configuration, and the upload state kept in the
 * buffer for `status` (upload_state, last_fail, last_error, next_attempt_ms).
 */
#ifndef NBE_UPLOAD_SETUP_H
#define NBE_UPLOAD_SETUP_H

#include "buffer.h"
#include "config.h"
#include "nuvla.h"
#include "uploader.h"
#include "notify.h"

#define NBE_COOKIE_JAR "session.cookie"

/*
 * A Nuvla client for @cfg (endpoint, TLS, timeouts) with the cookie jar
 * @jar_name in the state directory, or none (NULL). Returns 0 or -errno.
 */
int nuvla_client_new(const struct nbe_config *cfg, const char *jar_name, long max_in_flight,
		     const char *user_agent, struct nbe_nuvla **ret, struct nbe_error *err);

/*
 * Makes the client (cookie jar in the state directory) and the uploader for
 * @cfg over @buf. @secret and @boot_id are copied. Returns 0 or -errno with
 * @err set.
 */
int upload_setup(const struct nbe_config *cfg, struct nbe_buffer *buf, const char *secret,
		 const char *boot_id, struct nbe_nuvla **ret_nuvla, struct nbe_uploader **ret_up,
		 struct nbe_error *err);

/* Keeps what `status` shows: the state for @fail, the error, when the next
 * attempt comes (0: none). Failures to write it are ignored. */
void upload_save_state(struct nbe_buffer *buf, const char *state, enum nbe_upload_fail fail,
		       const char *error, int64_t next_attempt_ms);

/* The failure class as saved ("none", "retryable", "connect", ...) and back. */
const char *upload_fail_name(enum nbe_upload_fail f);
enum nbe_upload_fail upload_fail_parse(const char *s);

#endif
