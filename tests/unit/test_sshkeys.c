/*
 * Unit tests: authorized_keys lines as sshd reads them, and fingerprints as
 * ssh-keygen -l prints them (the vectors below were printed by ssh-keygen;
 * tests/unit/sshkeys_check.py compares freshly generated keys too).
 */
#include "testutil.h"

#include "alloc.h"
#include "json.h"
#include "sshkeys.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#define ED    "AAAAC3NzaC1lZDI1NTE5AAAAIPuCPuUaF1+i55Rh2zQZr0fCbqR3ZKUNeYOa1pKXsCy5"
#define ED_FP "SHA256:7r2w+Uug6A49+h+WLOgXYoTCR+ArKJ2t2qRSR4+jhJc"
#define EC                                                                                         \
	"AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDS7kR9V6Aa2GAGTXAfF5AU/"             \
	"pAhJQdnOmglEhbBp/uUXvuk01yO9JWH0BjapbBmT1WcGRx51yFlJ4j2GTjCQfL8="
#define EC_FP "SHA256:golFFsCXrSGYx2epfA+j04JKZ6SeWl3w4ZkpVrzieRA"

static int parse(const char *line, struct nbe_sshkey *k)
{
	memset(k, 0, sizeof(*k));
	return nbe_sshkey_parse_line(line, strlen(line), k);
}

static void test_plain_keys(void **state)
{
	struct nbe_sshkey k;

	(void)state;
	assert_int_equal(parse("ssh-ed25519 " ED " ops@example", &k), 1);
	assert_string_equal(k.type, "ssh-ed25519");
	assert_string_equal(k.fingerprint, ED_FP);
	assert_string_equal(k.comment, "ops@example");
	assert_false(k.has_options);
	assert_int_equal(parse("ecdsa-sha2-nistp256 " EC, &k), 1);
	assert_string_equal(k.fingerprint, EC_FP);
	assert_string_equal(k.comment, "");
	/* a comment with spaces, tabs around, CR at the end */
	assert_int_equal(parse("\t ssh-ed25519\t" ED "  Jane Doe <jane@x>  \r", &k), 1);
	assert_string_equal(k.comment, "Jane Doe <jane@x>");
}

static void test_options(void **state)
{
	struct nbe_sshkey k;

	(void)state;
	assert_int_equal(parse("no-pty,from=\"10.0.0.0/8\" ssh-ed25519 " ED " c", &k), 1);
	assert_true(k.has_options);
	assert_string_equal(k.fingerprint, ED_FP);
	assert_int_equal(
		parse("command=\"echo \\\"a b\\\" c\",no-agent-forwarding ssh-ed25519 " ED, &k), 1);
	assert_string_equal(k.type, "ssh-ed25519");
	assert_int_equal(parse("restrict ecdsa-sha2-nistp256 " EC " x", &k), 1);
	assert_string_equal(k.fingerprint, EC_FP);
}

static void test_not_keys(void **state)
{
	struct nbe_sshkey k;

	(void)state;
	assert_int_equal(parse("", &k), 0);
	assert_int_equal(parse("   \t ", &k), 0);
	assert_int_equal(parse("# ssh-ed25519 " ED, &k), 0);
	/* what sshd ignores */
	assert_int_equal(parse("ssh-foo " ED, &k), -EINVAL);
	assert_int_equal(parse("ssh-ed25519", &k), -EINVAL);
	assert_int_equal(parse("ssh-ed25519 !!!notbase64", &k), -EINVAL);
	assert_int_equal(parse("ssh-rsa " ED " mismatched type in the blob", &k), -EINVAL);
	assert_int_equal(parse("command=\"unclosed ssh-ed25519 " ED, &k), -EINVAL);
	assert_int_equal(parse("garbage words here", &k), -EINVAL);
}

static void test_types(void **state)
{
	static const char *const known[] = {
		"ssh-ed25519",
		"ssh-rsa",
		"ecdsa-sha2-nistp384",
		"ecdsa-sha2-nistp521",
		"sk-ssh-ed25519@openssh.com",
		"sk-ecdsa-sha2-nistp256@openssh.com",
		"ssh-ed25519-cert-v01@openssh.com",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		assert_true(nbe_sshkey_type_known(known[i], strlen(known[i])));
	assert_false(nbe_sshkey_type_known("ssh-ed2551", 10));
	assert_false(nbe_sshkey_type_known("", 0));
}

static void test_file(void **state)
{
	static const char text[] = "# keys\n"
				   "ssh-ed25519 " ED " first\r\n"
				   "\n"
				   "garbage\n"
				   "ssh-ed25519 " ED " same key again\n"
				   "ssh-rsa " ED " cut\0 by a NUL\n"
				   "ecdsa-sha2-nistp256 " EC; /* no final newline */
	struct nbe_sshkey keys[4];
	size_t n = 99;

	(void)state;
	assert_int_equal(nbe_sshkeys_parse(text, sizeof(text) - 1, keys, 4, &n), 0);
	/* the line cut by a NUL is read up to it, as sshd does; the lines after
	 * it are read too */
	assert_int_equal(n, 2);
	assert_string_equal(keys[0].fingerprint, ED_FP);
	assert_string_equal(keys[0].comment, "first");
	assert_string_equal(keys[1].fingerprint, EC_FP);
	/* the cap */
	assert_int_equal(nbe_sshkeys_parse(text, sizeof(text) - 1, keys, 1, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(nbe_sshkeys_parse("", 0, keys, 4, &n), 0);
	assert_int_equal(n, 0);
	/* out of memory is an error, not a key that went away */
	n = 99;
	nbe_alloc_fail_at(1, 1);
	assert_int_equal(nbe_sshkeys_parse(text, sizeof(text) - 1, keys, 4, &n), -ENOMEM);
	nbe_alloc_fail_at(0, 0);
	assert_int_equal(n, 99);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_keys), cmocka_unit_test(test_options),
		cmocka_unit_test(test_not_keys),   cmocka_unit_test(test_types),
		cmocka_unit_test(test_file),
	};

	nbe_json_install_hooks();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
