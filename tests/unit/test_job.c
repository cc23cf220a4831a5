/*
 * Unit tests: what the device reads of Nuvla's jobs (common/job.c): the job
 * document (action, state, target, affected resources), the public key of an
 * ssh-key job's get-context answer, the job ids of a heartbeat answer, and
 * an allocation-failure sweep over each.
 */
#include "testutil.h"

#include "alloc.h"
#include "error.h"
#include "job.h"
#include "json.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define NB   "nuvlabox/0b5c0a1e-3c1f-4a57-9d8e-2f6f1c0b7a11"
#define CRED "credential/5a0e8a4c-6a52-4b8f-8e0c-7d7f8f4f2b10"
#define JOB1 "job/3e3b0d1c-1f7e-4b7c-9c1e-0b8f0e6e4a01"
#define JOB2 "job/3e3b0d1c-1f7e-4b7c-9c1e-0b8f0e6e4a02"

static int parse(const char *body, struct nbe_job_doc *doc, struct nbe_error *err)
{
	return nbe_job_parse(body, strlen(body), doc, err);
}

static void test_job_document(void **state)
{
	struct nbe_error err = { { 0 } };
	struct nbe_job_doc doc;

	(void)state;
	assert_int_equal(parse("{\"id\":\"" JOB1 "\",\"action\":\"reboot_nuvlabox\","
			       "\"state\":\"QUEUED\",\"target-resource\":{\"href\":\"" NB "\"},"
			       "\"affected-resources\":[{\"href\":\"" NB "\"},{\"href\":\"" CRED
			       "\"},{\"href\":\"not an href\"},{\"nohref\":1},7]}",
			       &doc, &err),
			 0);
	assert_string_equal(doc.action, "reboot_nuvlabox");
	assert_string_equal(doc.state, "QUEUED");
	assert_true(doc.has_target);
	assert_string_equal(doc.target, NB);
	assert_int_equal(doc.naffected, 2); /* valid hrefs only */
	assert_string_equal(doc.affected[0], NB);
	assert_string_equal(doc.affected[1], CRED);
	assert_false(nbe_job_state_final(doc.state));
	assert_true(nbe_job_state_final("SUCCESS"));
	assert_true(nbe_job_state_final("FAILED"));
	assert_true(nbe_job_state_final("CANCELED"));
	assert_false(nbe_job_state_final("RUNNING"));
	assert_false(nbe_job_state_final("success"));

	/* no target-resource at all; one that is not a valid href matches nothing */
	assert_int_equal(parse("{\"action\":\"a\",\"state\":\"RUNNING\"}", &doc, &err), 0);
	assert_false(doc.has_target);
	assert_string_equal(doc.target, "");
	assert_int_equal(doc.naffected, 0);
	assert_int_equal(parse("{\"action\":\"a\",\"state\":\"RUNNING\","
			       "\"target-resource\":{\"href\":5}}",
			       &doc, &err),
			 0);
	assert_true(doc.has_target);
	assert_string_equal(doc.target, "");
	assert_int_equal(parse("{\"action\":\"a\",\"state\":\"RUNNING\","
			       "\"target-resource\":\"" NB "\"}",
			       &doc, &err),
			 0);
	assert_true(doc.has_target);
	assert_string_equal(doc.target, "");

	/* more affected resources than kept */
	{
		char body[4096];
		size_t n = (size_t)snprintf(body, sizeof(body),
					    "{\"action\":\"a\",\"state\":\"QUEUED\","
					    "\"affected-resources\":[");
		for (int i = 0; i < NBE_JOB_AFFECTED_MAX + 3; i++)
			n += (size_t)snprintf(body + n, sizeof(body) - n, "%s{\"href\":\"" NB "\"}",
					      i ? "," : "");
		snprintf(body + n, sizeof(body) - n, "]}");
		assert_int_equal(parse(body, &doc, &err), 0);
		assert_int_equal(doc.naffected, NBE_JOB_AFFECTED_MAX);
	}
}

static void test_not_a_job(void **state)
{
	static const char *const bad[] = {
		"",
		"[]",
		"{\"action\":\"a\"",
		"{\"state\":\"QUEUED\"}",
		"{\"action\":\"\",\"state\":\"QUEUED\"}",
		"{\"action\":\"Reboot\",\"state\":\"QUEUED\"}",
		"{\"action\":\"a b\",\"state\":\"QUEUED\"}",
		"{\"action\":7,\"state\":\"QUEUED\"}",
		"{\"action\":\"a\"}",
		"{\"action\":\"a\",\"state\":\"queued\"}",
		"{\"action\":\"a\",\"state\":\"DONE\"}",
		"{\"action\":\"a\",\"state\":null}",
	};
	struct nbe_error err = { { 0 } };
	struct nbe_job_doc doc;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err.msg[0] = '\0';
		assert_int_equal(parse(bad[i], &doc, &err), -EBADMSG);
		assert_true(err.msg[0] != '\0');
	}
	/* an action longer than kept is not an action */
	{
		char body[256];
		char action[NBE_JOB_ACTION_MAX + 2];
		memset(action, 'a', sizeof(action) - 1);
		action[sizeof(action) - 1] = '\0';
		snprintf(body, sizeof(body), "{\"action\":\"%s\",\"state\":\"QUEUED\"}", action);
		assert_int_equal(parse(body, &doc, &err), -EBADMSG);
	}
}

