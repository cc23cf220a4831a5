/*
 * Unit tests: the POST /api/event body (DESIGN §3). Golden files pin the
 * exact bodies of the six lifecycle operations; regenerate them with
 * NBE_UPDATE_GOLDEN=1 after an intended change, and review the diff.
 */
#include "testutil.h"

#include "alloc.h"
#include "json.h"
#include "wire.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NB	     "nuvlabox/1c56a9b8-3e2f-4c1d-9b0a-7f6e5d4c3b2a"
#define OWNER	     "user/0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
#define JOB	     "job/9f0c1d2e-3f4a-4b5c-8d6e-7f8091a2b3c4"
#define PARENT_EVENT "event/4a5b6c7d-8e9f-4a0b-8c1d-2e3f4a5b6c7d"
#define NOW	     INT64_C(1772360142123) /* 2026-03-01T10:15:42.123Z */

static struct nbe_wire_ctx base_ctx(void)
{
	struct nbe_wire_ctx ctx = { .nuvlabox_id = NB,
				    .owner = OWNER,
				    .agent_version = "0.1.0",
				    .now_ms = NOW + 1000,
				    .now_synced = true };
	return ctx;
}

/* An event with a fixed id, so bodies are reproducible. */
static void fixed_event(struct nbe_event *ev, const char *name, const char *job, int64_t seq)
{
	tu_event(ev, name, NULL, job, NULL);
	snprintf(ev->id, sizeof(ev->id), "5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a%04x", (unsigned)seq);
	ev->seq = seq;
	ev->wall_ms = NOW;
}

static char *build(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx)
{
	struct nbe_error err = { { 0 } };
	char *body = NULL;

	if (nbe_wire_build(ev, ctx, &body, &err) != 0)
		fail_msg("nbe_wire_build: %s", err.msg);
	return body;
}

static void check_golden(const char *name, const char *body)
{
	char path[512], *want;
	cJSON *j = cJSON_Parse(body);
	char *pretty;

	assert_non_null(j);
	pretty = cJSON_Print(j);
	cJSON_Delete(j);
	snprintf(path, sizeof(path), "%s/%s.json", NBE_GOLDEN_DIR, name);
	if (getenv("NBE_UPDATE_GOLDEN")) {
		FILE *f = fopen(path, "w");
		assert_non_null(f);
		fprintf(f, "%s\n", pretty);
		fclose(f);
	}
	want = tu_read(path);
	if (!want)
		fail_msg("missing golden file %s (run with NBE_UPDATE_GOLDEN=1)", path);
	want[strcspn(want, "\0")] = '\0';
	if (strlen(want) > 0 && want[strlen(want) - 1] == '\n')
		want[strlen(want) - 1] = '\0';
	if (strcmp(want, pretty) != 0)
		fail_msg("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name,
			 pretty, want);
	free(want);
	nbe_free(pretty);
}

/* Golden bodies of each lifecycle operation: the start (parent = job, or
 * none) and its completion (parent = the start's server id). */
static void test_golden_lifecycle(void **state)
{
	static const struct {
		const char *op;
		bool job;
	} ops[] = {
		{ "activate", false }, { "commission", false }, { "decommission", true },
		{ "reboot", true },    { "add-ssh-key", true }, { "revoke-ssh-key", true },
	};
	char name[96], golden[96];

	(void)state;
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		struct nbe_wire_ctx ctx = base_ctx();
		struct nbe_event ev;
		char *body;

		snprintf(name, sizeof(name), "nuvlabox.%s", ops[i].op);
		fixed_event(&ev, name, ops[i].job ? JOB : NULL, (int64_t)(2 * i + 1));
		ctx.parent_href = ops[i].job ? JOB : NULL;
		body = build(&ev, &ctx);
		snprintf(golden, sizeof(golden), "%s", name);
		check_golden(golden, body);
		nbe_free(body);
		nbe_event_clear(&ev);

		snprintf(name, sizeof(name), "nuvlabox.%s.%s", ops[i].op,
			 i == 1 ? "failed" : "completed");
		fixed_event(&ev, name, ops[i].job ? JOB : NULL, (int64_t)(2 * i + 2));
		ctx.parent_href = PARENT_EVENT;
		if (i == 0) {
			/* activate: linked to the credential it produced */
			ev.links =
				nbe_strdup("[\"credential/5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f\"]");
			ev.details = (nbe_free(ev.details), nbe_strdup("{\"via\":\"nuvlaedge\"}"));
		}
		body = build(&ev, &ctx);
		check_golden(name, body);
		nbe_free(body);
		nbe_event_clear(&ev);
	}
}

