/*
 * Harness: an authorized_keys file, as the key watcher reads it
 * (nbe_sshkeys_parse(): lines, options, quoting, key types, base64, the
 * blob's own type, fingerprints), and as the ssh-key jobs edit it
 * (nbe_authkeys_edit(): one key added, then removed again, and removed from
 * the file as it was). The input is the file.
 *
 * What sshd would accept after an edit is judged by nbe_sshkeys_parse(),
 * the watcher's reading: an added key is there, a removed one is not, and
 * no other key went away.
 */
#include "fuzz.h"

#include "alloc.h"
#include "authkeys.h"
#include "sshkeys.h"

#include <errno.h>
#include <string.h>

#define MAX_KEYS 1024
#define ED_KEY                                                                                     \
	"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPuCPuUaF1+i55Rh2zQZr0fCbqR3ZKUNeYOa1pKXsCy5 job"
#define ED_FP "SHA256:7r2w+Uug6A49+h+WLOgXYoTCR+ArKJ2t2qRSR4+jhJc"

struct keyset {
	struct nbe_sshkey keys[MAX_KEYS];
	size_t n;
};

static struct keyset before, after;

static void check_key(const struct nbe_sshkey *k)
{
	FUZZ_CHECK(nbe_sshkey_type_known(k->type, strlen(k->type)));
	/* "SHA256:" and 43 characters of unpadded base64, as ssh-keygen -l */
	FUZZ_CHECK(strncmp(k->fingerprint, "SHA256:", 7) == 0);
	FUZZ_CHECK(strlen(k->fingerprint) == 7 + 43);
	FUZZ_CHECK(strspn(k->fingerprint + 7, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvw"
					      "xyz0123456789+/") == 43);
	FUZZ_CHECK(!strchr(k->comment, '\n'));
}

/* Parses @text into @set; false when out of memory (allowed under @oom). */
static bool parse(const char *text, size_t len, struct keyset *set, bool oom)
{
	int r = nbe_sshkeys_parse(text, len, set->keys, MAX_KEYS, &set->n);

	FUZZ_CHECK(r == 0 || (r == -ENOMEM && oom));
	if (r < 0)
		return false;
	FUZZ_CHECK(set->n <= MAX_KEYS);
	for (size_t i = 0; i < set->n; i++) {
		check_key(&set->keys[i]);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(set->keys[j].fingerprint, set->keys[i].fingerprint) != 0);
	}
	return true;
}

static bool has(const struct keyset *set, const char *fp)
{
	for (size_t i = 0; i < set->n; i++) {
		if (strcmp(set->keys[i].fingerprint, fp) == 0)
			return true;
	}
	return false;
}

/* Edits @text and checks the result against @old (its keys); returns the
 * new text (nbe_free()) or NULL. */
static char *edit(const char *text, size_t len, const struct keyset *old, bool add, bool oom,
		  size_t *ret_len)
{
	struct nbe_error err = { { 0 } };
	bool changed;
	char *out;
	int r = nbe_authkeys_edit(text, len, ED_KEY, add, &out, ret_len, &changed, &err);

	FUZZ_CHECK(r == 0 || (r == -ENOMEM && oom));
	if (r < 0)
		return NULL;
	if (!parse(out, *ret_len, &after, oom)) {
		nbe_free(out);
		return NULL;
	}
	/* what sshd accepts afterwards: the key, or not; every other key */
	FUZZ_CHECK(has(&after, ED_FP) == add);
	FUZZ_CHECK(changed == (has(old, ED_FP) != add) || after.n == MAX_KEYS ||
		   old->n == MAX_KEYS);
	for (size_t i = 0; i < old->n && old->n < MAX_KEYS; i++)
		FUZZ_CHECK(!strcmp(old->keys[i].fingerprint, ED_FP) ||
			   has(&after, old->keys[i].fingerprint));
	return out;
}

static void one(const uint8_t *data, size_t size, bool oom)
{
	const char *text = (const char *)data;
	static struct keyset added;
	char *out, *out2;
	size_t len, len2;

	if (!parse(text, size, &before, oom))
		return;
	/* an edit of a file with more keys than the cap cannot be judged */
	if (before.n == MAX_KEYS)
		return;
	out = edit(text, size, &before, true, oom, &len);
	if (out) {
		added = after;
		out2 = edit(out, len, &added, false, oom, &len2);
		nbe_free(out2);
		nbe_free(out);
	}
	out = edit(text, size, &before, false, oom, &len);
	nbe_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
