#include "config.h"

#include "alloc.h"
#include "clock.h"
#include "fsutil.h"
#include "ids.h"
#include "credential.h"
#include "nuvlaedge.h"
#include "parse.h"
#include "sysinfo.h"
#include "utf8.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define LINE_MAX_BYTES 4096

enum key_type {
	T_STRING,
	T_PATH,
	T_BOOL,
	T_SIZE,
	T_DURATION,
	T_INT,
	T_LOGLEVEL,
	T_PATHLIST,
	T_ENDPOINT,
	T_NUVLABOX_ID,
	T_CREDENTIAL,
};

struct key_def {
	const char *name;
	enum key_type type;
	size_t offset;
	int64_t min, max;
};

#define OFF(m)	  offsetof(struct nbe_config, m)
#define INT64_BIG INT64_C(4611686018427387904)

static const struct key_def keys[] = {
	{ "endpoint", T_ENDPOINT, OFF(endpoint), 0, 0 },
	{ "nuvlabox_id", T_NUVLABOX_ID, OFF(nuvlabox_id), 0, 0 },
	{ "insecure", T_BOOL, OFF(insecure), 0, 0 },
	{ "ca_file", T_PATH, OFF(ca_file), 0, 0 },
	{ "client_cert", T_PATH, OFF(client_cert), 0, 0 },
	{ "client_key", T_PATH, OFF(client_key), 0, 0 },
	{ "api_key", T_CREDENTIAL, OFF(api_key), 0, 0 },
	{ "api_secret_file", T_PATH, OFF(api_secret_file), 0, 0 },
	{ "nuvlaedge_dir", T_PATH, OFF(nuvlaedge_dir), 0, 0 },
	{ "state_dir", T_PATH, OFF(state_dir), 0, 0 },
	{ "max_buffer_bytes", T_SIZE, OFF(max_buffer_bytes), 256 * 1024, INT64_C(1) << 40 },
	{ "max_events", T_INT, OFF(max_events), 10, INT64_C(1000000000) },
	{ "keep_sent", T_INT, OFF(keep_sent), 0, INT64_C(1000000000) },
	{ "retry_base", T_DURATION, OFF(retry_base_ms), 10, 3600 * 1000 },
	{ "retry_cap", T_DURATION, OFF(retry_cap_ms), 100, 24 * 3600 * 1000 },
	{ "request_timeout", T_DURATION, OFF(request_timeout_ms), 100, 3600 * 1000 },
	{ "connect_timeout", T_DURATION, OFF(connect_timeout_ms), 100, 3600 * 1000 },
	{ "busy_timeout", T_DURATION, OFF(busy_timeout_ms), 0, 3600 * 1000 },
	{ "lookup_delay", T_DURATION, OFF(lookup_delay_ms), 0, 3600 * 1000 },
	{ "state_check_interval", T_DURATION, OFF(state_check_interval_ms), 1000,
	  7 * 24 * 3600 * 1000LL },
	{ "max_in_flight", T_INT, OFF(max_in_flight), 1, 64 },
	{ "authorized_keys", T_PATHLIST, OFF(authorized_keys), 0, 0 },
	{ "log_level", T_LOGLEVEL, OFF(log_level), 0, 0 },
	{ "runtime_dir", T_PATH, OFF(runtime_dir), 0, 0 },
	{ "boot_id_file", T_PATH, OFF(boot_id_file), 0, 0 },
	{ "timesync_file", T_PATH, OFF(timesync_file), 0, 0 },
	{ "reboot_command", T_STRING, OFF(reboot_command), 0, 0 },
	{ "job_flush_timeout", T_DURATION, OFF(job_flush_timeout_ms), 0, 3600 * 1000 },
	{ "job_pull", T_BOOL, OFF(job_pull), 0, 0 },
	{ "heartbeat_interval", T_DURATION, OFF(heartbeat_interval_ms), 1000, 3600 * 1000 },
};

