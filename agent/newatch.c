#include "newatch.h"

#include "alloc.h"
#include "clock.h"
#include "crypto.h"
#include "fsutil.h"
#include "json.h"
#include "nuvlaedge.h"
#include "watch.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define META_ACTIVATED	"ne_activated"
#define META_COMMISSION "ne_commission"
#define COMMISSION_FILE "commission.json"

struct newatch {
	struct nbe_buffer *buf;
	char *dir;
	char *boot_id;
	char *timesync_file;
	int fd;
	int last_errno;
};

void newatch_free(struct newatch *nw)
{
	if (!nw)
		return;
	nbe_free(nw->dir);
	nbe_free(nw->boot_id);
	nbe_free(nw->timesync_file);
	if (nw->fd >= 0)
		close(nw->fd);
	nbe_free(nw);
}

int newatch_fd(const struct newatch *nw)
{
	return nw->fd;
}

bool newatch_read(struct newatch *nw)
{
	return watch_drain(nw->fd) == 1;
}

int newatch_new(struct nbe_buffer *buf, const char *dir, const char *boot_id,
		const char *timesync_file, struct newatch **ret, struct nbe_error *err)
{
	struct newatch *nw = nbe_calloc(1, sizeof(*nw));

	if (!nw)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	nw->fd = -1;
	nw->buf = buf;
	nw->dir = nbe_strdup(dir);
	nw->boot_id = nbe_strdup(boot_id);
	nw->timesync_file = nbe_strdup(timesync_file);
	if (!nw->dir || !nw->boot_id || (timesync_file && !nw->timesync_file)) {
		newatch_free(nw);
		return nbe_error_set(err, -ENOMEM, "out of memory");
	}
	nw->fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (nw->fd < 0) {
		int r = -errno;
		newatch_free(nw);
		return nbe_error_set(err, r, "inotify: %s", strerror(-r));
	}
	watch_dir(nw->fd, nw->dir);
	*ret = nw;
	return 0;
}

static int record(struct newatch *nw, struct nbe_event_input *in, const char *key,
		  const char *value, struct nbe_error *err)
{
	struct nbe_event ev = { 0 };
	int r = nbe_event_init_capture(&ev, in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(),
				       nw->boot_id, nbe_clock_synced(nw->timesync_file), err);

	if (r == 0)
		r = nbe_buffer_append_with_meta(nw->buf, &ev, key, value, err);
	nbe_event_clear(&ev);
	return r;
}

/* The session file appearing: NuvlaEdge activated the device. */
static int scan_activation(struct newatch *nw, int *ret_events, struct nbe_error *err)
{
	char path[PATH_MAX], *seen = NULL, *details = NULL;
	struct nbe_nuvlaedge_identity id = { .insecure = -1 };
	struct nbe_event_input in = { .name = "nuvlabox.activate.completed" };
	const char *links[2] = { NULL, NULL };
	struct stat st;
	bool exists;
	cJSON *d;
	int r;

	snprintf(path, sizeof(path), "%s/%s", nw->dir, NBE_NUVLAEDGE_SESSION);
	exists = stat(path, &st) == 0;
	if (!exists) {
		snprintf(path, sizeof(path), "%s/.activated", nw->dir);
		exists = stat(path, &st) == 0;
	}
	r = nbe_buffer_meta_get(nw->buf, META_ACTIVATED, &seen, err);
	if (r < 0)
		return r;
	if (!seen || (strcmp(seen, "1") == 0) != exists) {
		bool appeared = seen && exists;
		nbe_free(seen);
		if (!appeared) /* the first look, or NuvlaEdge was reset: remember it */
			return nbe_buffer_meta_set(nw->buf, META_ACTIVATED, exists ? "1" : "0",
						   err);
		/* what the files say now: the credential it produced, if readable */
		if (nbe_nuvlaedge_read(nw->dir, &id, NULL) == 0 && id.api_key)
			links[0] = id.api_key;
		d = cJSON_CreateObject();
		if (!d || !cJSON_AddStringToObject(d, "file", path) ||
		    (id.nuvlabox_id && !cJSON_AddStringToObject(d, "nuvlabox", id.nuvlabox_id)) ||
		    !(details = cJSON_PrintUnformatted(d))) {
			cJSON_Delete(d);
			nbe_nuvlaedge_identity_clear(&id);
			return nbe_error_set(err, -ENOMEM, "out of memory");
		}
		cJSON_Delete(d);
		in.details_json = details;
		in.links = links;
		/* the credential is what activation produced: it is the parent too */
		in.parent = links[0];
		r = record(nw, &in, META_ACTIVATED, "1", err);
		if (r == 0)
			(*ret_events)++;
		nbe_free(details);
		nbe_nuvlaedge_identity_clear(&id);
		return r;
	}
	nbe_free(seen);
	return 0;
}

