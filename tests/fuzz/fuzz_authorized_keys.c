/*
 * Harness: an authorized_keys file, as the key watcher reads it
 * (nbe_sshkeys_parse(): lines, options, quoting, key types, base64, the
 * blob's own type, fingerprints). The input is the file.
 */
#include "fuzz.h"

#include "sshkeys.h"

#include <errno.h>
#include <string.h>

#define MAX_KEYS 64

static void one(const uint8_t *data, size_t size, bool oom)
{
	static struct nbe_sshkey keys[MAX_KEYS];
	size_t n = 0;
	int r = nbe_sshkeys_parse((const char *)data, size, keys, MAX_KEYS, &n);

	FUZZ_CHECK(r == 0 || (r == -ENOMEM && oom));
	if (r < 0)
		return;
	FUZZ_CHECK(n <= MAX_KEYS);
	for (size_t i = 0; i < n; i++) {
		const struct nbe_sshkey *k = &keys[i];

		FUZZ_CHECK(nbe_sshkey_type_known(k->type, strlen(k->type)));
		/* "SHA256:" and 43 characters of unpadded base64, as ssh-keygen -l */
		FUZZ_CHECK(strncmp(k->fingerprint, "SHA256:", 7) == 0);
		FUZZ_CHECK(strlen(k->fingerprint) == 7 + 43);
		FUZZ_CHECK(strspn(k->fingerprint + 7,
				  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvw"
				  "xyz0123456789+/") == 43);
		FUZZ_CHECK(!strchr(k->comment, '\n'));
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(keys[j].fingerprint, k->fingerprint) != 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