_Static_assert(sizeof(keys) / sizeof(keys[0]) <= 64, "explicit_keys has 64 bits");

static const char *const level_names[] = {
	[NBE_LOG_ERROR] = "error", [NBE_LOG_WARNING] = "warning", [NBE_LOG_NOTICE] = "notice",
	[NBE_LOG_INFO] = "info",   [NBE_LOG_DEBUG] = "debug",
};

const char *nbe_log_level_str(enum nbe_log_level l)
{
	return (l >= NBE_LOG_ERROR && l <= NBE_LOG_DEBUG) ? level_names[l] : "info";
}

static const struct key_def *find_key(const char *name)
{
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	}
	return NULL;
}

static int set_string(char **slot, const char *value)
{
	char *s = nbe_strdup(value);

	if (!s)
		return -ENOMEM;
	nbe_free(*slot);
	*slot = s;
	return 0;
}

/* "host", "host:port/" or "https://host" -> "https://host[:port]" */
static int normalize_endpoint(const char *v, char **ret)
{
	size_t n = strlen(v);
	char *s;

	if (n == 0 || strpbrk(v, " \t\"'<>\\"))
		return -EINVAL;
	while (n > 0 && v[n - 1] == '/')
		n--;
	if (n == 0)
		return -EINVAL; /* "/": no host */
	if (strncmp(v, "https://", 8) == 0 || strncmp(v, "http://", 7) == 0) {
		if (n <= (size_t)(v[4] == 's' ? 8 : 7))
			return -EINVAL;
		s = nbe_strndup(v, n);
	} else if (strstr(v, "://")) {
		return -EINVAL;
	} else {
		s = nbe_malloc(n + 9);
		if (s) {
			memcpy(s, "https://", 8);
			memcpy(s + 8, v, n);
			s[n + 8] = '\0';
		}
	}
	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}

static void free_pathlist(char **list)
{
	for (int i = 0; i < NBE_CONFIG_MAX_KEYS_FILES; i++) {
		nbe_free(list[i]);
		list[i] = NULL;
	}
}

/* A list of absolute paths separated by spaces or commas. */
static int set_pathlist(char **list, const char *value, struct nbe_error *err, const char *where)
{
	char *tmp[NBE_CONFIG_MAX_KEYS_FILES] = { 0 };
	const char *p = value;
	int n = 0;

	while (*p) {
		size_t len;

		while (*p == ' ' || *p == ',' || *p == '\t')
			p++;
		if (!*p)
			break;
		len = strcspn(p, " ,\t");
		if (n == NBE_CONFIG_MAX_KEYS_FILES - 1) {
			free_pathlist(tmp);
			return nbe_error_set(err, -EINVAL, "%s: authorized_keys: at most %d files",
					     where, NBE_CONFIG_MAX_KEYS_FILES - 1);
		}
		if (*p != '/') {
			free_pathlist(tmp);
			return nbe_error_set(err, -EINVAL,
					     "%s: authorized_keys: '%.*s' is not an absolute path",
					     where, (int)(len > 200 ? 200 : len), p);
		}
		tmp[n] = nbe_strndup(p, len);
		if (!tmp[n]) {
			free_pathlist(tmp);
			return nbe_error_set(err, -ENOMEM, "out of memory");
		}
		n++;
		p += len;
	}
	free_pathlist(list);
	memcpy(list, tmp, sizeof(tmp));
	return 0;
}