static void test_context_key(void **state)
{
	const char *ctx = "{\"credential/00000000-0000-4000-8000-000000000001\":"
			  "{\"public-key\":\"ssh-ed25519 AAAAother other\"},"
			  "\"" CRED "\":{\"public-key\":\"ssh-ed25519 AAAAmine mine\"},"
			  "\"nuvlabox/00000000-0000-4000-8000-000000000002\":"
			  "{\"public-key\":\"ssh-ed25519 AAAAnot not\"}}";
	struct nbe_error err = { { 0 } };
	struct nbe_job_doc doc;
	char cred[NBE_HREF_MAX + 1], *key = NULL;

	(void)state;
	assert_int_equal(parse("{\"action\":\"nuvlabox_add_ssh_key\",\"state\":\"RUNNING\","
			       "\"affected-resources\":[{\"href\":\"" NB "\"},{\"href\":\"" CRED
			       "\"}]}",
			       &doc, &err),
			 0);
	/* the job's own credential first, wherever it stands in the answer */
	assert_int_equal(nbe_job_context_key(ctx, strlen(ctx), &doc, cred, &key), 0);
	assert_string_equal(cred, CRED);
	assert_string_equal(key, "ssh-ed25519 AAAAmine mine");
	nbe_free(key);
	/* without a job: the first credential member */
	assert_int_equal(nbe_job_context_key(ctx, strlen(ctx), NULL, cred, &key), 0);
	assert_string_equal(cred, "credential/00000000-0000-4000-8000-000000000001");
	assert_string_equal(key, "ssh-ed25519 AAAAother other");
	nbe_free(key);
	/* nothing usable */
	assert_int_equal(nbe_job_context_key("{\"" CRED "\":{\"public-key\":1}}",
					     strlen("{\"" CRED "\":{\"public-key\":1}}"), &doc,
					     cred, &key),
			 -ENOENT);
	assert_null(key);
	assert_string_equal(cred, "");
	assert_int_equal(nbe_job_context_key("{}", 2, &doc, cred, &key), -ENOENT);
	assert_int_equal(nbe_job_context_key("[1]", 3, &doc, cred, &key), -EBADMSG);
	assert_int_equal(nbe_job_context_key("", 0, &doc, cred, &key), -EBADMSG);
}

static void test_heartbeat_jobs(void **state)
{
	const char *hb =
		"{\"doc-last-updated\":\"2026-11-30T00:00:00Z\",\"jobs\":"
		"[\"" JOB1 "\",\"" JOB2 "\",\"" JOB1 "\",\"" NB "\",7,\"job/\",\"job/a b\"]}";
	char ids[4][NBE_HREF_MAX + 1];
	unsigned n = 99;

	(void)state;
	assert_int_equal(nbe_heartbeat_jobs(hb, strlen(hb), ids, 4, &n), 0);
	assert_int_equal(n, 2); /* each once, valid job hrefs only, in order */
	assert_string_equal(ids[0], JOB1);
	assert_string_equal(ids[1], JOB2);
	assert_int_equal(nbe_heartbeat_jobs(hb, strlen(hb), ids, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], JOB1);
	assert_int_equal(nbe_heartbeat_jobs("{}", 2, ids, 4, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(nbe_heartbeat_jobs("{\"jobs\":{}}", 11, ids, 4, &n), 0);
	assert_int_equal(n, 0);
	n = 99;
	assert_int_equal(nbe_heartbeat_jobs("null", 4, ids, 4, &n), -EBADMSG);
	assert_int_equal(n, 0);
}

/* Every allocation of each parser fails once: a clean -ENOMEM, never a
 * crash or a leak (the cmocka build runs under valgrind and ASan). */
static void test_alloc_failures(void **state)
{
	const char *job = "{\"action\":\"nuvlabox_add_ssh_key\",\"state\":\"RUNNING\","
			  "\"target-resource\":{\"href\":\"" NB "\"},"
			  "\"affected-resources\":[{\"href\":\"" CRED "\"}]}";
	const char *ctx = "{\"" CRED "\":{\"public-key\":\"ssh-ed25519 AAAAmine mine\"}}";
	const char *hb = "{\"jobs\":[\"" JOB1 "\",\"" JOB2 "\"]}";
	struct nbe_error err = { { 0 } };
	struct nbe_job_doc doc, ok;
	char cred[NBE_HREF_MAX + 1], *key, ids[2][NBE_HREF_MAX + 1];
	unsigned long n;
	unsigned nids;
	int r;

	(void)state;
	assert_int_equal(parse(job, &ok, &err), 0);
	for (int which = 0; which < 3; which++) {
		for (n = 1;; n++) {
			key = NULL;
			nbe_alloc_fail_at(n, 0);
			if (which == 0)
				r = parse(job, &doc, &err);
			else if (which == 1)
				r = nbe_job_context_key(ctx, strlen(ctx), &ok, cred, &key);
			else
				r = nbe_heartbeat_jobs(hb, strlen(hb), ids, 2, &nids);
			nbe_alloc_fail_at(0, 0);
			if (r == 0)
				break;
			assert_int_equal(r, -ENOMEM);
			assert_null(key);
		}
		assert_true(n > 1); /* some allocation was failed */
		if (which == 1) {
			assert_string_equal(key, "ssh-ed25519 AAAAmine mine");
			nbe_free(key);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_job_document),   cmocka_unit_test(test_not_a_job),
		cmocka_unit_test(test_context_key),    cmocka_unit_test(test_heartbeat_jobs),
		cmocka_unit_test(test_alloc_failures),
	};
	nbe_json_install_hooks();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
