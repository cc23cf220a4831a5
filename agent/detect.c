#include "detect.h"

#include "alloc.h"
#include "clock.h"
#include "json.h"
#include "parse.h"
#include "wire.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define META_BOOT  "boot_id"
#define META_ALIVE "boot_alive_ms"
#define META_CLEAN "boot_clean_stop"

void detect_boot_alive(struct nbe_buffer *buf, bool clean)
{
	char num[32];

	snprintf(num, sizeof(num), "%" PRId64, nbe_clock_wall_ms());
	nbe_buffer_meta_set_lazy(buf, META_ALIVE, num, NULL);
	nbe_buffer_meta_set_lazy(buf, META_CLEAN, clean ? "1" : "0", NULL);
}

/* The details of a reboot event. Returns new JSON text or NULL. */
static char *reboot_details(const char *prev, int64_t boot_ms, int64_t alive_ms, bool clean)
{
	char ts[NBE_TIMESTAMP_LEN + 1];
	cJSON *d = cJSON_CreateObject();
	char *text = NULL;

	if (!d || !cJSON_AddStringToObject(d, "previous-boot-id", prev))
		goto out;
	if (nbe_wire_timestamp(boot_ms, ts) == 0 && !cJSON_AddStringToObject(d, "boot-time", ts))
		goto out;
	if (alive_ms > 0 && boot_ms >= alive_ms) {
		/* after an orderly stop the downtime is known; after a power loss
		 * only an upper bound: the last moment the agent saw the old boot */
		int64_t down_s = (boot_ms - alive_ms) / 1000; /* whole seconds */

		if (!cJSON_AddNumberToObject(d, clean ? "downtime-s" : "downtime-max-s",
					     (double)down_s))
			goto out;
	}
	text = cJSON_PrintUnformatted(d);
out:
	cJSON_Delete(d);
	return text;
}

int detect_boot(struct nbe_buffer *buf, const char *boot_id, const char *timesync_file,
		char ret_name[64], struct nbe_error *err)
{
	struct nbe_event_input in = { 0 };
	struct nbe_event req = { 0 }, ev = { 0 };
	char *prev = NULL, *details = NULL;
	int64_t now = nbe_clock_wall_ms(), boot_ms = now - nbe_clock_boottime_ms();
	bool planned;
	int r;

	ret_name[0] = '\0';
	r = nbe_buffer_meta_get(buf, META_BOOT, &prev, err);
	if (r < 0)
		return r;
	if (!prev) /* a fresh state directory: no previous boot to compare with */
		return nbe_buffer_meta_set(buf, META_BOOT, boot_id, err);
	if (strcmp(prev, boot_id) == 0) {
		nbe_free(prev);
		return 0;
	}
	r = nbe_buffer_find_open(buf, "nuvlabox.reboot", prev, &req, err);
	if (r < 0 && r != -ENOENT)
		goto out;
	planned = r == 0;
	details = reboot_details(prev, boot_ms, nbe_buffer_meta_get_int(buf, META_ALIVE),
				 nbe_buffer_meta_get_int(buf, META_CLEAN) == 1);
	if (!details) {
		r = nbe_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	in.details_json = details;
	if (planned) {
		in.name = "nuvlabox.reboot.completed";
		in.parent = req.id;
		in.job = req.job;
	} else {
		in.name = "nuvlabox.reboot.unplanned";
		in.severity = "high";
	}
	r = nbe_event_init_capture(&ev, &in, now, nbe_clock_boottime_ms(), boot_id,
				   nbe_clock_synced(timesync_file), err);
	if (r == 0)
		r = nbe_buffer_append_with_meta(buf, &ev, META_BOOT, boot_id, err);
	if (r == 0)
		snprintf(ret_name, 64, "%s", in.name);
out:
	nbe_event_clear(&ev);
	nbe_event_clear(&req);
	nbe_free(details);
	nbe_free(prev);
	return r;
}
