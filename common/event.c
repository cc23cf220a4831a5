#include "event.h"

#include "alloc.h"
#include "json.h"
#include "utf8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <string.h>

/* Parsing more than this much details text is refused before cJSON sees it. */
#define DETAILS_INPUT_MAX (4 * NBE_DETAILS_MAX)

static const char *const lifecycle_ops[] = {
	"activate", "commission", "decommission", "reboot", "add-ssh-key", "revoke-ssh-key",
};

static const char *const reserved_keys[] = {
	"device-event-id", "seq", "boot-id", "clock", "agent-version", "device-timestamp",
};

void nbe_event_clear(struct nbe_event *ev)
{
	if (!ev)
		return;
	nbe_free(ev->message);
	nbe_free(ev->details);
	nbe_free(ev->job);
	nbe_free(ev->parent);
	nbe_free(ev->links);
	nbe_free(ev->parent_fallback);
	nbe_free(ev->server_id);
	nbe_free(ev->last_error);
	nbe_free(ev->wire);
	memset(ev, 0, sizeof(*ev));
}

bool nbe_event_name_valid(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > NBE_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
		if (i > 0)
			ok = ok || c == '.' || c == '_' || c == '-';
		if (!ok)
			return false;
	}
	return true;
}

bool nbe_event_is_lifecycle_op(const char *op, size_t len)
{
	for (size_t i = 0; i < sizeof(lifecycle_ops) / sizeof(lifecycle_ops[0]); i++) {
		if (strlen(lifecycle_ops[i]) == len && memcmp(lifecycle_ops[i], op, len) == 0)
			return true;
	}
	return false;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n > m && memcmp(s + n - m, suffix, m) == 0;
}

enum nbe_phase nbe_event_phase_for_name(const char *name)
{
	if (ends_with(name, ".completed"))
		return NBE_PHASE_COMPLETED;
	if (ends_with(name, ".failed"))
		return NBE_PHASE_FAILED;
	if (strncmp(name, "nuvlabox.", 9) == 0 &&
	    nbe_event_is_lifecycle_op(name + 9, strlen(name + 9)))
		return NBE_PHASE_STARTED;
	return NBE_PHASE_NONE;
}

static const char *const severity_names[] = { "low", "medium", "high", "critical" };
static const char *const phase_names[] = { NULL, "started", "completed", "failed" };
static const char *const state_names[] = { "pending", "sent", "dead" };

const char *nbe_severity_str(enum nbe_severity s)
{
	return (unsigned)s < 4 ? severity_names[s] : "medium";
}

