/* Unit tests: event model, input validation and limits (DESIGN §3, §7). */
#include "testutil.h"

#include "alloc.h"
#include "json.h"
#include "utf8.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int capture(const struct nbe_event_input *in, struct nbe_event *ev, struct nbe_error *err)
{
	memset(ev, 0, sizeof(*ev));
	return nbe_event_init_capture(ev, in, 1772360142123, 5, TU_BOOT_ID, true, err);
}

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static void test_name_pattern(void **state)
{
	char *n128 = repeat('a', 128), *n129 = repeat('a', 129);

	(void)state;
	assert_true(nbe_event_name_valid("nuvlabox.reboot"));
	assert_true(nbe_event_name_valid("nuvlabox.add-ssh-key.completed"));
	assert_true(nbe_event_name_valid("0abc_d-e.f"));
	assert_true(nbe_event_name_valid("a"));
	assert_true(nbe_event_name_valid(n128));
	assert_false(nbe_event_name_valid(n129));
	assert_false(nbe_event_name_valid(""));
	assert_false(nbe_event_name_valid(".reboot"));
	assert_false(nbe_event_name_valid("-reboot"));
	assert_false(nbe_event_name_valid("Nuvlabox.reboot"));
	assert_false(nbe_event_name_valid("nuvlabox reboot"));
	assert_false(nbe_event_name_valid("nuvlabox/reboot"));
	assert_false(nbe_event_name_valid("nuvlabox.réboot"));
	free(n128);
	free(n129);
}

static void test_phase_for_name(void **state)
{
	static const char *const ops[] = { "activate", "commission",  "decommission",
					   "reboot",   "add-ssh-key", "revoke-ssh-key" };
	char name[64];

	(void)state;
	for (size_t i = 0; i < 6; i++) {
		snprintf(name, sizeof(name), "nuvlabox.%s", ops[i]);
		assert_int_equal(nbe_event_phase_for_name(name), NBE_PHASE_STARTED);
		snprintf(name, sizeof(name), "nuvlabox.%s.completed", ops[i]);
		assert_int_equal(nbe_event_phase_for_name(name), NBE_PHASE_COMPLETED);
		snprintf(name, sizeof(name), "nuvlabox.%s.failed", ops[i]);
		assert_int_equal(nbe_event_phase_for_name(name), NBE_PHASE_FAILED);
	}
	assert_int_equal(nbe_event_phase_for_name("nuvlabox.reboot.unplanned"), NBE_PHASE_NONE);
	assert_int_equal(nbe_event_phase_for_name("nuvlabox.update"), NBE_PHASE_NONE);
	assert_int_equal(nbe_event_phase_for_name("agent.events.dropped"), NBE_PHASE_NONE);
	assert_int_equal(nbe_event_phase_for_name(".completed"), NBE_PHASE_NONE);
}

static void test_enums(void **state)
{
	enum nbe_severity s;
	enum nbe_state st;

	(void)state;
	assert_int_equal(nbe_severity_parse("critical", &s), 0);
	assert_int_equal(s, NBE_SEV_CRITICAL);
	assert_int_equal(nbe_severity_parse("urgent", &s), -EINVAL);
	assert_int_equal(nbe_severity_parse("", &s), -EINVAL);
	assert_string_equal(nbe_severity_str(NBE_SEV_LOW), "low");
	assert_null(nbe_phase_str(NBE_PHASE_NONE));
	assert_string_equal(nbe_phase_str(NBE_PHASE_FAILED), "failed");
	assert_int_equal(nbe_state_parse("dead", &st), 0);
	assert_int_equal(st, NBE_STATE_DEAD);
	assert_int_equal(nbe_state_parse("all", &st), -EINVAL);
}

static void test_capture_defaults(void **state)
{
	struct nbe_event_input in = { .name = "nuvlabox.reboot" };
	struct nbe_error err = { { 0 } };
	struct nbe_event ev;

	(void)state;
	assert_int_equal(capture(&in, &ev, &err), 0);
	assert_true(nbe_uuid_valid(ev.id));
	assert_int_equal(ev.id[14], '4');
	assert_string_equal(ev.name, "nuvlabox.reboot");
	assert_int_equal(ev.severity, NBE_SEV_MEDIUM);
	assert_int_equal(ev.phase, NBE_PHASE_STARTED);
	assert_string_equal(ev.details, "{}");
	assert_null(ev.message);
	assert_null(ev.job);
	assert_null(ev.links);
	assert_int_equal(ev.state, NBE_STATE_PENDING);
	assert_string_equal(ev.boot_id, TU_BOOT_ID);
	assert_true(ev.clock_synced);
	nbe_event_clear(&ev);
}