static cJSON *parse_body(const struct nbe_event *ev, const struct nbe_wire_ctx *ctx)
{
	char *body = build(ev, ctx);
	cJSON *j = cJSON_Parse(body);

	nbe_free(body);
	assert_non_null(j);
	return j;
}

static const char *str_at(cJSON *j, const char *path)
{
	char buf[128], *save = NULL, *tok;
	cJSON *it = j;

	snprintf(buf, sizeof(buf), "%s", path);
	for (tok = strtok_r(buf, ".", &save); tok && it; tok = strtok_r(NULL, ".", &save))
		it = cJSON_GetObjectItemCaseSensitive(it, tok);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

static void test_timestamp(void **state)
{
	char ts[NBE_TIMESTAMP_LEN + 1];

	(void)state;
	assert_int_equal(nbe_wire_timestamp(NOW, ts), 0);
	assert_string_equal(ts, "2026-03-01T10:15:42.123Z");
	assert_int_equal(nbe_wire_timestamp(0, ts), 0);
	assert_string_equal(ts, "1970-01-01T00:00:00.000Z");
	assert_int_equal(nbe_wire_timestamp(1005, ts), 0);
	assert_string_equal(ts, "1970-01-01T00:00:01.005Z");
	assert_int_equal(nbe_wire_timestamp(-1, ts), -ERANGE);
	assert_int_equal(nbe_wire_timestamp(INT64_C(253402300800000), ts), -ERANGE);
}

static void test_clock_states(void **state)
{
	struct nbe_wire_ctx ctx = base_ctx();
	struct nbe_event ev;
	cJSON *j;

	(void)state;
	fixed_event(&ev, "nuvlabox.reboot.completed", JOB, 1);

	/* synced at capture */
	j = parse_body(&ev, &ctx);
	assert_string_equal(str_at(j, "timestamp"), "2026-03-01T10:15:42.123Z");
	assert_string_equal(str_at(j, "content.resource.content.clock"), "synced");
	assert_null(str_at(j, "content.resource.content.device-timestamp"));
	cJSON_Delete(j);

	/* unsynced at capture: sent as captured, marked */
	ev.clock_synced = false;
	j = parse_body(&ev, &ctx);
	assert_string_equal(str_at(j, "timestamp"), "2026-03-01T10:15:42.123Z");
	assert_string_equal(str_at(j, "content.resource.content.clock"), "unsynced");
	cJSON_Delete(j);

	/* re-stamped once the clock synchronised in the same boot */
	ctx.restamp_ms = NOW + 3600 * 1000;
	ctx.now_ms = ctx.restamp_ms + 60 * 1000;
	j = parse_body(&ev, &ctx);
	assert_string_equal(str_at(j, "timestamp"), "2026-03-01T11:15:42.123Z");
	assert_string_equal(str_at(j, "content.resource.content.clock"), "corrected");
	cJSON_Delete(j);
	ctx.restamp_ms = 0;
	ctx.now_ms = NOW + 1000;

	/* before 2020: never sent as if true */
	ev.wall_ms = INT64_C(946684800000); /* 2000-01-01 */
	j = parse_body(&ev, &ctx);
	assert_null(cJSON_GetObjectItem(j, "timestamp"));
	assert_string_equal(str_at(j, "content.resource.content.clock"), "invalid");
	assert_string_equal(str_at(j, "content.resource.content.device-timestamp"),
			    "2000-01-01T00:00:00.000Z");
	cJSON_Delete(j);

	/* more than five minutes ahead of a synchronised clock */
	ev.wall_ms = ctx.now_ms + NBE_WIRE_MAX_AHEAD_MS + 1;
	j = parse_body(&ev, &ctx);
	assert_null(cJSON_GetObjectItem(j, "timestamp"));
	assert_string_equal(str_at(j, "content.resource.content.clock"), "invalid");
	cJSON_Delete(j);
	/* ...but not when the uploader's own clock is not synchronised */
	ctx.now_synced = false;
	j = parse_body(&ev, &ctx);
	assert_non_null(cJSON_GetObjectItem(j, "timestamp"));
	cJSON_Delete(j);
	nbe_event_clear(&ev);
}

static int count_in(cJSON *arr, const char *s)
{
	int n = 0;
	cJSON *it;

	cJSON_ArrayForEach(it, arr)
	{
		if (cJSON_IsString(it) && strcmp(it->valuestring, s) == 0)
			n++;
	}
	return n;
}

static void test_links_and_acl(void **state)
{
	struct nbe_wire_ctx ctx = base_ctx();
	struct nbe_event ev;
	cJSON *j, *links, *acl;

	(void)state;
	fixed_event(&ev, "nuvlabox.add-ssh-key", JOB, 3);
	ev.links = nbe_strdup("[\"credential/abc\",\"" JOB "\"]");
	ctx.parent_href = JOB;
	j = parse_body(&ev, &ctx);
	links = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "content"), "linked-identifiers");
	assert_int_equal(cJSON_GetArraySize(links), 4);
	assert_string_equal(cJSON_GetArrayItem(links, 0)->valuestring, JOB);
	assert_int_equal(count_in(links, JOB), 1); /* no duplicates */
	assert_int_equal(count_in(links, NB), 1);
	assert_int_equal(count_in(links, "credential/abc"), 1);
	assert_int_equal(count_in(links, OWNER), 1);
	assert_string_equal(str_at(j, "parent"), JOB);
	acl = cJSON_GetObjectItem(j, "acl");
	assert_int_equal(count_in(cJSON_GetObjectItem(acl, "owners"), NB), 1);
	assert_int_equal(count_in(cJSON_GetObjectItem(acl, "view-data"), OWNER), 1);
	assert_null(cJSON_GetObjectItem(j, "success")); /* a start has no outcome yet */
	assert_string_equal(str_at(j, "content.state"), "started");
	assert_string_equal(str_at(j, "category"), "user");
	cJSON_Delete(j);

	/* owner unknown: only the nuvlabox in the ACL and the links */
	ctx.owner = NULL;
	ctx.parent_href = PARENT_EVENT;
	j = parse_body(&ev, &ctx);
	acl = cJSON_GetObjectItem(j, "acl");
	assert_null(cJSON_GetObjectItem(acl, "view-data"));
	links = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "content"), "linked-identifiers");
	assert_int_equal(count_in(links, PARENT_EVENT), 0); /* event parents are not links */
	assert_int_equal(cJSON_GetArraySize(links), 3);
	cJSON_Delete(j);
	nbe_event_clear(&ev);
}

