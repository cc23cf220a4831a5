#include "keywatch.h"

#include "alloc.h"
#include "clock.h"
#include "fsutil.h"
#include "json.h"
#include "sshkeys.h"
#include "watch.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#define KEYS_FILE_MAX (1024 * 1024)
#define MAX_KEYS      1024
#define META_PREFIX   "ssh_keys:"

struct keywatch {
	struct nbe_buffer *buf;
	char *paths[NBE_CONFIG_MAX_KEYS_FILES];
	char *boot_id;
	char *timesync_file;
	int fd;
	int last_errno[NBE_CONFIG_MAX_KEYS_FILES]; /* to report a failure once */
};

struct keyset {
	struct nbe_sshkey keys[MAX_KEYS];
	size_t n;
};

void keywatch_free(struct keywatch *kw)
{
	if (!kw)
		return;
	for (int i = 0; i < NBE_CONFIG_MAX_KEYS_FILES; i++)
		nbe_free(kw->paths[i]);
	nbe_free(kw->boot_id);
	nbe_free(kw->timesync_file);
	if (kw->fd >= 0)
		close(kw->fd);
	nbe_free(kw);
}

int keywatch_fd(const struct keywatch *kw)
{
	return kw->fd;
}

int keywatch_new(struct nbe_buffer *buf, char *const *paths, const char *boot_id,
		 const char *timesync_file, struct keywatch **ret, struct nbe_error *err)
{
	struct keywatch *kw = nbe_calloc(1, sizeof(*kw));

	if (!kw)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	kw->fd = -1;
	kw->buf = buf;
	kw->boot_id = nbe_strdup(boot_id);
	kw->timesync_file = nbe_strdup(timesync_file);
	if (!kw->boot_id || (timesync_file && !kw->timesync_file))
		goto err_oom;
	for (int i = 0; i < NBE_CONFIG_MAX_KEYS_FILES && paths[i]; i++) {
		kw->paths[i] = nbe_strdup(paths[i]);
		if (!kw->paths[i])
			goto err_oom;
	}
	kw->fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (kw->fd < 0) {
		int r = -errno;
		keywatch_free(kw);
		return nbe_error_set(err, r, "inotify: %s", strerror(-r));
	}
	for (int i = 0; kw->paths[i]; i++)
		watch_path(kw->fd, kw->paths[i]);
	*ret = kw;
	return 0;
err_oom:
	keywatch_free(kw);
	return nbe_error_set(err, -ENOMEM, "out of memory");
}

bool keywatch_read(struct keywatch *kw)
{
	return watch_drain(kw->fd) == 1;
}

/* Reads the keys of @path into @set. A missing file holds no keys. */
static int read_keys(const char *path, struct keyset *set)
{
	char *text = NULL;
	size_t len;
	int r = nbe_read_file(path, KEYS_FILE_MAX, &text, &len);

	set->n = 0;
	if (r == -ENOENT || r == -ENOTDIR)
		return 0;
	if (r < 0)
		return r;
	r = nbe_sshkeys_parse(text, len, set->keys, MAX_KEYS, &set->n);
	nbe_free(text);
	return r;
}

static bool set_has(const struct keyset *set, const char *fp)
{
	for (size_t i = 0; i < set->n; i++) {
		if (strcmp(set->keys[i].fingerprint, fp) == 0)
			return true;
	}
	return false;
}

/* The stored set (fingerprint, type, comment) as JSON, and back. */
static char *set_to_json(const struct keyset *set)
{
	cJSON *arr = cJSON_CreateArray();
	char *text = NULL;

	if (!arr)
		return NULL;
	for (size_t i = 0; i < set->n; i++) {
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(arr, o) ||
		    !cJSON_AddStringToObject(o, "fingerprint", set->keys[i].fingerprint) ||
		    !cJSON_AddStringToObject(o, "type", set->keys[i].type) ||
		    !cJSON_AddStringToObject(o, "comment", set->keys[i].comment)) {
			if (o && !o->prev)
				cJSON_Delete(o);
			goto out;
		}
	}
	text = cJSON_PrintUnformatted(arr);
out:
	cJSON_Delete(arr);
	return text;
}

static void set_from_json(const char *text, struct keyset *set)
{
	cJSON *arr = cJSON_Parse(text), *o;

	set->n = 0;
	cJSON_ArrayForEach(o, arr)
	{
		cJSON *fp = cJSON_GetObjectItemCaseSensitive(o, "fingerprint");
		cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
		cJSON *comment = cJSON_GetObjectItemCaseSensitive(o, "comment");
		struct nbe_sshkey *k;

		if (!cJSON_IsString(fp) || set->n >= MAX_KEYS)
			continue;
		k = &set->keys[set->n++];
		memset(k, 0, sizeof(*k));
		snprintf(k->fingerprint, sizeof(k->fingerprint), "%s", fp->valuestring);
		snprintf(k->type, sizeof(k->type), "%s",
			 cJSON_IsString(type) ? type->valuestring : "");
		snprintf(k->comment, sizeof(k->comment), "%s",
			 cJSON_IsString(comment) ? comment->valuestring : "");
	}
	cJSON_Delete(arr);
}