/* Sets @def from @value; @where prefixes messages ("file:line" or "NAME"). */
static int set_value(struct nbe_config *cfg, const struct key_def *def, const char *value,
		     const char *where, struct nbe_error *err)
{
	void *slot = (char *)cfg + def->offset;
	int64_t v;
	int r = 0;

	cfg->explicit_keys |= UINT64_C(1) << (def - keys);
	switch (def->type) {
	case T_STRING:
	case T_PATH:
		if (!*value)
			return nbe_error_set(err, -EINVAL, "%s: %s: empty value", where, def->name);
		r = set_string(slot, value);
		break;
	case T_ENDPOINT: {
		char *s;
		r = normalize_endpoint(value, &s);
		if (r == -EINVAL)
			return nbe_error_set(err, r,
					     "%s: %s: '%.200s' is not an http(s) URL or host name",
					     where, def->name, value);
		if (r == 0) {
			nbe_free(*(char **)slot);
			*(char **)slot = s;
		}
		break;
	}
	case T_NUVLABOX_ID: {
		char *s = nbe_nuvlabox_id_normalize(value);
		if (!s)
			return nbe_error_set(err, -EINVAL,
					     "%s: %s: '%.100s' is not nuvlabox/<uuid> or a uuid",
					     where, def->name, value);
		nbe_free(*(char **)slot);
		*(char **)slot = s;
		break;
	}
	case T_CREDENTIAL:
		if (!nbe_href_is(value, "credential"))
			return nbe_error_set(err, -EINVAL,
					     "%s: %s: '%.100s' is not credential/<uuid>", where,
					     def->name, value);
		r = set_string(slot, value);
		break;
	case T_BOOL:
		if (nbe_parse_bool(value, slot) < 0)
			return nbe_error_set(err, -EINVAL, "%s: %s: '%.64s' is not true or false",
					     where, def->name, value);
		break;
	case T_SIZE:
	case T_DURATION:
	case T_INT:
		if (def->type == T_SIZE)
			r = nbe_parse_size(value, &v);
		else if (def->type == T_DURATION)
			r = nbe_parse_duration_ms(value, &v);
		else
			r = nbe_parse_int64(value, INT64_MIN, INT64_MAX, &v);
		if (r < 0)
			return nbe_error_set(err, -EINVAL, "%s: %s: '%.64s' is not a valid %s",
					     where, def->name, value,
					     def->type == T_SIZE ? "size (512K, 64M, 1G)"
					     : def->type == T_DURATION
						     ? "duration (500ms, 10s, 5m, 1h)"
						     : "number");
		if (v < def->min || v > def->max)
			return nbe_error_set(err, -EINVAL,
					     "%s: %s: '%.64s' is out of range (%" PRId64
					     "..%" PRId64 "%s)",
					     where, def->name, value, def->min, def->max,
					     def->type == T_DURATION ? " ms" : "");
		*(int64_t *)slot = v;
		break;
	case T_LOGLEVEL: {
		bool found = false;
		for (int l = NBE_LOG_ERROR; l <= NBE_LOG_DEBUG; l++) {
			if (strcmp(value, level_names[l]) == 0) {
				*(enum nbe_log_level *)slot = (enum nbe_log_level)l;
				found = true;
			}
		}
		if (!found)
			return nbe_error_set(
				err, -EINVAL,
				"%s: %s: '%.64s' is not one of error, warning, notice, "
				"info, debug",
				where, def->name, value);
		break;
	}
	case T_PATHLIST:
		return set_pathlist(slot, value, err, where);
	}
	if (r == -ENOMEM)
		return nbe_error_set(err, r, "out of memory");
	return r;
}

int nbe_config_set(struct nbe_config *cfg, const char *key, const char *value,
		   struct nbe_error *err)
{
	const struct key_def *def = find_key(key);

	if (!def)
		return nbe_error_set(err, -EINVAL, "unknown configuration key '%.64s'", key);
	return set_value(cfg, def, value, "option", err);
}

static int set_default_keys_path(struct nbe_config *cfg, nbe_getenv_fn getenv_fn)
{
	const char *home = getenv_fn ? getenv_fn("HOST_HOME") : NULL;
	char *p;

	if (home && *home == '/') {
		p = nbe_path_join(home, ".ssh/authorized_keys");
	} else {
		p = nbe_strdup("/root/.ssh/authorized_keys");
	}
	if (!p)
		return -ENOMEM;
	free_pathlist(cfg->authorized_keys);
	cfg->authorized_keys[0] = p;
	return 0;
}