int nbe_severity_parse(const char *s, enum nbe_severity *ret)
{
	for (unsigned i = 0; i < 4; i++) {
		if (strcmp(s, severity_names[i]) == 0) {
			*ret = (enum nbe_severity)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *nbe_phase_str(enum nbe_phase p)
{
	return (unsigned)p < 4 ? phase_names[p] : NULL;
}

const char *nbe_state_str(enum nbe_state s)
{
	return (unsigned)s < 3 ? state_names[s] : "pending";
}

int nbe_state_parse(const char *s, enum nbe_state *ret)
{
	for (unsigned i = 0; i < 3; i++) {
		if (strcmp(s, state_names[i]) == 0) {
			*ret = (enum nbe_state)i;
			return 0;
		}
	}
	return -EINVAL;
}

bool nbe_event_detail_key_reserved(const char *key)
{
	for (size_t i = 0; i < sizeof(reserved_keys) / sizeof(reserved_keys[0]); i++) {
		if (strcmp(key, reserved_keys[i]) == 0)
			return true;
	}
	return false;
}

static bool detail_key_valid(const char *k, size_t n)
{
	if (n == 0 || n > NBE_DETAIL_KEY_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = k[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return false;
	}
	return true;
}

/* Whether the JSON text has a \u0000 escape in a string, which cJSON would
 * silently cut the string at. */
static bool has_nul_escape(const char *s)
{
	bool in_string = false;

	for (; *s; s++) {
		if (!in_string) {
			in_string = *s == '"';
			continue;
		}
		if (*s == '"') {
			in_string = false;
		} else if (*s == '\\') {
			if (s[1] == 'u' && strncmp(s + 2, "0000", 4) == 0)
				return true;
			if (s[1])
				s++;
		}
	}
	return false;
}

/* Whether every number in @j is finite (cJSON turns 1e400 into inf, and
 * prints it as null). */
/* NOLINTNEXTLINE(misc-no-recursion): depth <= CJSON_NESTING_LIMIT (1000), enforced by the parse */
static bool numbers_finite(const cJSON *j)
{
	for (const cJSON *it = j; it; it = it->next) {
		if (cJSON_IsNumber(it) && !isfinite(it->valuedouble))
			return false;
		if (it->child && !numbers_finite(it->child))
			return false;
	}
	return true;
}

/* Parses and checks --details-json; returns a new object in *ret. */
static int parse_details_json(const char *text, cJSON **ret, struct nbe_error *err)
{
	size_t len = strlen(text), bad;
	const char *end = NULL;
	unsigned long failures = nbe_alloc_failures();
	cJSON *obj;

	if (len > DETAILS_INPUT_MAX)
		return nbe_error_set(err, -E2BIG, "details: %zu bytes, over the limit of %d", len,
				     NBE_DETAILS_MAX);
	if (!nbe_utf8_valid(text, len, &bad))
		return nbe_error_set(err, -EINVAL, "details: invalid UTF-8 at byte %zu", bad);
	if (has_nul_escape(text))
		return nbe_error_set(err, -EINVAL, "details: \\u0000 is not allowed in a string");
	obj = cJSON_ParseWithOpts(text, &end, true);
	if (!obj) {
		if (nbe_alloc_failures() != failures)
			return nbe_error_set(err, -ENOMEM, "details: out of memory");
		return nbe_error_set(err, -EINVAL, "details: invalid JSON at byte %zu",
				     (size_t)(end - text));
	}
	if (!cJSON_IsObject(obj)) {
		cJSON_Delete(obj);
		return nbe_error_set(err, -EINVAL, "details: must be a JSON object");
	}
	if (!numbers_finite(obj->child)) {
		cJSON_Delete(obj);
		return nbe_error_set(err, -EINVAL, "details: a number is out of range");
	}
	*ret = obj;
	return 0;
}

static int check_detail_key(cJSON *obj, const char *key, struct nbe_error *err)
{
	if (nbe_event_detail_key_reserved(key))
		return nbe_error_set(err, -EINVAL, "details: key '%s' is reserved for the agent",
				     key);
	if (obj && cJSON_GetObjectItemCaseSensitive(obj, key))
		return nbe_error_set(err, -EINVAL, "details: key '%s' given twice", key);
	return 0;
}

/* Builds the canonical details text from --details-json and --detail pairs. */
static int build_details(const struct nbe_event_input *in, char **ret, struct nbe_error *err)
{
	cJSON *obj = NULL, *it;
	char *text;
	int r;

	if (in->details_json) {
		r = parse_details_json(in->details_json, &obj, err);
		if (r < 0)
			return r;
		cJSON_ArrayForEach(it, obj)
		{
			/* duplicate keys inside the JSON text: cJSON keeps both */
			for (cJSON *o = obj->child; o != it; o = o->next) {
				if (strcmp(o->string, it->string) == 0) {
					r = nbe_error_set(err, -EINVAL,
							  "details: key '%s' given twice",
							  it->string);
					goto err_delete;
				}
			}
			r = check_detail_key(NULL, it->string, err);
			if (r < 0)
				goto err_delete;
		}
	} else {
		obj = cJSON_CreateObject();
		if (!obj)
			return nbe_error_set(err, -ENOMEM, "out of memory");
	}
	for (const char *const *p = in->detail_pairs; p && *p; p++) {
		const char *eq = strchr(*p, '=');
		size_t klen, bad;
		char key[NBE_DETAIL_KEY_MAX + 1];

		if (!eq) {
			r = nbe_error_set(err, -EINVAL, "--detail '%.64s': expected KEY=VALUE", *p);
			goto err_delete;
		}
		klen = (size_t)(eq - *p);
		if (!detail_key_valid(*p, klen)) {
			r = nbe_error_set(err, -EINVAL,
					  "--detail: key '%.*s' must be 1-%d characters of "
					  "[A-Za-z0-9_.-]",
					  (int)(klen > 64 ? 64 : klen), *p, NBE_DETAIL_KEY_MAX);
			goto err_delete;
		}
		memcpy(key, *p, klen);
		key[klen] = '\0';
		if (strlen(eq + 1) > NBE_DETAILS_MAX) {
			r = nbe_error_set(err, -E2BIG,
					  "--detail %s: value over the limit of %d bytes", key,
					  NBE_DETAILS_MAX);
			goto err_delete;
		}
		if (!nbe_utf8_valid(eq + 1, strlen(eq + 1), &bad)) {
			r = nbe_error_set(err, -EINVAL, "--detail %s: invalid UTF-8 at byte %zu",
					  key, bad);
			goto err_delete;
		}
		r = check_detail_key(obj, key, err);
		if (r < 0)
			goto err_delete;
		if (!cJSON_AddStringToObject(obj, key, eq + 1)) {
			r = nbe_error_set(err, -ENOMEM, "out of memory");
			goto err_delete;
		}
	}
	text = cJSON_PrintUnformatted(obj);
	cJSON_Delete(obj);
	if (!text)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	if (strlen(text) > NBE_DETAILS_MAX) {
		r = nbe_error_set(err, -E2BIG, "details: %zu bytes, over the limit of %d",
				  strlen(text), NBE_DETAILS_MAX);
		nbe_free(text);
		return r;
	}
	*ret = text;
	return 0;

err_delete:
	cJSON_Delete(obj);
	return r;
}

static int build_links(const char *const *links, char **ret, struct nbe_error *err)
{
	cJSON *arr;
	char *text;

	if (!links || !*links) {
		*ret = NULL;
		return 0;
	}
	arr = cJSON_CreateArray();
	if (!arr)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	for (const char *const *p = links; *p; p++) {
		cJSON *s;

		if (!nbe_href_valid(*p, true)) {
			cJSON_Delete(arr);
			return nbe_error_set(err, -EINVAL,
					     "link '%.128s' is not a Nuvla resource id (type/id)",
					     *p);
		}
		s = cJSON_CreateString(*p);
		if (!s || !cJSON_AddItemToArray(arr, s)) {
			cJSON_Delete(s);
			cJSON_Delete(arr);
			return nbe_error_set(err, -ENOMEM, "out of memory");
		}
	}
	text = cJSON_PrintUnformatted(arr);
	cJSON_Delete(arr);
	if (!text)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	*ret = text;
	return 0;
}

int nbe_event_init_capture(struct nbe_event *ev, const struct nbe_event_input *in, int64_t wall_ms,
			   int64_t boottime_ms, const char *boot_id, bool synced,
			   struct nbe_error *err)
{
	struct nbe_event e = { 0 };
	size_t bad;
	int r;

	if (!in->name || !*in->name)
		return nbe_error_set(err, -EINVAL, "event name missing");
	if (strlen(in->name) > NBE_NAME_MAX)
		return nbe_error_set(err, -E2BIG, "event name longer than %d bytes", NBE_NAME_MAX);
	if (!nbe_event_name_valid(in->name))
		return nbe_error_set(
			err, -EINVAL,
			"event name '%.128s' does not match ^[a-z0-9][a-z0-9._-]{0,127}$",
			in->name);
	memcpy(e.name, in->name, strlen(in->name) + 1);
	e.phase = nbe_event_phase_for_name(e.name);
	e.severity = NBE_SEV_MEDIUM;
	if (in->severity && nbe_severity_parse(in->severity, &e.severity) < 0)
		return nbe_error_set(err, -EINVAL,
				     "severity '%.32s' is not one of low, medium, high, critical",
				     in->severity);
	if (in->job && !nbe_href_is(in->job, "job"))
		return nbe_error_set(err, -EINVAL, "job '%.128s' is not of the form job/<id>",
				     in->job);
	if (in->parent && !nbe_href_valid(in->parent, true) && !nbe_uuid_valid(in->parent))
		return nbe_error_set(err, -EINVAL,
				     "parent '%.128s' is neither a Nuvla resource id (type/id) "
				     "nor a device event id",
				     in->parent);
	if (in->message && *in->message) {
		size_t ml = strlen(in->message);
		if (ml > NBE_MESSAGE_MAX)
			return nbe_error_set(err, -E2BIG,
					     "message: %zu bytes, over the limit of %d", ml,
					     NBE_MESSAGE_MAX);
		if (!nbe_utf8_valid(in->message, ml, &bad))
			return nbe_error_set(err, -EINVAL, "message: invalid UTF-8 at byte %zu",
					     bad);
	}
	if (!boot_id || !nbe_uuid_valid(boot_id))
		return nbe_error_set(err, -EINVAL, "boot id missing or malformed");

	r = build_details(in, &e.details, err);
	if (r < 0)
		goto err_clear;
	r = build_links(in->links, &e.links, err);
	if (r < 0)
		goto err_clear;
	r = -ENOMEM;
	if (in->message && *in->message && !(e.message = nbe_strdup(in->message)))
		goto err_oom;
	if (in->job && !(e.job = nbe_strdup(in->job)))
		goto err_oom;
	if (in->parent) {
		/* device event ids are stored lower-case so lookups match */
		if (!(e.parent = nbe_strdup(in->parent)))
			goto err_oom;
		if (nbe_uuid_valid(e.parent)) {
			for (char *p = e.parent; *p; p++)
				*p = (char)((*p >= 'A' && *p <= 'F') ? *p + 32 : *p);
		}
	}
	r = nbe_uuid_v4(e.id);
	if (r < 0) {
		nbe_error_set(err, r, "no randomness for the event id: %s", strerror(-r));
		goto err_clear;
	}
	e.wall_ms = wall_ms;
	e.boottime_ms = boottime_ms;
	memcpy(e.boot_id, boot_id, NBE_UUID_LEN + 1);
	e.clock_synced = synced;
	e.state = NBE_STATE_PENDING;
	*ev = e;
	return 0;

err_oom:
	nbe_error_set(err, r, "out of memory");
err_clear:
	nbe_event_clear(&e);
	return r;
}
