/*
 * Harness: what a producer gives `record` (DESIGN §7): the name, severity,
 * job, parent, message, details JSON and KEY=VALUE detail pairs, checked
 * and turned into an event (nbe_event_init_capture()), then into its wire
 * body (nbe_wire_check_fits(), nbe_wire_build()).
 *
 * The input is the command line after `record`, NUL-separated, as argv
 * holds it: "nuvlabox.reboot\0--job\0job/...\0--detail\0k=v". The options
 * are those of `record`, plus --link (the links detectors add).
 */
#include "fuzz.h"

#include "alloc.h"
#include "event.h"
#include "json.h"
#include "utf8.h"
#include "wire.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PAIRS 256 /* as the CLI */
#define MAX_LINKS 8
#define MAX_ARGS  1024

#define BOOT_ID "0b7c5d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"
#define NB	"nuvlabox/1c56a0f2-33a8-4b5e-9b7e-2f6d0c1a8e44"
#define OWNER	"user/9f0c2d1e-8b7a-4c5d-9e6f-0a1b2c3d4e5f"
#define PARENT	"event/5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22"
#define WALL_MS INT64_C(1764400000000)
#define BOOT_MS INT64_C(123456)
#define VERSION "0.1.0"

struct args {
	struct nbe_event_input in;
	const char *pairs[MAX_PAIRS + 1];
	const char *links[MAX_LINKS + 1];
	size_t npairs, nlinks;
};

/* Splits the NUL-separated input into @a; false for what the CLI refuses
 * as usage (a second --details-json, too many options, no name). */
static bool split(char *text, size_t size, struct args *a)
{
	char *argv[MAX_ARGS];
	size_t argc = 0;

	for (char *p = text; p < text + size + 1 && argc < MAX_ARGS; p += strlen(p) + 1)
		argv[argc++] = p;
	a->in.detail_pairs = a->pairs;
	a->in.links = a->links;
	for (size_t i = 0; i < argc; i++) {
		const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strncmp(o, "--", 2) != 0) {
			if (a->in.name)
				return false; /* "unexpected argument" */
			a->in.name = o;
			continue;
		}
		if (!v)
			return false; /* an option without its value */
		i++;
		if (strcmp(o, "--severity") == 0) {
			a->in.severity = v;
		} else if (strcmp(o, "--job") == 0) {
			a->in.job = v;
		} else if (strcmp(o, "--parent") == 0) {
			a->in.parent = v;
		} else if (strcmp(o, "--message") == 0) {
			a->in.message = v;
		} else if (strcmp(o, "--details-json") == 0) {
			if (a->in.details_json)
				return false;
			a->in.details_json = v;
		} else if (strcmp(o, "--detail") == 0) {
			if (a->npairs == MAX_PAIRS)
				return false;
			a->pairs[a->npairs++] = v;
		} else if (strcmp(o, "--link") == 0) {
			if (a->nlinks == MAX_LINKS)
				return false;
			a->links[a->nlinks++] = v;
		} else {
			return false;
		}
	}
	return a->in.name != NULL;
}

/* What nbe_event_init_capture() promises of an event it made. */
static void check_event(const struct nbe_event *ev)
{
	cJSON *d;

	FUZZ_CHECK(nbe_event_name_valid(ev->name));
	FUZZ_CHECK(nbe_uuid_valid(ev->id));
	FUZZ_CHECK(ev->details && strlen(ev->details) <= NBE_DETAILS_MAX);
	FUZZ_CHECK(nbe_utf8_valid(ev->details, strlen(ev->details), NULL));
	FUZZ_CHECK(!ev->message || strlen(ev->message) <= NBE_MESSAGE_MAX);
	FUZZ_CHECK(!ev->job || nbe_href_is(ev->job, "job"));
	d = cJSON_Parse(ev->details);
	if (d) { /* NULL only when out of memory */
		FUZZ_CHECK(cJSON_IsObject(d));
		for (size_t i = 0; i < 6; i++) {
			static const char *const reserved[] = {
				"device-event-id", "seq",	    "boot-id",
				"clock",	   "agent-version", "device-timestamp"
			};
			FUZZ_CHECK(!cJSON_GetObjectItemCaseSensitive(d, reserved[i]));
		}
		cJSON_Delete(d);
	}
}

/* The body of an event that fits must be sendable: a JSON object within
 * NBE_WIRE_MAX, whatever the context. */
static void check_wire(const struct nbe_event *ev, bool oom)
{
	struct nbe_wire_ctx ctx = { .nuvlabox_id = NB,
				    .owner = OWNER,
				    .agent_version = VERSION,
				    .parent_href = ev->parent ? PARENT : NULL,
				    .now_ms = WALL_MS + 1000,
				    .now_synced = true };
	struct nbe_error err = { { 0 } };
	char *body = NULL;
	cJSON *j;
	int r = nbe_wire_check_fits(ev, &err);

	FUZZ_CHECK(r == 0 || r == -EMSGSIZE || (r == -ENOMEM && oom));
	if (r < 0)
		return;
	r = nbe_wire_build(ev, &ctx, &body, &err);
	FUZZ_CHECK(r == 0 || (r == -ENOMEM && oom));
	if (r < 0)
		return;
	FUZZ_CHECK(strlen(body) <= NBE_WIRE_MAX);
	j = cJSON_Parse(body);
	FUZZ_CHECK(j || oom);
	FUZZ_CHECK(!j || cJSON_IsObject(j));
	cJSON_Delete(j);
	nbe_free(body);
}

static void one(const uint8_t *data, size_t size, bool oom)
{
	struct args a = { 0 };
	struct nbe_event ev = { 0 };
	struct nbe_error err = { { 0 } };
	char *text = fuzz_strndup(data, size);
	int r;

	if (!split(text, size, &a)) {
		free(text);
		return;
	}
	r = nbe_event_init_capture(&ev, &a.in, WALL_MS, BOOT_MS, BOOT_ID, false, &err);
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL || r == -E2BIG || (r == -ENOMEM && oom));
		FUZZ_CHECK(err.msg[0] != '\0');
		FUZZ_CHECK(ev.details == NULL && ev.id[0] == '\0'); /* @ev stays zeroed */
	} else {
		check_event(&ev);
		check_wire(&ev, oom);
	}
	nbe_event_clear(&ev);
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