/* A digest per key of the commissioned payload: changes are seen without
 * ever keeping a value. */
static cJSON *digest_payload(cJSON *payload)
{
	cJSON *map = cJSON_CreateObject(), *it;

	if (!map)
		return NULL;
	cJSON_ArrayForEach(it, payload)
	{
		unsigned char h[32];
		char hex[65], *v = cJSON_PrintUnformatted(it);

		if (!v) {
			cJSON_Delete(map);
			return NULL;
		}
		nbe_crypto_sha256(v, strlen(v), h);
		nbe_free(v);
		for (int i = 0; i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", h[i]);
		if (!cJSON_AddStringToObject(map, it->string, hex)) {
			cJSON_Delete(map);
			return NULL;
		}
	}
	return map;
}

static int add_name(cJSON *arr, const char *name)
{
	cJSON *s = cJSON_CreateString(name);

	if (!s || !cJSON_AddItemToArray(arr, s)) {
		cJSON_Delete(s);
		return -ENOMEM;
	}
	return 0;
}

/* The commissioned payload changing: NuvlaEdge commissioned the device. */
static int scan_commission(struct newatch *nw, int *ret_events, struct nbe_error *err)
{
	struct nbe_event_input in = { .name = "nuvlabox.commission.completed" };
	char path[PATH_MAX], *text = NULL, *stored = NULL, *map_text = NULL, *details = NULL;
	cJSON *payload = NULL, *map = NULL, *old = NULL, *d = NULL, *changed, *removed, *it;
	size_t len;
	int r;

	snprintf(path, sizeof(path), "%s/%s", nw->dir, COMMISSION_FILE);
	r = nbe_read_file(path, NBE_NUVLAEDGE_MAX_FILE, &text, &len);
	if (r == -ENOENT)
		text = NULL; /* not commissioned (yet): the empty payload */
	else if (r < 0)
		return nbe_error_set(err, r, "%s: %s", path, strerror(-r));
	payload = text ? cJSON_Parse(text) : cJSON_CreateObject();
	nbe_free(text);
	if (!cJSON_IsObject(payload)) {
		cJSON_Delete(payload);
		/* being written, or corrupt: look again at the next change */
		return nbe_error_set(err, -EINVAL, "%s: not a JSON object; left as it is", path);
	}
	map = digest_payload(payload);
	cJSON_Delete(payload);
	if (!map || !(map_text = cJSON_PrintUnformatted(map))) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	r = nbe_buffer_meta_get(nw->buf, META_COMMISSION, &stored, err);
	if (r < 0)
		goto out;
	if (!stored) {
		r = nbe_buffer_meta_set(nw->buf, META_COMMISSION, map_text, err);
		goto out;
	}
	if (strcmp(stored, map_text) == 0)
		goto out;
	old = cJSON_Parse(stored);
	d = cJSON_CreateObject();
	changed = d ? cJSON_AddArrayToObject(d, "changed") : NULL;
	removed = d ? cJSON_AddArrayToObject(d, "removed") : NULL;
	if (!changed || !removed) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	cJSON_ArrayForEach(it, map)
	{
		cJSON *was = cJSON_GetObjectItemCaseSensitive(old, it->string);
		if ((!cJSON_IsString(was) || strcmp(was->valuestring, it->valuestring) != 0) &&
		    add_name(changed, it->string) < 0) {
			r = nbe_error_set(err, -ENOMEM, "out of memory");
			goto out;
		}
	}
	cJSON_ArrayForEach(it, old)
	{
		if (!cJSON_GetObjectItemCaseSensitive(map, it->string) &&
		    add_name(removed, it->string) < 0) {
			r = nbe_error_set(err, -ENOMEM, "out of memory");
			goto out;
		}
	}
	if (!cJSON_AddStringToObject(d, "file", path) || !(details = cJSON_PrintUnformatted(d))) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	in.details_json = details;
	r = record(nw, &in, META_COMMISSION, map_text, err);
	if (r == 0)
		(*ret_events)++;
out:
	cJSON_Delete(map);
	cJSON_Delete(old);
	cJSON_Delete(d);
	nbe_free(map_text);
	nbe_free(stored);
	nbe_free(details);
	return r;
}

int newatch_scan(struct newatch *nw, int *ret_events, struct nbe_error *err)
{
	struct nbe_error e = { { 0 } };
	int r, r2;

	*ret_events = 0;
	watch_dir(nw->fd, nw->dir); /* it may exist now */
	r = scan_activation(nw, ret_events, &e);
	r2 = scan_commission(nw, ret_events, r < 0 ? NULL : &e);
	if (r == 0)
		r = r2;
	/* each failure once per episode */
	if (r < 0 && r == nw->last_errno)
		return 0;
	nw->last_errno = r;
	if (r < 0 && err)
		*err = e;
	return r;
}
