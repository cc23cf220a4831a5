/*
 * Harness: NuvlaEdge's nuvlaedge_session.json (NUVLA-CONTRACT §5): the
 * device's uuid, endpoint, insecure flag, and its credential in clear
 * ("credentials") or as "irs2" (base64 of IV || AES-256-CBC, keyed with
 * SHA-256 of "<uuid>:"). The input is the file.
 */
#include "fuzz.h"

#include "ids.h"
#include "nuvlaedge.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PATH "/var/lib/nuvlaedge/nuvlaedge_session.json"

static void one(const uint8_t *data, size_t size, bool oom)
{
	struct nbe_nuvlaedge_identity id;
	struct nbe_error err = { { 0 } };
	char *text = fuzz_strndup(data, size);
	int r = nbe_nuvlaedge_parse_session(text, PATH, &id, &err);

	free(text);
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL || r == -EBADMSG || (r == -ENOMEM && oom));
		FUZZ_CHECK(err.msg[0] != '\0');
		return;
	}
	FUZZ_CHECK(id.nuvlabox_id && nbe_href_is(id.nuvlabox_id, "nuvlabox"));
	FUZZ_CHECK(!id.api_key || nbe_href_is(id.api_key, "credential"));
	FUZZ_CHECK(!id.api_key == !id.api_secret);
	FUZZ_CHECK(id.insecure >= -1 && id.insecure <= 1);
	FUZZ_CHECK(strcmp(id.source, PATH) == 0);
	nbe_nuvlaedge_identity_clear(&id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