/* Builds the completion of adding or revoking @k, linked to the request a
 * producer recorded for that fingerprint, if any. */
static int key_event(struct keywatch *kw, const char *path, const struct nbe_sshkey *k, bool added,
		     struct nbe_event *ev, struct nbe_error *err)
{
	const char *op = added ? "nuvlabox.add-ssh-key" : "nuvlabox.revoke-ssh-key";
	char name[64];
	struct nbe_event req = { 0 };
	struct nbe_event_input in = { 0 };
	cJSON *d = cJSON_CreateObject();
	char *details = NULL;
	int r;

	if (!d || !cJSON_AddStringToObject(d, "fingerprint", k->fingerprint) ||
	    !cJSON_AddStringToObject(d, "type", k->type) ||
	    !cJSON_AddStringToObject(d, "comment", k->comment) ||
	    !cJSON_AddStringToObject(d, "file", path) || !(details = cJSON_PrintUnformatted(d))) {
		cJSON_Delete(d);
		return nbe_error_set(err, -ENOMEM, "out of memory");
	}
	cJSON_Delete(d);
	snprintf(name, sizeof(name), "%s.completed", op);
	in.name = name;
	in.details_json = details;
	r = nbe_buffer_find_open_detail(kw->buf, op, "fingerprint", k->fingerprint, &req, err);
	if (r == 0) {
		in.parent = req.id;
		in.job = req.job;
	} else if (r != -ENOENT) {
		nbe_free(details);
		return r;
	}
	r = nbe_event_init_capture(ev, &in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(),
				   kw->boot_id, nbe_clock_synced(kw->timesync_file), err);
	nbe_event_clear(&req);
	nbe_free(details);
	return r;
}

/* Compares one file with what was last seen of it and records the changes. */
static int scan_one(struct keywatch *kw, int idx, int *ret_events, struct nbe_error *err)
{
	const char *path = kw->paths[idx];
	struct keyset *now = nbe_malloc(sizeof(*now)), *was = nbe_malloc(sizeof(*was));
	struct nbe_event *evs = NULL;
	char key[PATH_MAX + 16], *stored = NULL, *text = NULL;
	size_t nev = 0;
	int r;

	if (!now || !was) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	r = read_keys(path, now);
	if (r < 0) {
		if (r != kw->last_errno[idx])
			nbe_error_set(err, r, "%s: %s", path, strerror(-r));
		else
			r = 0; /* reported already */
		kw->last_errno[idx] = r ? r : kw->last_errno[idx];
		goto out;
	}
	kw->last_errno[idx] = 0;
	snprintf(key, sizeof(key), META_PREFIX "%s", path);
	r = nbe_buffer_meta_get(kw->buf, key, &stored, err);
	if (r < 0)
		goto out;
	text = set_to_json(now);
	if (!text) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if (!stored) {
		/* first time this file is watched: what is there is the baseline */
		r = nbe_buffer_meta_set(kw->buf, key, text, err);
		goto out;
	}
	set_from_json(stored, was);
	evs = nbe_calloc(now->n + was->n + 1, sizeof(*evs));
	if (!evs) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; r == 0 && i < was->n; i++) {
		if (!set_has(now, was->keys[i].fingerprint))
			r = key_event(kw, path, &was->keys[i], false, &evs[nev++], err);
	}
	for (size_t i = 0; r == 0 && i < now->n; i++) {
		if (!set_has(was, now->keys[i].fingerprint))
			r = key_event(kw, path, &now->keys[i], true, &evs[nev++], err);
	}
	if (r == 0 && (nev > 0 || strcmp(stored, text) != 0))
		r = nbe_buffer_append_batch_with_meta(kw->buf, evs, nev, key, text, err);
	if (r == 0)
		*ret_events += (int)nev;
out:
	for (size_t i = 0; evs && i < nev; i++)
		nbe_event_clear(&evs[i]);
	nbe_free(evs);
	nbe_free(stored);
	nbe_free(text);
	nbe_free(now);
	nbe_free(was);
	return r;
}

int keywatch_scan(struct keywatch *kw, int *ret_events, struct nbe_error *err)
{
	int r = 0;

	*ret_events = 0;
	for (int i = 0; kw->paths[i]; i++) {
		struct nbe_error e = { { 0 } };
		int ri;

		watch_path(kw->fd, kw->paths[i]); /* its directory may exist now */
		ri = scan_one(kw, i, ret_events, &e);
		if (ri < 0 && r == 0) {
			r = ri;
			if (err)
				*err = e;
		}
	}
	return r;
}