int nbe_config_defaults(struct nbe_config *cfg, nbe_getenv_fn getenv_fn)
{
	const char *rt = getenv_fn ? getenv_fn("RUNTIME_DIRECTORY") : NULL;

	memset(cfg, 0, sizeof(*cfg));
	cfg->insecure = false;
	cfg->max_buffer_bytes = 64 * 1024 * 1024;
	cfg->max_events = 1000000;
	cfg->keep_sent = 1000;
	cfg->retry_base_ms = 1000;
	cfg->retry_cap_ms = 5 * 60 * 1000;
	cfg->request_timeout_ms = 30 * 1000;
	cfg->connect_timeout_ms = 10 * 1000;
	cfg->busy_timeout_ms = 5 * 1000;
	cfg->lookup_delay_ms = 2 * 1000;
	cfg->state_check_interval_ms = 3600 * 1000;
	cfg->max_in_flight = 8;
	cfg->log_level = NBE_LOG_INFO;
	cfg->job_flush_timeout_ms = 10 * 1000;
	cfg->heartbeat_interval_ms = 20 * 1000;
	if (set_string(&cfg->endpoint, "https://nuvla.io") < 0 ||
	    set_string(&cfg->reboot_command, "systemctl reboot") < 0 ||
	    set_string(&cfg->nuvlaedge_dir, "/var/lib/nuvlaedge") < 0 ||
	    set_string(&cfg->state_dir, "/var/lib/nuvlabox-event") < 0 ||
	    set_string(&cfg->boot_id_file, NBE_BOOT_ID_FILE) < 0 ||
	    set_string(&cfg->timesync_file, NBE_TIMESYNC_FILE) < 0 ||
	    set_default_keys_path(cfg, getenv_fn) < 0)
		goto err_oom;
	/* systemd's RUNTIME_DIRECTORY may list several, colon-separated */
	if (rt && *rt == '/') {
		cfg->runtime_dir = nbe_strndup(rt, strcspn(rt, ":"));
		if (!cfg->runtime_dir)
			goto err_oom;
	} else if (set_string(&cfg->runtime_dir, "/run/nuvlabox-event") < 0) {
		goto err_oom;
	}
	return 0;
err_oom:
	nbe_config_free(cfg);
	return -ENOMEM;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

int nbe_config_load_text(struct nbe_config *cfg, const char *text, const char *origin,
			 struct nbe_error *err)
{
	int seen_line[sizeof(keys) / sizeof(keys[0])] = { 0 };
	const char *p = text;
	int lineno = 0;
	size_t bad;

	if (!nbe_utf8_valid(text, strlen(text), &bad))
		return nbe_error_set(err, -EINVAL, "%s: invalid UTF-8 at byte %zu", origin, bad);
	while (*p) {
		char line[LINE_MAX_BYTES + 1], where[300], *key, *value, *eq, *hash;
		size_t len = strcspn(p, "\n");
		const struct key_def *def;
		int r;

		lineno++;
		snprintf(where, sizeof(where), "%s:%d", origin, lineno);
		if (len > LINE_MAX_BYTES)
			return nbe_error_set(err, -EINVAL, "%s: line longer than %d bytes", where,
					     LINE_MAX_BYTES);
		memcpy(line, p, len);
		line[len] = '\0';
		p += len;
		if (*p == '\n')
			p++;

		key = trim(line);
		if (*key == '#' || *key == '\0')
			continue;
		eq = strchr(key, '=');
		if (!eq)
			return nbe_error_set(err, -EINVAL, "%s: expected 'key = value'", where);
		*eq = '\0';
		key = trim(key);
		value = trim(eq + 1);
		if (*value == '"') {
			/* a quoted value may hold '#'; only a comment may follow it */
			char *close = strchr(value + 1, '"'), *rest;
			if (!close)
				return nbe_error_set(err, -EINVAL, "%s: unterminated quote", where);
			*close = '\0';
			rest = trim(close + 1);
			if (*rest && *rest != '#')
				return nbe_error_set(err, -EINVAL,
						     "%s: text after the closing quote", where);
			value++;
		} else {
			/* a comment after the value starts with whitespace and '#' */
			for (hash = value; (hash = strchr(hash, '#')) != NULL; hash++) {
				if (hash > value && (hash[-1] == ' ' || hash[-1] == '\t')) {
					*hash = '\0';
					break;
				}
			}
			value = trim(value);
		}
		def = find_key(key);
		if (!def)
			return nbe_error_set(err, -EINVAL, "%s: unknown key '%.64s'", where, key);
		if (seen_line[def - keys])
			return nbe_error_set(err, -EINVAL, "%s: '%s' already set on line %d", where,
					     key, seen_line[def - keys]);
		seen_line[def - keys] = lineno;
		r = set_value(cfg, def, value, where, err);
		if (r < 0)
			return r;
	}
	return 0;
}

int nbe_config_load_file(struct nbe_config *cfg, const char *path, bool required,
			 struct nbe_error *err)
{
	char *text;
	size_t len;
	int r = nbe_read_file(path, NBE_CONFIG_MAX_BYTES, &text, &len);

	if (r == -ENOENT && !required)
		return 0;
	if (r == -EFBIG)
		return nbe_error_set(err, r, "%s: larger than %d bytes", path,
				     NBE_CONFIG_MAX_BYTES);
	if (r < 0)
		return nbe_error_set(err, r, "%s: %s", path, strerror(-r));
	if (strlen(text) != len) {
		nbe_free(text);
		return nbe_error_set(err, -EINVAL, "%s: contains a NUL byte", path);
	}
	r = nbe_config_load_text(cfg, text, path, err);
	nbe_free(text);
	return r;
}

int nbe_config_apply_env(struct nbe_config *cfg, nbe_getenv_fn getenv_fn, struct nbe_error *err)
{
	static const struct {
		const char *env, *key;
	} map[] = {
		{ "NUVLA_ENDPOINT", "endpoint" },	   { "NUVLABOX_UUID", "nuvlabox_id" },
		{ "NUVLAEDGE_UUID", "nuvlabox_id" }, /* the newer name wins */
		{ "NUVLA_ENDPOINT_INSECURE", "insecure" }, { "NUVLAEDGE_API_KEY", "api_key" },
	};
	const char *v;
	int r;

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		v = getenv_fn(map[i].env);
		if (!v || !*v)
			continue;
		r = set_value(cfg, find_key(map[i].key), v, map[i].env, err);
		if (r < 0)
			return r;
	}
	v = getenv_fn("NUVLAEDGE_API_SECRET");
	if (v && *v && set_string(&cfg->api_secret, v) < 0)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	return 0;
}

