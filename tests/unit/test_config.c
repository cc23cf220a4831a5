/* Unit tests: configuration file, environment, precedence, value parsing. */
#include "testutil.h"

#include "config.h"
#include "parse.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A fake environment for the tests. */
static const char *const *fake_env;

static const char *env_get(const char *name)
{
	for (const char *const *p = fake_env; p && *p; p += 2) {
		if (strcmp(p[0], name) == 0)
			return p[1];
	}
	return NULL;
}

static void test_parse_numbers(void **state)
{
	int64_t v;
	bool b;

	(void)state;
	assert_int_equal(nbe_parse_int64("42", 0, 100, &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(nbe_parse_int64("-5", -10, 10, &v), 0);
	assert_int_equal(v, -5);
	v = 7;
	assert_int_equal(nbe_parse_int64("101", 0, 100, &v), -ERANGE);
	assert_int_equal(v, 7);
	assert_int_equal(nbe_parse_int64("", 0, 100, &v), -EINVAL);
	assert_int_equal(nbe_parse_int64("12a", 0, 100, &v), -EINVAL);
	assert_int_equal(nbe_parse_int64(" 1", 0, 100, &v), -EINVAL);
	assert_int_equal(nbe_parse_int64("99999999999999999999", 0, INT64_MAX, &v), -ERANGE);

	assert_int_equal(nbe_parse_size("512K", &v), 0);
	assert_int_equal(v, 512 * 1024);
	assert_int_equal(nbe_parse_size("64M", &v), 0);
	assert_int_equal(v, 64 * 1024 * 1024);
	assert_int_equal(nbe_parse_size("1G", &v), 0);
	assert_int_equal(v, INT64_C(1) << 30);
	assert_int_equal(nbe_parse_size("1000", &v), 0);
	assert_int_equal(v, 1000);
	assert_int_equal(nbe_parse_size("64MB", &v), 0);
	assert_int_equal(nbe_parse_size("64X", &v), -EINVAL);
	assert_int_equal(nbe_parse_size("M", &v), -EINVAL);
	assert_int_equal(nbe_parse_size("-1M", &v), -ERANGE);
	assert_int_equal(nbe_parse_size("99999999999G", &v), -ERANGE);

	assert_int_equal(nbe_parse_duration_ms("500ms", &v), 0);
	assert_int_equal(v, 500);
	assert_int_equal(nbe_parse_duration_ms("10s", &v), 0);
	assert_int_equal(v, 10000);
	assert_int_equal(nbe_parse_duration_ms("5m", &v), 0);
	assert_int_equal(v, 300000);
	assert_int_equal(nbe_parse_duration_ms("1h", &v), 0);
	assert_int_equal(v, 3600000);
	assert_int_equal(nbe_parse_duration_ms("30", &v), 0);
	assert_int_equal(v, 30000);
	assert_int_equal(nbe_parse_duration_ms("1d", &v), -EINVAL);
	assert_int_equal(nbe_parse_duration_ms("s", &v), -EINVAL);

	assert_int_equal(nbe_parse_bool("TRUE", &b), 0);
	assert_true(b);
	assert_int_equal(nbe_parse_bool("off", &b), 0);
	assert_false(b);
	assert_int_equal(nbe_parse_bool("maybe", &b), -EINVAL);
}

static void test_defaults(void **state)
{
	static const char *const env[] = { "HOST_HOME", "/home/edge", "RUNTIME_DIRECTORY",
					   "/run/x:/run/y", NULL };
	struct nbe_config c;
	struct nbe_error err = { { 0 } };

	(void)state;
	fake_env = NULL;
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	assert_string_equal(c.endpoint, "https://nuvla.io");
	assert_null(c.nuvlabox_id);
	assert_false(c.insecure);
	assert_null(c.ca_file);
	assert_null(c.client_cert);
	assert_string_equal(c.nuvlaedge_dir, "/var/lib/nuvlaedge");
	assert_string_equal(c.state_dir, "/var/lib/nuvlabox-event");
	assert_int_equal(c.max_buffer_bytes, 64 * 1024 * 1024);
	assert_int_equal(c.max_events, 1000000);
	assert_int_equal(c.keep_sent, 1000);
	assert_int_equal(c.retry_base_ms, 1000);
	assert_int_equal(c.retry_cap_ms, 300000);
	assert_int_equal(c.request_timeout_ms, 30000);
	assert_int_equal(c.max_in_flight, 8);
	assert_string_equal(c.authorized_keys[0], "/root/.ssh/authorized_keys");
	assert_null(c.authorized_keys[1]);
	assert_int_equal(c.log_level, NBE_LOG_INFO);
	assert_string_equal(c.runtime_dir, "/run/nuvlabox-event");
	assert_string_equal(c.boot_id_file, "/proc/sys/kernel/random/boot_id");
	assert_int_equal(nbe_config_validate(&c, &err), 0);
	nbe_config_free(&c);

	fake_env = env;
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	assert_string_equal(c.authorized_keys[0], "/home/edge/.ssh/authorized_keys");
	assert_string_equal(c.runtime_dir, "/run/x");
	nbe_config_free(&c);
}

static void test_file(void **state)
{
	const char *text =
		"# comment\n"
		"\n"
		"  endpoint = nuvla.example.org:8443/  \n"
		"nuvlabox_id=1C56A9B8-0000-4000-8000-000000000001\n"
		"insecure = yes # trailing comment\n"
		"ca_file = \"/etc/ssl/ca #1.pem\"\n"
		"max_buffer_bytes = 512K\n"
		"max_events = 5000\n"
		"retry_base = 500ms\n"
		"retry_cap = 1h\n"
		"request_timeout = 10s\n"
		"authorized_keys = /root/.ssh/authorized_keys, /home/a/.ssh/authorized_keys\n"
		"log_level = debug\r\n"
		"api_key = credential/0a1b2c\n";
	struct nbe_config c;
	struct nbe_error err = { { 0 } };

	(void)state;
	fake_env = NULL;
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	if (nbe_config_load_text(&c, text, "agent.conf", &err) != 0)
		fail_msg("%s", err.msg);
	assert_string_equal(c.endpoint, "https://nuvla.example.org:8443");
	assert_string_equal(c.nuvlabox_id, "nuvlabox/1c56a9b8-0000-4000-8000-000000000001");
	assert_true(c.insecure);
	assert_string_equal(c.ca_file, "/etc/ssl/ca #1.pem");
	assert_int_equal(c.max_buffer_bytes, 512 * 1024);
	assert_int_equal(c.max_events, 5000);
	assert_int_equal(c.retry_base_ms, 500);
	assert_int_equal(c.retry_cap_ms, 3600000);
	assert_int_equal(c.request_timeout_ms, 10000);
	assert_string_equal(c.authorized_keys[0], "/root/.ssh/authorized_keys");
	assert_string_equal(c.authorized_keys[1], "/home/a/.ssh/authorized_keys");
	assert_null(c.authorized_keys[2]);
	assert_int_equal(c.log_level, NBE_LOG_DEBUG);
	assert_string_equal(c.api_key, "credential/0a1b2c");
	assert_int_equal(nbe_config_validate(&c, &err), 0);
	nbe_config_free(&c);
}

static void test_file_errors(void **state)
{
	static const struct {
		const char *text, *msg;
	} cases[] = {
		{ "bogus = 1\n", "f.conf:1: unknown key 'bogus'" },
		{ "\n\nmax_events = lots\n", "f.conf:3: max_events: 'lots' is not a valid number" },
		{ "max_events = 5\n", "f.conf:1: max_events: '5' is out of range" },
		{ "max_buffer_bytes = 64Q\n",
		  "f.conf:1: max_buffer_bytes: '64Q' is not a valid size" },
		{ "max_buffer_bytes = 1K\n", "out of range" },
		{ "retry_cap = soon\n", "f.conf:1: retry_cap: 'soon' is not a valid duration" },
		{ "insecure = perhaps\n", "f.conf:1: insecure: 'perhaps' is not true or false" },
		{ "endpoint = ftp://x\n", "f.conf:1: endpoint" },
		{ "endpoint = https://\n", "f.conf:1: endpoint" },
		{ "endpoint = /\n", "f.conf:1: endpoint" }, /* no host (found by fuzzing) */
		{ "endpoint = ///\n", "f.conf:1: endpoint" },
		{ "nuvlabox_id = 42\n", "f.conf:1: nuvlabox_id" },
		{ "api_key = key\n", "f.conf:1: api_key" },
		{ "log_level = loud\n", "f.conf:1: log_level" },
		{ "just words\n", "f.conf:1: expected 'key = value'" },
		{ "state_dir =\n", "f.conf:1: state_dir: empty value" },
		{ "max_events = 50\nmax_events = 60\n",
		  "f.conf:2: 'max_events' already set on line 1" },
		{ "authorized_keys = relative/path\n", "not an absolute path" },
		{ "log_level = info\xff\n", "invalid UTF-8" },
		{ "max_in_flight = 65\n", "out of range" },
	};
	struct nbe_config c;

	(void)state;
	fake_env = NULL;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct nbe_error err = { { 0 } };
		int r;

		assert_int_equal(nbe_config_defaults(&c, env_get), 0);
		r = nbe_config_load_text(&c, cases[i].text, "f.conf", &err);
		if (r != -EINVAL || !strstr(err.msg, cases[i].msg))
			fail_msg("case %zu: got %d '%s', want '%s'", i, r, err.msg, cases[i].msg);
		nbe_config_free(&c);
	}
}

static void test_validate(void **state)
{
	struct nbe_config c;
	struct nbe_error err = { { 0 } };

	(void)state;
	fake_env = NULL;
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	assert_int_equal(nbe_config_load_text(&c, "retry_base = 10m\nretry_cap = 1m\n", "f", &err),
			 0);
	assert_int_equal(nbe_config_validate(&c, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "retry_base"));
	nbe_config_free(&c);
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	assert_int_equal(nbe_config_load_text(&c, "client_cert = /x.pem\n", "f", &err), 0);
	assert_int_equal(nbe_config_validate(&c, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "client_key"));
	nbe_config_free(&c);
}

static void test_env_and_precedence(void **state)
{
	static const char *const env[] = {
		"NUVLA_ENDPOINT",
		"nuvla.env.org",
		"NUVLABOX_UUID",
		"00000000-0000-4000-8000-000000000001",
		"NUVLAEDGE_UUID",
		"00000000-0000-4000-8000-000000000002",
		"NUVLA_ENDPOINT_INSECURE",
		"true",
		"NUVLAEDGE_API_KEY",
		"credential/env",
		"NUVLAEDGE_API_SECRET",
		"s3cr3t",
		NULL,
	};
	static const char *const bad_env[] = { "NUVLABOX_UUID", "nope", NULL };
	struct nbe_config c;
	struct nbe_error err = { { 0 } };

	(void)state;
	fake_env = env;
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	assert_int_equal(nbe_config_load_text(&c,
					      "endpoint = https://file.org\n"
					      "nuvlabox_id = 00000000-0000-4000-8000-000000000003\n"
					      "state_dir = /from/file\n",
					      "f", &err),
			 0);
	assert_int_equal(nbe_config_apply_env(&c, env_get, &err), 0);
	assert_int_equal(nbe_config_set(&c, "state_dir", "/from/flag", &err), 0);
	assert_string_equal(c.endpoint, "https://nuvla.env.org");
	/* NUVLAEDGE_UUID is the newer name and wins over NUVLABOX_UUID */
	assert_string_equal(c.nuvlabox_id, "nuvlabox/00000000-0000-4000-8000-000000000002");
	assert_true(c.insecure);
	assert_string_equal(c.api_key, "credential/env");
	assert_string_equal(c.api_secret, "s3cr3t");
	assert_string_equal(c.state_dir, "/from/flag");
	nbe_config_free(&c);

	fake_env = bad_env;
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	assert_int_equal(nbe_config_apply_env(&c, env_get, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "NUVLABOX_UUID"));
	nbe_config_free(&c);
}

static void test_load_file(void **state)
{
	char *dir = tu_mkdtemp(), *f, *big;
	struct nbe_config c;
	struct nbe_error err = { { 0 } };
	char path[4200];

	(void)state;
	fake_env = NULL;
	assert_int_equal(nbe_config_defaults(&c, env_get), 0);
	snprintf(path, sizeof(path), "%s/missing.conf", dir);
	assert_int_equal(nbe_config_load_file(&c, path, false, &err), 0);
	assert_int_equal(nbe_config_load_file(&c, path, true, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "missing.conf"));
	f = tu_write(dir, "ok.conf", "max_events = 77\n");
	assert_int_equal(nbe_config_load_file(&c, f, true, &err), 0);
	assert_int_equal(c.max_events, 77);
	free(f);
	big = malloc(NBE_CONFIG_MAX_BYTES + 10);
	assert_non_null(big);
	memset(big, '#', NBE_CONFIG_MAX_BYTES + 9);
	big[NBE_CONFIG_MAX_BYTES + 9] = '\0';
	f = tu_write(dir, "big.conf", big);
	assert_int_equal(nbe_config_load_file(&c, f, true, &err), -EFBIG);
	free(f);
	free(big);
	nbe_config_free(&c);
	tu_rmtree(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_numbers), cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_file),	      cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_validate),      cmocka_unit_test(test_env_and_precedence),
		cmocka_unit_test(test_load_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
