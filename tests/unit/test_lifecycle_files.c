/*
 * Unit tests: the activated credential (parse, atomic 0600 write, refusal
 * of a loose or foreign file) and authorized_keys edits for the ssh-key
 * jobs (every other line kept byte for byte, no duplicate, revocation of
 * every line holding the key, options and multi-line keys refused), with an
 * allocation-failure sweep over the edit.
 */
#include "testutil.h"

#include "alloc.h"
#include "authkeys.h"
#include "config.h"
#include "credential.h"
#include "fsutil.h"
#include "json.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ED    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPuCPuUaF1+i55Rh2zQZr0fCbqR3ZKUNeYOa1pKXsCy5"
#define ED_FP "SHA256:7r2w+Uug6A49+h+WLOgXYoTCR+ArKJ2t2qRSR4+jhJc"
#define EC                                                                                         \
	"ecdsa-sha2-nistp256 "                                                                     \
	"AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDS7kR9V6Aa2GAGTXAfF5AU/"             \
	"pAhJQdnOmglEhbBp/uUXvuk01yO9JWH0BjapbBmT1WcGRx51yFlJ4j2GTjCQfL8="

/* made by hand (no token needed for a public key); ssh-keygen -lf prints SK_FP */
#define SK                                                                                         \
	"sk-ssh-ed25519@openssh.com "                                                              \
	"AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g" \
	"AAAABHNzaDo="
#define SK_FP "SHA256:nX0hpi5mKbTIJ10yBq5/sLQhiI1Y0RBAqN0drDdgJWs"

#define NB   "nuvlabox/1c56d2f0-4b7e-4a4e-9d0e-2f4c1a7b9e33"
#define CRED "credential/0b8f7e4c-2d1a-4f5e-8c3b-9a6d5e4f3c2b"

static void test_credential_parse(void **state)
{
	struct nbe_credential c;
	struct nbe_error err = { { 0 } };
	const char *ok = "{\"api-key\":\"" CRED "\",\"secret-key\":\"s3cr3t-XYZ\"}";
	const char *bad[] = {
		"",
		"[]",
		"{\"api-key\":\"user/1\",\"secret-key\":\"x\"}",
		"{\"api-key\":\"" CRED "\"}",
		"{\"api-key\":\"" CRED "\",\"secret-key\":\"\"}",
		"{\"api-key\":\"" CRED "\",\"secret-key\":\"a b\"}",
		"{\"api-key\":\"" CRED "\",\"secret-key\":\"x\",\"nuvlabox-id\":\"job/1\"}",
	};

	(void)state;
	assert_int_equal(nbe_credential_parse(ok, strlen(ok), &c, &err), 0);
	assert_string_equal(c.api_key, CRED);
	assert_string_equal(c.api_secret, "s3cr3t-XYZ");
	assert_null(c.nuvlabox_id);
	nbe_credential_clear(&c);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(nbe_credential_parse(bad[i], strlen(bad[i]), &c, &err), -EBADMSG);
		assert_null(strstr(err.msg, "s3cr3t"));
	}
	/* an embedded NUL is not text */
	assert_int_equal(nbe_credential_parse("{}\0x", 4, &c, &err), -EBADMSG);
}

