/*
 * Harness: NuvlaEdge's legacy files, .context (the nuvlabox id) and
 * .activated (api-key, secret-key), read when there is no
 * nuvlaedge_session.json. The input is .context, a NUL byte, .activated;
 * an empty .context part and a missing NUL stand for an absent file.
 */
#include "fuzz.h"

#include "ids.h"
#include "nuvlaedge.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DIR "/srv/nuvlaedge/shared"

static void one(const uint8_t *data, size_t size, bool oom)
{
	struct nbe_nuvlaedge_identity id;
	struct nbe_error err = { { 0 } };
	char *text = fuzz_strndup(data, size);
	size_t clen = strlen(text);
	const char *context = clen ? text : NULL;
	const char *activated = clen < size ? text + clen + 1 : NULL;
	int r = nbe_nuvlaedge_parse_legacy(context, activated, DIR, &id, &err);

	free(text);
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL || (r == -ENOMEM && oom) ||
			   (r == -ENOENT && !context && !activated));
		FUZZ_CHECK(err.msg[0] != '\0' || r == -ENOENT);
		return;
	}
	FUZZ_CHECK(context || activated);
	FUZZ_CHECK(!id.nuvlabox_id || nbe_href_is(id.nuvlabox_id, "nuvlabox"));
	FUZZ_CHECK(!id.api_key || nbe_href_is(id.api_key, "credential"));
	FUZZ_CHECK(!id.api_key == !id.api_secret);
	FUZZ_CHECK(!activated || id.api_key);
	FUZZ_CHECK(strncmp(id.source, DIR "/.", sizeof(DIR) + 1) == 0);
	nbe_nuvlaedge_identity_clear(&id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
