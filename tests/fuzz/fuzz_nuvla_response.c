/*
 * Harness: what the agent reads in Nuvla's (or a gateway's) answers: the
 * status and error body of every answer (nbe_nuvla_classify_answer(),
 * nbe_nuvla_parse_error()), Retry-After headers, the create answer's
 * resource id, the nuvlabox document (state, owner), the search answer
 * of an in-doubt lookup and the activate answer (the credential). A session
 * (login) answer is classified like any other; its cookie is libcurl's
 * business.
 *
 * The input is an HTTP/1.1 answer as it comes off the wire, without the
 * transfer encoding: a status line, header lines, an empty line, the body.
 * Without the empty line the headers run to the end and the body is empty.
 */
#include "fuzz.h"

#include "alloc.h"
#include "credential.h"
#include "ids.h"
#include "nuvla.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NOW_S INT64_C(1764400000)

static const char *const tags[] = {
	"device-event/5e1d7a4c-0c1b-4d43-9a8b-6f3e7d8a1b22",
	"device-event/0b7c5d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e",
	"device-event/",
};
#define NTAGS (sizeof(tags) / sizeof(tags[0]))

/* The status of "HTTP/1.1 201 Created" (or a bare "201"); 0 if none. */
static long status_of(const char *line, size_t n)
{
	const char *p = memchr(line, ' ', n);
	long s = 0;
	size_t i;

	i = p ? (size_t)(p - line) + 1 : 0;
	for (int digits = 0; i < n && line[i] >= '0' && line[i] <= '9' && digits < 3; i++, digits++)
		s = s * 10 + (line[i] - '0');
	return s;
}

/* The activate answer: the credential whose secret is shown only once. */
static void check_credential(const char *body, size_t len, bool oom)
{
	struct nbe_credential c;
	struct nbe_error err = { { 0 } };
	int r = nbe_credential_parse(body, len, &c, &err);

	FUZZ_CHECK(r == 0 || r == -EBADMSG || (r == -ENOMEM && oom));
	if (r < 0) {
		FUZZ_CHECK(err.msg[0] != '\0');
		return;
	}
	FUZZ_CHECK(nbe_href_is(c.api_key, "credential"));
	FUZZ_CHECK(c.api_secret && c.api_secret[0] && fuzz_printable(c.api_secret));
	FUZZ_CHECK(!c.nuvlabox_id || nbe_href_is(c.nuvlabox_id, "nuvlabox"));
	nbe_credential_clear(&c);
}

static void check_body_parsers(const char *body, bool oom)
{
	char msg[400], state[32] = "", *owner = NULL, *ids[NTAGS], *id;
	long s;
	int r;

	s = nbe_nuvla_parse_error(body, msg, sizeof(msg));
	FUZZ_CHECK(s == -1 || (s >= 100 && s <= 599 && fuzz_printable(msg)));

	id = nbe_nuvla_resource_id(body);
	nbe_free(id);

	r = nbe_nuvla_parse_nuvlabox(body, state, sizeof(state), &owner);
	FUZZ_CHECK(r == 0 || (r == -ENOMEM && oom));
	FUZZ_CHECK(strlen(state) < sizeof(state));
	if (r == 0) {
		FUZZ_CHECK(!owner || nbe_principal_valid(owner));
		nbe_free(owner);
	}

	r = nbe_nuvla_parse_search(body, tags, NTAGS, ids);
	FUZZ_CHECK(r == 0 || r == -EINVAL || (r == -ENOMEM && oom));
	for (size_t i = 0; r == 0 && i < NTAGS; i++) {
		FUZZ_CHECK(!ids[i] || nbe_href_is(ids[i], "event"));
		nbe_free(ids[i]);
	}
}

static void one(const uint8_t *data, size_t size, bool oom)
{
	const char *text = (const char *)data, *end = text + size, *p;
	struct nbe_http_response r = { 0 };
	const char *nl = memchr(text, '\n', size);
	long status = status_of(text, nl ? (size_t)(nl - text) : size);
	char *body;

	/* the header lines, as libcurl hands them over (with their CRLF) */
	for (p = nl ? nl + 1 : end; p < end;) {
		const char *e = memchr(p, '\n', (size_t)(end - p));
		size_t n = e ? (size_t)(e - p) + 1 : (size_t)(end - p);
		int64_t s;

		if (n == 1 || (n == 2 && p[0] == '\r')) {
			p += n;
			break; /* the empty line: the body follows */
		}
		s = nbe_nuvla_parse_retry_after(p, n, NOW_S);
		FUZZ_CHECK(s >= -1 && s <= NBE_RETRY_AFTER_MAX_S);
		p += n;
	}
	body = fuzz_strndup((const uint8_t *)p, (size_t)(end - p));

	/* classify takes ownership of the body as the client does */
	r.body = nbe_strdup(body);
	FUZZ_CHECK(r.body || oom);
	r.body_len = r.body ? strlen(r.body) : 0;
	nbe_nuvla_classify_answer(status, &r);
	FUZZ_CHECK(r.status == status);
	FUZZ_CHECK(fuzz_printable(r.message) && r.message[0]);
	if (status >= 200 && status < 300)
		FUZZ_CHECK(r.cls == NBE_HTTP_OK);
	else
		FUZZ_CHECK(r.cls == NBE_HTTP_NUVLA_ERROR || r.cls == NBE_HTTP_GATEWAY_ERROR);
	nbe_http_response_clear(&r);

	check_body_parsers(body, oom);
	check_credential(body, (size_t)(end - p), oom);
	free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