static void test_no_phase_no_state(void **state)
{
	struct nbe_wire_ctx ctx = base_ctx();
	struct nbe_event ev;
	cJSON *j;

	(void)state;
	fixed_event(&ev, "nuvlabox.reboot.unplanned", NULL, 9);
	ev.severity = NBE_SEV_HIGH;
	j = parse_body(&ev, &ctx);
	assert_null(cJSON_GetObjectItem(j, "success"));
	assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "content"), "state"));
	assert_null(cJSON_GetObjectItem(j, "parent"));
	assert_string_equal(str_at(j, "severity"), "high");
	assert_non_null(strstr(str_at(j, "description"), "without a recorded request"));
	cJSON_Delete(j);
	nbe_event_clear(&ev);
}

static void test_message_is_description(void **state)
{
	struct nbe_wire_ctx ctx = base_ctx();
	struct nbe_event ev;
	cJSON *j;

	(void)state;
	fixed_event(&ev, "nuvlabox.reboot", JOB, 1);
	ev.message = nbe_strdup("device rebooted as requested by " JOB);
	j = parse_body(&ev, &ctx);
	assert_string_equal(str_at(j, "description"), "device rebooted as requested by " JOB);
	cJSON_Delete(j);
	nbe_event_clear(&ev);
}

static void test_errors(void **state)
{
	struct nbe_wire_ctx ctx = base_ctx();
	struct nbe_error err = { { 0 } };
	struct nbe_event ev;
	char *body = NULL, *big;

	(void)state;
	fixed_event(&ev, "nuvlabox.reboot", JOB, 1);
	ctx.nuvlabox_id = NULL;
	assert_int_equal(nbe_wire_build(&ev, &ctx, &body, &err), -EINVAL);
	assert_null(body);
	assert_non_null(strstr(err.msg, "nuvlabox id"));
	ctx = base_ctx();

	/* a body over 32 KiB is refused, not truncated */
	big = malloc(NBE_MESSAGE_MAX + 1);
	memset(big, 'm', NBE_MESSAGE_MAX);
	big[NBE_MESSAGE_MAX] = '\0';
	ev.message = nbe_strdup(big);
	nbe_free(ev.details);
	ev.details = malloc(NBE_DETAILS_MAX + 32);
	snprintf(ev.details, NBE_DETAILS_MAX + 32, "{\"d\":\"%0*d\"}", NBE_DETAILS_MAX - 8, 0);
	/* message + details at their limits fit... */
	assert_int_equal(nbe_wire_build(&ev, &ctx, &body, &err), 0);
	assert_true(strlen(body) <= NBE_WIRE_MAX);
	nbe_free(body);
	body = NULL;
	/* ...but details full of characters that need escaping do not */
	for (char *p = ev.details + 6; *p != '"'; p++)
		*p = '\x01';
	assert_int_equal(nbe_wire_build(&ev, &ctx, &body, &err), -EMSGSIZE);
	assert_null(body);
	free(big);
	nbe_event_clear(&ev);
}

