/*
 * Harness: Nuvla's job documents as the job runner and the daemon's puller
 * read them (common/job.c): the input is read as a job document, as a
 * get-context answer (with the job read from the same input), and as a
 * heartbeat answer; whatever comes out is what the headers promise. A key
 * the context yields is then checked as the ssh-key jobs check it.
 */
#include "fuzz.h"

#include "alloc.h"
#include "authkeys.h"
#include "ids.h"
#include "job.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void one(const uint8_t *data, size_t size, bool oom)
{
	char *text = fuzz_strndup(data, size);
	struct nbe_job_doc job;
	struct nbe_error err = { { 0 } };
	char ids[8][NBE_HREF_MAX + 1], cred[NBE_HREF_MAX + 1], *key = NULL;
	bool is_job;
	unsigned n = 99;
	int r;

	r = nbe_job_parse(text, size, &job, &err);
	FUZZ_CHECK(r == 0 || r == -EBADMSG || (r == -ENOMEM && oom));
	is_job = r == 0;
	if (r == 0) {
		FUZZ_CHECK(job.action[0] != '\0' && fuzz_printable(job.action));
		FUZZ_CHECK(strlen(job.state) >= 6);
		FUZZ_CHECK(nbe_job_state_final(job.state) ==
			   (strcmp(job.state, "QUEUED") != 0 && strcmp(job.state, "RUNNING") != 0));
		FUZZ_CHECK(job.naffected <= NBE_JOB_AFFECTED_MAX);
		for (unsigned i = 0; i < job.naffected; i++)
			FUZZ_CHECK(nbe_href_valid(job.affected[i], true));
	} else {
		FUZZ_CHECK(err.msg[0] != '\0');
	}

	r = nbe_job_context_key(text, size, is_job ? &job : NULL, cred, &key);
	FUZZ_CHECK(r == 0 || r == -ENOENT || r == -EBADMSG || (r == -ENOMEM && oom));
	if (r == 0) {
		struct nbe_sshkey k;
		struct nbe_error kerr = { { 0 } };
		FUZZ_CHECK(key != NULL && nbe_href_is(cred, "credential"));
		if (nbe_authkeys_check_key(key, &k, &kerr) == 0) {
			/* a key that passes is one line sshd reads as a key, without options */
			FUZZ_CHECK(!strpbrk(key, "\r\n") && !k.has_options);
			FUZZ_CHECK(strncmp(k.fingerprint, "SHA256:", 7) == 0);
		} else {
			FUZZ_CHECK(kerr.msg[0] != '\0');
		}
		nbe_free(key);
	} else {
		FUZZ_CHECK(key == NULL);
	}

	r = nbe_heartbeat_jobs(text, size, ids, 8, &n);
	FUZZ_CHECK(r == 0 || r == -EBADMSG || (r == -ENOMEM && oom));
	if (r == 0) {
		FUZZ_CHECK(n <= 8);
		for (unsigned i = 0; i < n; i++) {
			FUZZ_CHECK(nbe_href_is(ids[i], "job"));
			for (unsigned j = 0; j < i; j++)
				FUZZ_CHECK(strcmp(ids[i], ids[j]) != 0);
		}
	} else {
		FUZZ_CHECK(n == 0);
	}
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
