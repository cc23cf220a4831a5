#include "wire.h"

#include "alloc.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int nbe_wire_timestamp(int64_t ms, char out[NBE_TIMESTAMP_LEN + 1])
{
	char tmp[64]; /* room for any int the compiler imagines */
	struct tm tm;
	time_t secs;

	if (ms < 0 || ms > INT64_C(253402300799999))
		return -ERANGE;
	secs = (time_t)(ms / 1000);
	if (!gmtime_r(&secs, &tm))
		return -ERANGE;
	snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
	if (strlen(tmp) != NBE_TIMESTAMP_LEN)
		return -ERANGE;
	memcpy(out, tmp, NBE_TIMESTAMP_LEN + 1);
	return 0;
}

static int64_t effective_wall(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx)
{
	return ctx->restamp_ms > 0 ? ctx->restamp_ms : ev->wall_ms;
}

const char *nbe_wire_clock_state(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx)
{
	int64_t wall = effective_wall(ev, ctx);

	if (wall < NBE_WIRE_MIN_VALID_MS)
		return "invalid";
	if (ctx->now_synced && wall > ctx->now_ms + NBE_WIRE_MAX_AHEAD_MS)
		return "invalid";
	if (ctx->restamp_ms > 0)
		return "corrected";
	return ev->clock_synced ? "synced" : "unsynced";
}

/* What the UI shows when the producer gave no message. */
static int describe(const struct nbe_event *ev, char *out, size_t size)
{
	const char *name = ev->name;
	const char *job = ev->job ? ev->job : "";
	const char *sep = ev->job ? " for " : "";

	if (strcmp(name, "nuvlabox.reboot.unplanned") == 0)
		return snprintf(out, size,
				"device rebooted without a recorded request (power loss, crash "
				"or watchdog)");
	if (strcmp(name, NBE_EVENT_DROPPED) == 0)
		return snprintf(out, size, "the device's event buffer was full and dropped events");
	if (strcmp(name, NBE_EVENT_BUFFER_RESET) == 0)
		return snprintf(out, size,
				"the device's event buffer was corrupt and has been reset");
	if (strncmp(name, "nuvlabox.", 9) == 0 && ev->phase != NBE_PHASE_NONE) {
		size_t oplen = strlen(name + 9);
		if (ev->phase == NBE_PHASE_COMPLETED)
			oplen -= strlen(".completed");
		else if (ev->phase == NBE_PHASE_FAILED)
			oplen -= strlen(".failed");
		return snprintf(out, size, "%.*s %s on the device%s%s", (int)oplen, name + 9,
				nbe_phase_str(ev->phase), sep, job);
	}
	return snprintf(out, size, "%s on the device%s%s", name, sep, job);
}

/* Appends @s to @arr unless it is there already. */
static int add_unique(cJSON *arr, const char *s)
{
	cJSON *it;

	cJSON_ArrayForEach(it, arr)
	{
		if (cJSON_IsString(it) && strcmp(it->valuestring, s) == 0)
			return 0;
	}
	it = cJSON_CreateString(s);
	if (!it || !cJSON_AddItemToArray(arr, it)) {
		cJSON_Delete(it);
		return -ENOMEM;
	}
	return 0;
}

static int build_links(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx, cJSON *arr)
{
	const char *p = ctx->parent_href;
	int r;

	if (ev->job && (r = add_unique(arr, ev->job)) < 0)
		return r;
	if ((r = add_unique(arr, ctx->nuvlabox_id)) < 0)
		return r;
	/* a parent that is a request or credential is something to search by too */
	if (p && strncmp(p, "event/", 6) != 0 && (r = add_unique(arr, p)) < 0)
		return r;
	if (ev->links) {
		cJSON *extra = cJSON_Parse(ev->links), *it;
		if (!extra)
			return -ENOMEM;
		cJSON_ArrayForEach(it, extra)
		{
			if (cJSON_IsString(it) && (r = add_unique(arr, it->valuestring)) < 0) {
				cJSON_Delete(extra);
				return r;
			}
		}
		cJSON_Delete(extra);
	}
	if (ctx->owner && (r = add_unique(arr, ctx->owner)) < 0)
		return r;
	return 0;
}

/* content.resource.content: the agent's own keys first, then the details. */
static cJSON *build_resource_content(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx,
				     const char *clock, const char *device_ts)
{
	cJSON *c = cJSON_CreateObject(), *details, *it;

	if (!c)
		return NULL;
	if (!cJSON_AddStringToObject(c, "device-event-id", ev->id) ||
	    !cJSON_AddNumberToObject(c, "seq", (double)ev->seq) ||
	    !cJSON_AddStringToObject(c, "boot-id", ev->boot_id) ||
	    !cJSON_AddStringToObject(c, "clock", clock) ||
	    !cJSON_AddStringToObject(c, "agent-version", ctx->agent_version))
		goto err;
	if (device_ts && !cJSON_AddStringToObject(c, "device-timestamp", device_ts))
		goto err;
	details = cJSON_Parse(ev->details ? ev->details : "{}");
	if (!details)
		goto err;
	while ((it = details->child) != NULL) {
		cJSON_DetachItemViaPointer(details, it);
		if (nbe_event_detail_key_reserved(it->string)) {
			cJSON_Delete(it); /* validated at capture; never overwrite ours */
			continue;
		}
		if (!cJSON_AddItemToObject(c, it->string, it)) {
			cJSON_Delete(it);
			cJSON_Delete(details);
			goto err;
		}
	}
	cJSON_Delete(details);
	return c;
err:
	cJSON_Delete(c);
	return NULL;
}

