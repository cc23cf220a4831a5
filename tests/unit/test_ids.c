/* Unit tests: device event ids and Nuvla resource references. */
#include "testutil.h"

#include "alloc.h"
#include "ids.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void test_uuid_v4(void **state)
{
	enum { N = 2000 };
	char(*ids)[NBE_UUID_LEN + 1] = calloc(N, sizeof(*ids));

	(void)state;
	assert_non_null(ids);
	for (int i = 0; i < N; i++) {
		assert_int_equal(nbe_uuid_v4(ids[i]), 0);
		assert_int_equal(strlen(ids[i]), NBE_UUID_LEN);
		assert_true(nbe_uuid_valid(ids[i]));
		assert_int_equal(ids[i][14], '4');	     /* version */
		assert_non_null(strchr("89ab", ids[i][19])); /* variant */
		for (int k = 0; k < NBE_UUID_LEN; k++)
			assert_false(ids[i][k] >= 'A' && ids[i][k] <= 'F');
	}
	qsort(ids, N, sizeof(*ids), cmp);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	free(ids);
}

static void test_uuid_valid(void **state)
{
	(void)state;
	assert_true(nbe_uuid_valid("5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22"));
	assert_true(nbe_uuid_valid("5E1D7A4C-0C1B-4D43-9A8B-6F3E7D8A1B22"));
	assert_false(nbe_uuid_valid("5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b2"));
	assert_false(nbe_uuid_valid("5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b222"));
	assert_false(nbe_uuid_valid("5e1d7a4c0c1b-4d43-9a8b-6f3e7d8a1b22x"));
	assert_false(nbe_uuid_valid("5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1g22"));
	assert_false(nbe_uuid_valid(""));
}

static void test_href(void **state)
{
	(void)state;
	/* ^[a-z]([a-z-]*[a-z])?(/[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?)?$ */
	assert_true(nbe_href_valid("job/9f0c", true));
	assert_true(nbe_href_valid("event/5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22", true));
	assert_true(nbe_href_valid("session-template/api-key", true));
	assert_true(nbe_href_valid("a/B_c-9", true));
	assert_true(nbe_href_valid("a/b", true));
	assert_true(nbe_href_valid("job", false));
	assert_false(nbe_href_valid("job", true));
	assert_false(nbe_href_valid("job/", true));
	assert_false(nbe_href_valid("job/-x", true));
	assert_false(nbe_href_valid("job/x-", true));
	assert_false(nbe_href_valid("job/x_", true));
	assert_false(nbe_href_valid("Job/x", true));
	assert_false(nbe_href_valid("-job/x", true));
	assert_false(nbe_href_valid("job-/x", true));
	assert_false(nbe_href_valid("jo1b/x", true));
	assert_false(nbe_href_valid("job/x/y", true));
	assert_false(nbe_href_valid("job/x y", true));
	assert_false(nbe_href_valid("", false));
	assert_true(nbe_href_is("job/1", "job"));
	assert_false(nbe_href_is("jobs/1", "job"));
	assert_false(nbe_href_is("job", "job"));
	assert_false(nbe_href_is("event/1", "job"));
}

static void test_principal(void **state)
{
	(void)state;
	/* ^[a-z-]+/[a-z0-9-]+$ */
	assert_true(nbe_principal_valid("user/5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22"));
	assert_true(nbe_principal_valid("group/nuvla-user"));
	assert_false(nbe_principal_valid("user/ABC"));
	assert_false(nbe_principal_valid("user/a_b"));
	assert_false(nbe_principal_valid("user/"));
	assert_false(nbe_principal_valid("/x"));
	assert_false(nbe_principal_valid("user"));
	assert_false(nbe_principal_valid("us3r/x"));
}

static void test_nuvlabox_normalize(void **state)
{
	char *s;

	(void)state;
	s = nbe_nuvlabox_id_normalize("1C56A9B8-0000-4000-8000-000000000001");
	assert_string_equal(s, "nuvlabox/1c56a9b8-0000-4000-8000-000000000001");
	nbe_free(s);
	s = nbe_nuvlabox_id_normalize("nuvlabox/1c56a9b8-0000-4000-8000-000000000001");
	assert_string_equal(s, "nuvlabox/1c56a9b8-0000-4000-8000-000000000001");
	nbe_free(s);
	assert_null(nbe_nuvlabox_id_normalize("nuvlabox/xyz"));
	assert_null(nbe_nuvlabox_id_normalize("job/1c56a9b8-0000-4000-8000-000000000001"));
	assert_null(nbe_nuvlabox_id_normalize(""));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uuid_v4),
		cmocka_unit_test(test_uuid_valid),
		cmocka_unit_test(test_href),
		cmocka_unit_test(test_principal),
		cmocka_unit_test(test_nuvlabox_normalize),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