static bool is_explicit(const struct nbe_config *cfg, const char *name)
{
	const struct key_def *def = find_key(name);

	return def && (cfg->explicit_keys & (UINT64_C(1) << (def - keys)));
}

static int take(char **slot, char **from)
{
	nbe_free(*slot);
	*slot = *from;
	*from = NULL;
	return 0;
}

/*
 * The credential `activate` wrote into the state directory, for what the
 * file, the environment and flags left unset. A bad file is a note, as for
 * NuvlaEdge's files. Returns 0 or -ENOMEM.
 */
static int apply_own_credential(struct nbe_config *cfg)
{
	struct nbe_credential c;
	struct nbe_error err = { { 0 } };
	char *path;
	int r;

	if (cfg->api_key || cfg->api_secret || cfg->api_secret_file)
		return 0;
	path = nbe_path_join(cfg->state_dir, NBE_CREDENTIAL_FILE);
	if (!path)
		return -ENOMEM;
	r = nbe_credential_read(path, &c, &err);
	if (r == -ENOMEM) {
		nbe_free(path);
		return r;
	}
	if (r < 0) {
		nbe_free(path);
		if (r == -ENOENT)
			return 0;
		cfg->identity_note = nbe_strdup(err.msg);
		return cfg->identity_note ? 0 : -ENOMEM;
	}
	if (cfg->nuvlabox_id && strcmp(cfg->nuvlabox_id, c.nuvlabox_id) != 0) {
		char note[NBE_ERROR_MAX];
		snprintf(note, sizeof(note), "%s belongs to %s, not to the configured %s; not used",
			 path, c.nuvlabox_id, cfg->nuvlabox_id);
		nbe_free(path);
		nbe_credential_clear(&c);
		cfg->identity_note = nbe_strdup(note);
		return cfg->identity_note ? 0 : -ENOMEM;
	}
	if (!cfg->nuvlabox_id)
		take(&cfg->nuvlabox_id, &c.nuvlabox_id);
	take(&cfg->api_key, &c.api_key);
	take(&cfg->api_secret, &c.api_secret);
	nbe_credential_clear(&c);
	cfg->identity_source = path;
	return 0;
}

