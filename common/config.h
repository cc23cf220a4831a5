/*
 * config: the agent's configuration (DESIGN §8, contract): built-in
 * defaults, then the `key = value` file, then the environment, then flags.
 * Unknown keys, repeated keys and bad values are errors that name the file
 * and line.
 */
#ifndef NBE_CONFIG_H
#define NBE_CONFIG_H

#include "error.h"

#include <stdbool.h>
#include <stdint.h>

#define NBE_CONFIG_FILE		  "/etc/nuvlabox-event/agent.conf"
#define NBE_CONFIG_MAX_BYTES	  (64 * 1024)
#define NBE_CONFIG_MAX_KEYS_FILES 8

enum nbe_log_level {
	NBE_LOG_ERROR = 3,
	NBE_LOG_WARNING = 4,
	NBE_LOG_NOTICE = 5,
	NBE_LOG_INFO = 6,
	NBE_LOG_DEBUG = 7,
};

struct nbe_config {
	char *endpoint;	   /* "https://host[:port]", no trailing slash */
	char *nuvlabox_id; /* "nuvlabox/<uuid>" or NULL (not known yet) */
	bool insecure;
	char *ca_file;	   /* NULL: the system trust store */
	char *client_cert; /* NULL: no client certificate (mTLS off) */
	char *client_key;
	char *api_key;	       /* "credential/<uuid>" or NULL */
	char *api_secret_file; /* NULL or a path */
	char *api_secret;      /* from NUVLAEDGE_API_SECRET only; never printed */
	char *nuvlaedge_dir;
	char *state_dir;
	int64_t max_buffer_bytes;
	int64_t max_events;
	int64_t keep_sent;
	int64_t retry_base_ms;
	int64_t retry_cap_ms;
	int64_t request_timeout_ms;
	int64_t connect_timeout_ms;
	int64_t busy_timeout_ms;
	int64_t lookup_delay_ms;
	int64_t state_check_interval_ms;
	int64_t max_in_flight;
	char *authorized_keys[NBE_CONFIG_MAX_KEYS_FILES]; /* NULL-terminated */
	enum nbe_log_level log_level;
	char *runtime_dir;
	char *boot_id_file;
	char *timesync_file;
	char *reboot_command;	      /* argv split on blanks, no shell (job run) */
	int64_t job_flush_timeout_ms; /* job run: upload before a reboot, at most this */
	bool job_pull;		      /* the daemon heartbeats and runs the jobs it gets */
	int64_t heartbeat_interval_ms;

	uint64_t explicit_keys; /* keys set by the file, the environment or a flag */
	char *identity_note;	/* why NuvlaEdge's files gave no identity, or NULL */
	char *identity_source;	/* the NuvlaEdge file the identity came from, or NULL */
};

/* Environment lookup, so tests can supply their own (getenv in programs). */
typedef const char *(*nbe_getenv_fn)(const char *name);

/* Fills @cfg with the built-in defaults. Returns 0 or -ENOMEM. */
int nbe_config_defaults(struct nbe_config *cfg, nbe_getenv_fn getenv_fn);

/*
 * Reads @path over @cfg. With @required false a missing file is not an
 * error (the default path on an unconfigured device). Returns 0, -ENOENT
 * (missing and required), -EINVAL (bad content, "path:line: ..." in @err),
 * -EFBIG, or -errno.
 */
int nbe_config_load_file(struct nbe_config *cfg, const char *path, bool required,
			 struct nbe_error *err);

/* Parses configuration text; @origin names it in messages. */
int nbe_config_load_text(struct nbe_config *cfg, const char *text, const char *origin,
			 struct nbe_error *err);

/* Applies the environment overrides of DESIGN §8. */
int nbe_config_apply_env(struct nbe_config *cfg, nbe_getenv_fn getenv_fn, struct nbe_error *err);

/*
 * Fills what the file, the environment and flags left unset from NuvlaEdge's
 * data directory (nuvlaedge_dir, and the legacy /srv/nuvlaedge/shared and
 * /srv/nuvlabox/shared when it is the default): nuvlabox_id, the api key and
 * secret, and the endpoint and insecure flag. Never fails because of
 * NuvlaEdge's files: what went wrong is kept in identity_note. Returns 0 or
 * -ENOMEM.
 */
int nbe_config_apply_nuvlaedge(struct nbe_config *cfg);

/* Sets one key as if it came from a file (used for flags). */
int nbe_config_set(struct nbe_config *cfg, const char *key, const char *value,
		   struct nbe_error *err);

/* Checks relations between values after everything was applied. */
int nbe_config_validate(const struct nbe_config *cfg, struct nbe_error *err);

/*
 * The api secret: NUVLAEDGE_API_SECRET if set, else the content of
 * api_secret_file without its trailing newline. A secret file or client key
 * that group or others may read is refused, as ssh refuses such keys.
 * *ret is a new string (wipe and free it), or NULL when none is configured.
 * Returns 0, -EPERM (loose mode), -EINVAL (empty), or -errno.
 */
int nbe_config_read_secret(const struct nbe_config *cfg, char **ret, struct nbe_error *err);

/* Checks that the client key (if any) is readable and private (0600 or
 * stricter). Returns 0, -EPERM or -errno. */
int nbe_config_check_key(const struct nbe_config *cfg, struct nbe_error *err);

/* How nbe_config_load() builds a configuration. */
struct nbe_config_source {
	const char *path;	  /* the file */
	bool required;		  /* a missing file is an error (an explicit --config) */
	nbe_getenv_fn getenv_fn;  /* the environment */
	const char *const *flags; /* NULL, or key, value, ..., NULL: command-line flags */
	bool identity;		  /* fill the identity from NuvlaEdge's files */
};

/*
 * The whole precedence of DESIGN §8 in one place: defaults < file <
 * environment < flags, then (with @src->identity) NuvlaEdge's files for
 * what is still unset, then validation. On failure @cfg holds nothing.
 * Returns 0, -ENOMEM, or the error of the step that failed (@err).
 */
int nbe_config_load(struct nbe_config *cfg, const struct nbe_config_source *src,
		    struct nbe_error *err);

/* Releases everything @cfg owns. Accepts NULL. */
void nbe_config_free(struct nbe_config *cfg);

const char *nbe_log_level_str(enum nbe_log_level l);

#endif
