/* Unit tests: clocks, clock-sync decision, boot id, randomness. */
#include "testutil.h"

#include "clock.h"
#include "random.h"
#include "sysinfo.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timex.h>
#include <time.h>

static void test_sync_decision(void **state)
{
	(void)state;
	assert_true(nbe_clock_synced_from(0, false));
	assert_false(nbe_clock_synced_from(STA_UNSYNC, false));
	assert_true(nbe_clock_synced_from(STA_UNSYNC, true)); /* timesyncd knows better */
	assert_false(nbe_clock_synced_from(-1, false));
	assert_true(nbe_clock_synced_from(-1, true));
	assert_true(nbe_clock_synced_from(STA_PLL, false));
}

static void test_sync_file(void **state)
{
	char *dir = tu_mkdtemp(), *f;

	(void)state;
	f = tu_write(dir, "synchronized", "");
	assert_true(nbe_clock_synced(f));
	free(f);
	tu_rmtree(dir);
}

static void test_clocks(void **state)
{
	int64_t w = nbe_clock_wall_ms(), b1 = nbe_clock_boottime_ms(),
		m1 = nbe_clock_monotonic_ms();
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	(void)state;
	assert_true(w > INT64_C(1577836800000)); /* after 2020 */
	assert_true(llabs(w - (int64_t)time(NULL) * 1000) < 2000);
	nanosleep(&ts, NULL);
	assert_true(nbe_clock_boottime_ms() >= b1 + 19);
	assert_true(nbe_clock_monotonic_ms() >= m1 + 19);
	assert_true(b1 >= m1 - 1); /* boottime counts suspend too */
}

static void test_boot_id(void **state)
{
	char *dir = tu_mkdtemp(), *f, id[NBE_BOOT_ID_LEN + 1];

	(void)state;
	assert_int_equal(nbe_boot_id_read(NBE_BOOT_ID_FILE, id, sizeof(id)), 0);
	assert_int_equal(strlen(id), NBE_BOOT_ID_LEN);

	f = tu_write(dir, "ok", "0B7C5D1E-2F3A-4B5C-8D9E-0F1A2B3C4D5E\n");
	assert_int_equal(nbe_boot_id_read(f, id, sizeof(id)), 0);
	assert_string_equal(id, TU_BOOT_ID);
	free(f);

	memcpy(id, "unchanged", 10);
	f = tu_write(dir, "bad", "not-a-boot-id\n");
	assert_int_equal(nbe_boot_id_read(f, id, sizeof(id)), -EINVAL);
	assert_string_equal(id, "unchanged"); /* written only on success */
	free(f);
	f = tu_write(dir, "empty", "");
	assert_int_equal(nbe_boot_id_read(f, id, sizeof(id)), -EINVAL);
	free(f);
	f = tu_write(dir, "long", "0b7c5d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e0\n");
	assert_int_equal(nbe_boot_id_read(f, id, sizeof(id)), -EINVAL);
	free(f);
	assert_int_equal(nbe_boot_id_read("/nonexistent/boot_id", id, sizeof(id)), -ENOENT);
	assert_int_equal(nbe_boot_id_read(NBE_BOOT_ID_FILE, id, 10), -EINVAL);
	tu_rmtree(dir);
}

static void test_random(void **state)
{
	unsigned char a[32] = { 0 }, b[32] = { 0 };
	int hist[7] = { 0 };

	(void)state;
	assert_int_equal(nbe_random_bytes(a, sizeof(a)), 0);
	assert_int_equal(nbe_random_bytes(b, sizeof(b)), 0);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(nbe_random_below(0), 0);
	assert_int_equal(nbe_random_below(1), 0);
	for (int i = 0; i < 7000; i++) {
		uint64_t v = nbe_random_below(7);
		assert_true(v < 7);
		hist[v]++;
	}
	for (int i = 0; i < 7; i++)
		assert_true(hist[i] > 700 && hist[i] < 1300);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sync_decision), cmocka_unit_test(test_sync_file),
		cmocka_unit_test(test_clocks),	      cmocka_unit_test(test_boot_id),
		cmocka_unit_test(test_random),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