int nbe_config_apply_nuvlaedge(struct nbe_config *cfg)
{
	static const char *const legacy[] = { "/srv/nuvlaedge/shared", "/srv/nuvlabox/shared" };
	struct nbe_nuvlaedge_identity id;
	struct nbe_error err = { { 0 } };
	char *ep;
	int r;

	nbe_free(cfg->identity_note);
	cfg->identity_note = NULL;
	nbe_free(cfg->identity_source);
	cfg->identity_source = NULL;
	r = apply_own_credential(cfg);
	if (r < 0)
		return r;
	if (cfg->nuvlabox_id && cfg->api_key)
		return 0; /* configured: NuvlaEdge's files are not needed */
	r = nbe_nuvlaedge_read(cfg->nuvlaedge_dir, &id, &err);
	for (size_t i = 0; r == -ENOENT && !is_explicit(cfg, "nuvlaedge_dir") &&
			   i < sizeof(legacy) / sizeof(legacy[0]);
	     i++) {
		struct nbe_error e2 = { { 0 } };
		r = nbe_nuvlaedge_read(legacy[i], &id, &e2);
		if (r != -ENOENT)
			err = e2;
	}
	if (r < 0) {
		if (cfg->identity_note)
			return 0; /* what went wrong with credential.json says more */
		cfg->identity_note = nbe_strdup(err.msg);
		return cfg->identity_note ? 0 : -ENOMEM;
	}
	if (!cfg->nuvlabox_id && id.nuvlabox_id)
		take(&cfg->nuvlabox_id, &id.nuvlabox_id);
	if (!cfg->api_key && id.api_key && !cfg->api_secret && !cfg->api_secret_file) {
		take(&cfg->api_key, &id.api_key);
		take(&cfg->api_secret, &id.api_secret);
	}
	if (id.endpoint && !is_explicit(cfg, "endpoint") &&
	    normalize_endpoint(id.endpoint, &ep) == 0)
		take(&cfg->endpoint, &ep);
	if (id.insecure >= 0 && !is_explicit(cfg, "insecure"))
		cfg->insecure = id.insecure == 1;
	cfg->identity_source = nbe_strdup(id.source);
	nbe_nuvlaedge_identity_clear(&id);
	return cfg->identity_source ? 0 : -ENOMEM;
}