static void test_credential_file(void **state)
{
	char *dir = tu_mkdtemp(), *path = nbe_path_join(dir, NBE_CREDENTIAL_FILE), *other;
	char nb[] = NB, key[] = CRED, secret[] = "sec";
	struct nbe_credential c = { .nuvlabox_id = nb, .api_key = key, .api_secret = secret }, r;
	struct nbe_error err = { { 0 } };
	struct stat st;

	(void)state;
	assert_int_equal(nbe_credential_read(path, &r, &err), -ENOENT);
	assert_int_equal(nbe_credential_write(path, &c, &err), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(nbe_credential_read(path, &r, &err), 0);
	assert_string_equal(r.nuvlabox_id, NB);
	assert_string_equal(r.api_key, CRED);
	assert_string_equal(r.api_secret, "sec");
	nbe_credential_clear(&r);

	/* a loose mode is refused, as ssh refuses such keys */
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(nbe_credential_read(path, &r, &err), -EPERM);
	assert_non_null(strstr(err.msg, "chmod 600"));
	assert_int_equal(chmod(path, 0600), 0);

	/* the configuration takes it when it sets no credential itself */
	{
		struct nbe_config cfg;
		char *text = NULL;
		size_t n = 2 * strlen(dir) + 160;

		text = malloc(n);
		assert_non_null(text);
		snprintf(text, n, "state_dir = %s\nnuvlaedge_dir = %s/none\n", dir, dir);
		assert_int_equal(nbe_config_defaults(&cfg, NULL), 0);
		assert_int_equal(nbe_config_load_text(&cfg, text, "test", &err), 0);
		assert_int_equal(nbe_config_apply_nuvlaedge(&cfg), 0);
		assert_string_equal(cfg.api_key, CRED);
		assert_string_equal(cfg.nuvlabox_id, NB);
		assert_string_equal(cfg.api_secret, "sec");
		assert_string_equal(cfg.identity_source, path);
		nbe_config_free(&cfg);

		/* ... but not for another nuvlabox */
		snprintf(text, n, "state_dir = %s\nnuvlabox_id = nuvlabox/%s\n", dir,
			 "2d67e3f1-5c8f-4b5f-8e1f-3f5d2b8c0f44");
		assert_int_equal(nbe_config_defaults(&cfg, NULL), 0);
		assert_int_equal(nbe_config_load_text(&cfg, text, "test", &err), 0);
		assert_int_equal(nbe_config_apply_nuvlaedge(&cfg), 0);
		assert_null(cfg.api_key);
		assert_non_null(strstr(cfg.identity_note, "not to the configured"));
		nbe_config_free(&cfg);
		free(text);
	}

	/* a failed write leaves the old file untouched, whichever step fails */
	other = nbe_path_join(dir, "missing-dir/credential.json");
	assert_int_equal(nbe_credential_write(other, &c, &err), -ENOENT);
	nbe_free(other);
	{
		char *before = tu_read(path), *after, nsecret[] = "another";
		struct nbe_credential c2 = c;
		unsigned long n;
		int rw;

		c2.api_secret = nsecret;
		for (n = 1;; n++) {
			nbe_alloc_fail_at(n, 0);
			rw = nbe_credential_write(path, &c2, &err);
			nbe_alloc_fail_at(0, 0);
			if (rw == 0)
				break;
			assert_int_equal(rw, -ENOMEM);
			after = tu_read(path);
			assert_string_equal(after, before);
			free(after);
		}
		assert_true(n > 1);
		after = tu_read(path);
		assert_non_null(strstr(after, "another"));
		free(after);
		free(before);
	}
	nbe_free(path);
	tu_rmtree(dir);
}

static void edit_ok(const char *text, const char *key, bool add, const char *want, bool changed)
{
	struct nbe_error err = { { 0 } };
	char *out = NULL;
	size_t len = 0;
	bool ch = !changed;

	assert_int_equal(nbe_authkeys_edit(text, strlen(text), key, add, &out, &len, &ch, &err), 0);
	assert_string_equal(out, want);
	assert_int_equal(len, strlen(want));
	assert_int_equal(ch, changed);
	nbe_free(out);
}

static void test_authkeys_edit(void **state)
{
	const char *other = "# comment\n\n"
			    "from=\"10.0.0.0/8\",no-pty " EC " ops\n"
			    "garbage that sshd ignores\n"
			    "\t# indented, no newline at the end";

	(void)state;
	/* added after everything else; a missing final newline is supplied */
	edit_ok(other, ED " me", true,
		"# comment\n\nfrom=\"10.0.0.0/8\",no-pty " EC
		" ops\ngarbage that sshd ignores\n\t# indented, no newline at "
		"the end\n" ED " me\n",
		true);
	edit_ok("", ED, true, ED "\n", true);
	/* present already (with another comment, or behind options): unchanged */
	edit_ok(ED " old\n", ED " new", true, ED " old\n", false);
	edit_ok("restrict " ED "\n", ED, true, "restrict " ED "\n", false);
	/* revoked: every line holding the key goes, with or without options */
	edit_ok("# a\n" ED " x\n" EC "\nno-pty " ED " y\r\n# b\n", ED, false, "# a\n" EC "\n# b\n",
		true);
	edit_ok(other, ED, false, other, false);
	/* ecdsa and sk keys are keys like any other (the job engine's regex
	 * refuses them: NUVLA-CONTRACT §4) */
	edit_ok(ED "\n", EC " c", true, ED "\n" EC " c\n", true);
	edit_ok(ED "\n", SK " yubi@test", true, ED "\n" SK " yubi@test\n", true);
	edit_ok(ED "\n" SK "\n", SK, false, ED "\n", true);
	{
		/* sshd reads a line up to a NUL (found by fuzzing): a key followed
		 * by a NUL is still its key and is revoked; a line that holds the
		 * key only beyond a NUL is not the key, which is then added */
		static const char revoke[] = ED "\0x\n", add[] = "n\"\0\" " ED "\n";
		struct nbe_error err = { { 0 } };
		bool changed;
		size_t olen;
		char *out;

		assert_int_equal(nbe_authkeys_edit(revoke, sizeof(revoke) - 1, ED, false, &out,
						   &olen, &changed, &err),
				 0);
		assert_true(changed);
		assert_int_equal(olen, 0);
		nbe_free(out);
		assert_int_equal(nbe_authkeys_edit(add, sizeof(add) - 1, ED, true, &out, &olen,
						   &changed, &err),
				 0);
		assert_true(changed);
		assert_int_equal(olen, sizeof(add) - 1 + strlen(ED) + 1);
		assert_memory_equal(out + sizeof(add) - 1, ED "\n", strlen(ED) + 1);
		nbe_free(out);
	}
	{
		struct nbe_sshkey k;
		struct nbe_error err = { { 0 } };
		assert_int_equal(nbe_authkeys_check_key(SK " yubi@test", &k, &err), 0);
		assert_string_equal(k.fingerprint, SK_FP);
		assert_string_equal(k.type, "sk-ssh-ed25519@openssh.com");
	}
}

static void test_authkeys_refuses(void **state)
{
	const char *bad[] = {
		"",
		"ssh-rsa not-base64!!!",
		ED "\nssh-rsa AAAA injected",
		"command=\"/bin/sh\" " ED,
		"ssh-foo AAAA",
		"# " ED,
	};
	struct nbe_error err = { { 0 } };
	char x[] = "x", *out = x;
	size_t len = 1;
	bool ch = true;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(nbe_authkeys_edit("", 0, bad[i], true, &out, &len, &ch, &err),
				 -EINVAL);
		assert_null(out);
		assert_false(ch);
	}
}