static void test_details_merge(void **state)
{
	const char *pairs[] = { "fingerprint=SHA256:abc", "empty=", "eq=a=b", NULL };
	const char *links[] = { "credential/0a1b", NULL };
	struct nbe_event_input in = { .name = "nuvlabox.add-ssh-key",
				      .details_json = "{\"n\": 1, \"o\": {\"x\": [true, null]}}",
				      .detail_pairs = pairs,
				      .links = links,
				      .message = "hello, wörld",
				      .job = "job/9f0c",
				      .parent = "0B7C5D1E-2F3A-4B5C-8D9E-0F1A2B3C4D5E",
				      .severity = "high" };
	struct nbe_error err = { { 0 } };
	struct nbe_event ev;

	(void)state;
	assert_int_equal(capture(&in, &ev, &err), 0);
	assert_string_equal(ev.details, "{\"n\":1,\"o\":{\"x\":[true,null]},\"fingerprint\":"
					"\"SHA256:abc\",\"empty\":\"\",\"eq\":\"a=b\"}");
	assert_string_equal(ev.links, "[\"credential/0a1b\"]");
	assert_string_equal(ev.message, "hello, wörld");
	assert_string_equal(ev.job, "job/9f0c");
	/* device event ids are stored lower case */
	assert_string_equal(ev.parent, TU_BOOT_ID);
	assert_int_equal(ev.severity, NBE_SEV_HIGH);
	nbe_event_clear(&ev);
}

struct bad_case {
	const char *what;
	struct nbe_event_input in;
	int expect;
	const char *msg_part;
};