int nbe_wire_build(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx, char **ret_body,
		   struct nbe_error *err)
{
	char ts[NBE_TIMESTAMP_LEN + 1], desc[NBE_MESSAGE_MAX + 256];
	const char *clock, *device_ts = NULL;
	cJSON *body, *tags, *content, *resource, *rc, *links, *acl, *arr;
	char *text;
	size_t len;
	bool ts_valid;

	if (!ctx->nuvlabox_id || !*ctx->nuvlabox_id)
		return nbe_error_set(err, -EINVAL, "the nuvlabox id is not known yet");
	clock = nbe_wire_clock_state(ev, ctx);
	ts_valid = strcmp(clock, "invalid") != 0;
	if (nbe_wire_timestamp(effective_wall(ev, ctx), ts) < 0) {
		ts_valid = false;
		clock = "invalid";
		ts[0] = '\0';
	} else if (!ts_valid) {
		device_ts = ts; /* kept for forensics, never as the event's time */
	}

	body = cJSON_CreateObject();
	if (!body)
		goto err_oom;
	if (!cJSON_AddStringToObject(body, "name", ev->name))
		goto err_oom_body;
	if (ev->message)
		snprintf(desc, sizeof(desc), "%s", ev->message);
	else
		describe(ev, desc, sizeof(desc));
	if (!cJSON_AddStringToObject(body, "description", desc))
		goto err_oom_body;
	/* an untrustworthy time is left out: the server stamps the receipt time */
	if (ts_valid && !cJSON_AddStringToObject(body, "timestamp", ts))
		goto err_oom_body;
	if (!cJSON_AddStringToObject(body, "category", "user") ||
	    !cJSON_AddStringToObject(body, "severity", nbe_severity_str(ev->severity)))
		goto err_oom_body;
	if (ev->phase == NBE_PHASE_COMPLETED || ev->phase == NBE_PHASE_FAILED) {
		if (!cJSON_AddBoolToObject(body, "success", ev->phase == NBE_PHASE_COMPLETED))
			goto err_oom_body;
	}
	if (ctx->parent_href && !cJSON_AddStringToObject(body, "parent", ctx->parent_href))
		goto err_oom_body;

	tags = cJSON_AddArrayToObject(body, "tags");
	if (!tags)
		goto err_oom_body;
	{
		char tag[sizeof("device-event/") + NBE_UUID_LEN];
		snprintf(tag, sizeof(tag), "device-event/%s", ev->id);
		if (add_unique(tags, tag) < 0)
			goto err_oom_body;
	}

	content = cJSON_AddObjectToObject(body, "content");
	if (!content)
		goto err_oom_body;
	resource = cJSON_AddObjectToObject(content, "resource");
	if (!resource || !cJSON_AddStringToObject(resource, "href", ctx->nuvlabox_id))
		goto err_oom_body;
	rc = build_resource_content(ev, ctx, clock, device_ts);
	if (!rc)
		goto err_oom_body;
	if (!cJSON_AddItemToObject(resource, "content", rc)) {
		cJSON_Delete(rc); /* not attached: still ours */
		goto err_oom_body;
	}
	links = cJSON_AddArrayToObject(content, "linked-identifiers");
	if (!links || build_links(ev, ctx, links) < 0)
		goto err_oom_body;
	if (ev->phase != NBE_PHASE_NONE &&
	    !cJSON_AddStringToObject(content, "state", nbe_phase_str(ev->phase)))
		goto err_oom_body;

	acl = cJSON_AddObjectToObject(body, "acl");
	if (!acl || !(arr = cJSON_AddArrayToObject(acl, "owners")) ||
	    add_unique(arr, ctx->nuvlabox_id) < 0)
		goto err_oom_body;
	if (ctx->owner) {
		if (!(arr = cJSON_AddArrayToObject(acl, "view-data")) ||
		    add_unique(arr, ctx->owner) < 0)
			goto err_oom_body;
	}

	text = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	if (!text)
		goto err_oom;
	len = strlen(text);
	if (len > NBE_WIRE_MAX) {
		nbe_free(text);
		return nbe_error_set(err, -EMSGSIZE, "event body: %zu bytes, over the limit of %d",
				     len, NBE_WIRE_MAX);
	}
	*ret_body = text;
	return 0;

err_oom_body:
	cJSON_Delete(body);
err_oom:
	return nbe_error_set(err, -ENOMEM, "out of memory building the event body");
}

int nbe_wire_check_fits(const struct nbe_event *ev, struct nbe_error *err)
{
	/* the longest values each part of the context can take */
	struct nbe_wire_ctx ctx = {
		.nuvlabox_id = "nuvlabox/00000000-0000-0000-0000-000000000000",
		.owner = "user/00000000-0000-0000-0000-000000000000",
		.agent_version = "000.000.000-0000000000000000",
		.now_ms = ev->wall_ms,
		.now_synced = false,
	};
	char parent[NBE_HREF_MAX + 1], *body = NULL;
	int r;

	memset(parent, 'a', NBE_HREF_MAX);
	memcpy(parent, "event/", 6);
	parent[NBE_HREF_MAX] = '\0';
	ctx.parent_href = parent;
	r = nbe_wire_build(ev, &ctx, &body, err);
	nbe_free(body);
	return r;
}