int nbe_config_validate(const struct nbe_config *cfg, struct nbe_error *err)
{
	if (cfg->retry_base_ms > cfg->retry_cap_ms)
		return nbe_error_set(err, -EINVAL,
				     "retry_base (%" PRId64
				     " ms) is larger than retry_cap (%" PRId64 " ms)",
				     cfg->retry_base_ms, cfg->retry_cap_ms);
	if (!cfg->client_cert != !cfg->client_key)
		return nbe_error_set(err, -EINVAL,
				     "client_cert and client_key must be set together");
	if (cfg->state_dir[0] != '/')
		return nbe_error_set(err, -EINVAL, "state_dir '%s' is not an absolute path",
				     cfg->state_dir);
	return 0;
}

static int check_private(const char *what, const char *path, struct nbe_error *err)
{
	struct stat st;

	if (stat(path, &st) != 0)
		return nbe_error_set(err, -errno, "%s %s: %s", what, path, strerror(errno));
	if (st.st_mode & 0077)
		return nbe_error_set(
			err, -EPERM,
			"%s %s is readable by group or others (mode %04o); refusing it "
			"(chmod 600)",
			what, path, (unsigned)(st.st_mode & 07777));
	return 0;
}

int nbe_config_check_key(const struct nbe_config *cfg, struct nbe_error *err)
{
	return cfg->client_key ? check_private("client key", cfg->client_key, err) : 0;
}

int nbe_config_read_secret(const struct nbe_config *cfg, char **ret, struct nbe_error *err)
{
	char *text;
	size_t len;
	int r;

	*ret = NULL;
	if (cfg->api_secret) {
		*ret = nbe_strdup(cfg->api_secret);
		return *ret ? 0 : nbe_error_set(err, -ENOMEM, "out of memory");
	}
	if (!cfg->api_secret_file)
		return 0;
	r = check_private("api secret file", cfg->api_secret_file, err);
	if (r < 0)
		return r;
	r = nbe_read_file(cfg->api_secret_file, 4096, &text, &len);
	if (r < 0)
		return nbe_error_set(err, r, "api secret file %s: %s", cfg->api_secret_file,
				     r == -EFBIG ? "larger than 4096 bytes" : strerror(-r));
	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
		text[--len] = '\0';
	if (len == 0 || strlen(text) != len) {
		nbe_free_secret(text, len);
		return nbe_error_set(err, -EINVAL, "api secret file %s is empty or not text",
				     cfg->api_secret_file);
	}
	*ret = text;
	return 0;
}

int nbe_config_load(struct nbe_config *cfg, const struct nbe_config_source *src,
		    struct nbe_error *err)
{
	int r = nbe_config_defaults(cfg, src->getenv_fn);

	if (r < 0)
		return nbe_error_set(err, r, "out of memory");
	r = nbe_config_load_file(cfg, src->path, src->required, err);
	if (r == 0)
		r = nbe_config_apply_env(cfg, src->getenv_fn, err);
	for (const char *const *f = src->flags; r == 0 && f && f[0]; f += 2)
		r = nbe_config_set(cfg, f[0], f[1], err);
	if (r == 0 && src->identity && nbe_config_apply_nuvlaedge(cfg) < 0)
		r = nbe_error_set(err, -ENOMEM, "out of memory");
	if (r == 0)
		r = nbe_config_validate(cfg, err);
	if (r < 0)
		nbe_config_free(cfg);
	return r;
}

void nbe_config_free(struct nbe_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		void *slot = (char *)cfg + keys[i].offset;
		switch (keys[i].type) {
		case T_STRING:
		case T_PATH:
		case T_ENDPOINT:
		case T_NUVLABOX_ID:
		case T_CREDENTIAL:
			nbe_free(*(char **)slot);
			*(char **)slot = NULL;
			break;
		case T_PATHLIST:
			free_pathlist(slot);
			break;
		default:
			break;
		}
	}
	nbe_free(cfg->identity_note);
	cfg->identity_note = NULL;
	nbe_free(cfg->identity_source);
	cfg->identity_source = NULL;
	nbe_free_secret_str(cfg->api_secret);
	cfg->api_secret = NULL;
}