static void test_bad_inputs(void **state)
{
	char *msg_big = repeat('m', NBE_MESSAGE_MAX + 1);
	char *msg_ok = repeat('m', NBE_MESSAGE_MAX);
	char *det_big = malloc(NBE_DETAILS_MAX + 64);
	char *det_ok = malloc(NBE_DETAILS_MAX + 64);
	char *val_big = repeat('v', NBE_DETAILS_MAX + 10);
	char *pair_big = malloc(NBE_DETAILS_MAX + 32);
	char *name_big = repeat('a', NBE_NAME_MAX + 1);
	const char *p_noeq[] = { "novalue", NULL };
	const char *p_badkey[] = { "bad key=1", NULL };
	const char *p_emptykey[] = { "=1", NULL };
	const char *p_reserved[] = { "seq=1", NULL };
	const char *p_dup[] = { "a=1", "a=2", NULL };
	const char *p_dupjson[] = { "n=1", NULL };
	const char *p_badutf[] = { "k=\xc3\x28", NULL };
	const char *l_bad[] = { "Credential/x", NULL };
	const char *p_big[] = { pair_big, NULL };
	struct nbe_error err;
	struct nbe_event ev;

	(void)state;
	/* {"d":"ddd..."} exactly NBE_DETAILS_MAX bytes, and one more */
	snprintf(det_ok, NBE_DETAILS_MAX + 64, "{\"d\":\"%0*d\"}", NBE_DETAILS_MAX - 8, 0);
	snprintf(det_big, NBE_DETAILS_MAX + 64, "{\"d\":\"%0*d\"}", NBE_DETAILS_MAX - 7, 0);
	assert_int_equal(strlen(det_ok), NBE_DETAILS_MAX);
	snprintf(pair_big, NBE_DETAILS_MAX + 32, "k=%s", val_big);

	const struct bad_case cases[] = {
		{ "no name", { .name = "" }, -EINVAL, "name missing" },
		{ "name pattern", { .name = "Bad.Name" }, -EINVAL, "does not match" },
		{ "name too long", { .name = name_big }, -E2BIG, "longer than" },
		{ "severity", { .name = "x", .severity = "urgent" }, -EINVAL, "severity" },
		{ "job", { .name = "x", .job = "9f0c" }, -EINVAL, "job/<id>" },
		{ "job type", { .name = "x", .job = "event/9f0c" }, -EINVAL, "job/<id>" },
		{ "parent", { .name = "x", .parent = "not a ref" }, -EINVAL, "parent" },
		{ "message size", { .name = "x", .message = msg_big }, -E2BIG, "message" },
		{ "message utf8", { .name = "x", .message = "a\xff" }, -EINVAL, "UTF-8 at byte 1" },
		{ "overlong utf8", { .name = "x", .message = "\xc0\xaf" }, -EINVAL, "UTF-8" },
		{ "surrogate", { .name = "x", .message = "\xed\xa0\x80" }, -EINVAL, "UTF-8" },
		{ "details array", { .name = "x", .details_json = "[1]" }, -EINVAL, "JSON object" },
		{ "details string",
		  { .name = "x", .details_json = "\"s\"" },
		  -EINVAL,
		  "JSON object" },
		{ "details invalid",
		  { .name = "x", .details_json = "{\"a\":" },
		  -EINVAL,
		  "invalid JSON" },
		{ "details trailing",
		  { .name = "x", .details_json = "{} x" },
		  -EINVAL,
		  "invalid JSON" },
		{ "details utf8",
		  { .name = "x", .details_json = "{\"a\":\"\xfe\"}" },
		  -EINVAL,
		  "UTF-8" },
		{ "details size",
		  { .name = "x", .details_json = det_big },
		  -E2BIG,
		  "over the limit" },
		{ "details reserved",
		  { .name = "x", .details_json = "{\"clock\":1}" },
		  -EINVAL,
		  "reserved" },
		{ "details dup",
		  { .name = "x", .details_json = "{\"a\":1,\"a\":2}" },
		  -EINVAL,
		  "twice" },
		{ "pair no =", { .name = "x", .detail_pairs = p_noeq }, -EINVAL, "KEY=VALUE" },
		{ "pair key", { .name = "x", .detail_pairs = p_badkey }, -EINVAL, "key" },
		{ "pair empty key", { .name = "x", .detail_pairs = p_emptykey }, -EINVAL, "key" },
		{ "pair reserved",
		  { .name = "x", .detail_pairs = p_reserved },
		  -EINVAL,
		  "reserved" },
		{ "pair dup", { .name = "x", .detail_pairs = p_dup }, -EINVAL, "twice" },
		{ "pair dup json",
		  { .name = "x", .details_json = "{\"n\":0}", .detail_pairs = p_dupjson },
		  -EINVAL,
		  "twice" },
		{ "pair utf8", { .name = "x", .detail_pairs = p_badutf }, -EINVAL, "UTF-8" },
		{ "pair size", { .name = "x", .detail_pairs = p_big }, -E2BIG, "limit" },
		{ "link", { .name = "x", .links = l_bad }, -EINVAL, "link" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int r;

		memset(&err, 0, sizeof(err));
		r = capture(&cases[i].in, &ev, &err);
		if (r != cases[i].expect || !strstr(err.msg, cases[i].msg_part))
			fail_msg("case '%s': got %d '%s', want %d '%s'", cases[i].what, r, err.msg,
				 cases[i].expect, cases[i].msg_part);
		/* nothing allocated on failure: the struct stays zeroed */
		assert_null(ev.details);
		assert_int_equal(ev.id[0], '\0');
	}

	/* the limits themselves are accepted */
	{
		struct nbe_event_input ok1 = { .name = "x",
					       .message = msg_ok,
					       .details_json = det_ok };
		assert_int_equal(capture(&ok1, &ev, &err), 0);
		assert_int_equal(strlen(ev.details), NBE_DETAILS_MAX);
		nbe_event_clear(&ev);
	}
	free(msg_big);
	free(msg_ok);
	free(det_big);
	free(det_ok);
	free(val_big);
	free(pair_big);
	free(name_big);
}

static void test_utf8(void **state)
{
	size_t off = 99;

	(void)state;
	assert_true(nbe_utf8_valid("", 0, NULL));
	assert_true(nbe_utf8_valid("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10, NULL));
	assert_true(nbe_utf8_valid("\xf4\x8f\xbf\xbf", 4, NULL));  /* U+10FFFF */
	assert_false(nbe_utf8_valid("\xf4\x90\x80\x80", 4, &off)); /* > U+10FFFF */
	assert_int_equal(off, 0);
	assert_false(nbe_utf8_valid("ab\xe0\x80\x80", 5, &off)); /* overlong */
	assert_int_equal(off, 2);
	assert_false(nbe_utf8_valid("\xe2\x82", 2, NULL)); /* truncated */
	assert_false(nbe_utf8_valid("a\0b", 3, &off));
	assert_int_equal(off, 1);
	assert_false(nbe_utf8_valid("\x80", 1, NULL));
	assert_false(nbe_utf8_valid("\xf8\x88\x80\x80\x80", 5, NULL));
}

static void test_alloc_failures(void **state)
{
	const char *pairs[] = { "a=1", "b=2", NULL };
	const char *links[] = { "credential/x", NULL };
	struct nbe_event_input in = { .name = "nuvlabox.reboot.completed",
				      .details_json = "{\"n\":[1,2,3]}",
				      .detail_pairs = pairs,
				      .links = links,
				      .message = "m",
				      .job = "job/1",
				      .parent = "event/2" };
	struct nbe_error err;
	struct nbe_event ev;
	unsigned long n, total;

	(void)state;
	nbe_alloc_fail_at(0, 0);
	assert_int_equal(capture(&in, &ev, &err), 0);
	nbe_event_clear(&ev);
	total = nbe_alloc_fail_at(0, 0);
	assert_true(total > 5);
	/* every allocation in turn fails: a clean -ENOMEM, nothing leaked (ASan) */
	for (n = 1; n <= total; n++) {
		int r;
		nbe_alloc_fail_at(n, 0);
		r = capture(&in, &ev, &err);
		nbe_alloc_fail_at(0, 0);
		if (r == 0) {
			nbe_event_clear(&ev);
			continue;
		}
		assert_int_equal(r, -ENOMEM);
		assert_null(ev.details);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_pattern),  cmocka_unit_test(test_phase_for_name),
		cmocka_unit_test(test_enums),	      cmocka_unit_test(test_capture_defaults),
		cmocka_unit_test(test_details_merge), cmocka_unit_test(test_bad_inputs),
		cmocka_unit_test(test_utf8),	      cmocka_unit_test(test_alloc_failures),
	};

	nbe_json_install_hooks();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