static void test_authkeys_file(void **state)
{
	char *dir = tu_mkdtemp(), *path = nbe_path_join(dir, "authorized_keys"),
	     *link = nbe_path_join(dir, "link"), *text;
	struct nbe_error err = { { 0 } };
	struct stat st;
	bool ch;
	int r;

	(void)state;
	/* revoking from a missing file changes nothing; adding creates it 0600 */
	assert_int_equal(nbe_authkeys_update(path, ED, false, &ch, &err), 0);
	assert_false(ch);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(nbe_authkeys_update(path, ED, true, &ch, &err), 0);
	assert_true(ch);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	/* the mode of an existing file is kept */
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(nbe_authkeys_update(path, EC, true, &ch, &err), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0644);
	text = tu_read(path);
	assert_string_equal(text, ED "\n" EC "\n");
	free(text);
	/* a symbolic link is neither followed nor replaced */
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(nbe_authkeys_update(link, ED, false, &ch, &err), -ELOOP);
	assert_non_null(strstr(err.msg, "symbolic link"));
	/* a FIFO swapped in is refused at once, not waited on */
	{
		char *fifo = nbe_path_join(dir, "fifo");
		assert_int_equal(mkfifo(fifo, 0600), 0);
		assert_int_equal(nbe_authkeys_update(fifo, ED, true, &ch, &err), -EINVAL);
		assert_non_null(strstr(err.msg, "not a regular file"));
		nbe_free(fifo);
	}
	/* a directory that is a symbolic link (~/.ssh -> /root/.ssh) is refused */
	{
		char *ldir = nbe_path_join(dir, "ldir"),
		     *lpath = nbe_path_join(ldir, "authorized_keys");
		assert_int_equal(symlink(dir, ldir), 0);
		r = nbe_authkeys_update(lpath, EC, false, &ch, &err);
		assert_true(r == -ENOTDIR || r == -ELOOP);
		assert_non_null(strstr(err.msg, "symbolic link"));
		nbe_free(lpath);
		nbe_free(ldir);
	}
	/* as root: a new file belongs to its directory's owner (sshd's StrictModes),
	 * an existing one keeps its owner; a directory of a third user is refused */
	if (geteuid() == 0) {
		char *sub = nbe_path_join(dir, "home"), *ak = nbe_path_join(sub, "authorized_keys");
		assert_int_equal(mkdir(sub, 0700), 0);
		assert_int_equal(chown(sub, 65534, 65534), 0);
		assert_int_equal(nbe_authkeys_update(ak, ED, true, &ch, &err), 0);
		assert_int_equal(stat(ak, &st), 0);
		assert_int_equal(st.st_uid, 65534);
		assert_int_equal(st.st_gid, 65534);
		assert_int_equal(st.st_mode & 07777, 0600);
		assert_int_equal(chown(sub, 1234, 1234), 0);
		assert_int_equal(nbe_authkeys_update(ak, EC, true, &ch, &err), -EPERM);
		assert_false(ch);
		nbe_free(ak);
		nbe_free(sub);
	}
	nbe_free(link);
	nbe_free(path);
	tu_rmtree(dir);
}

/* Every allocation of an edit may fail: a clear -ENOMEM, nothing leaked. */
static void test_authkeys_alloc_failures(void **state)
{
	const char *text = "# c\n" EC "\n";
	unsigned long n;

	(void)state;
	for (n = 1;; n++) {
		struct nbe_error err = { { 0 } };
		char *out = NULL;
		size_t len;
		bool ch;
		int r;

		nbe_alloc_fail_at(n, 0);
		r = nbe_authkeys_edit(text, strlen(text), ED, true, &out, &len, &ch, &err);
		nbe_alloc_fail_at(0, 0);
		if (r == 0) {
			nbe_free(out);
			break;
		}
		assert_int_equal(r, -ENOMEM);
		assert_null(out);
	}
	assert_true(n > 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_credential_parse),
		cmocka_unit_test(test_credential_file),
		cmocka_unit_test(test_authkeys_edit),
		cmocka_unit_test(test_authkeys_refuses),
		cmocka_unit_test(test_authkeys_file),
		cmocka_unit_test(test_authkeys_alloc_failures),
	};

	nbe_json_install_hooks();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