static void test_alloc_failures(void **state)
{
	struct nbe_wire_ctx ctx = base_ctx();
	struct nbe_error err;
	struct nbe_event ev;
	unsigned long total;
	char *body = NULL;

	(void)state;
	fixed_event(&ev, "nuvlabox.add-ssh-key.completed", JOB, 2);
	ev.links = nbe_strdup("[\"credential/x\"]");
	nbe_alloc_fail_at(0, 0);
	assert_int_equal(nbe_wire_build(&ev, &ctx, &body, &err), 0);
	nbe_free(body);
	total = nbe_alloc_fail_at(0, 0);
	for (unsigned long n = 1; n <= total; n++) {
		int r;
		body = NULL;
		nbe_alloc_fail_at(n, 0);
		r = nbe_wire_build(&ev, &ctx, &body, &err);
		nbe_alloc_fail_at(0, 0);
		if (r == 0) {
			nbe_free(body);
			continue;
		}
		assert_int_equal(r, -ENOMEM);
		assert_null(body);
	}
	nbe_event_clear(&ev);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden_lifecycle),
		cmocka_unit_test(test_timestamp),
		cmocka_unit_test(test_clock_states),
		cmocka_unit_test(test_links_and_acl),
		cmocka_unit_test(test_no_phase_no_state),
		cmocka_unit_test(test_message_is_description),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_alloc_failures),
	};

	nbe_json_install_hooks();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
