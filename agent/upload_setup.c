#include "upload_setup.h"

#include "alloc.h"
#include "fsutil.h"
#include "version.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char *const fail_names[] = {
	[NBE_FAIL_NONE] = "none",	[NBE_FAIL_RETRYABLE] = "retryable",
	[NBE_FAIL_CONNECT] = "connect", [NBE_FAIL_GATEWAY] = "gateway",
	[NBE_FAIL_AUTH] = "auth",	[NBE_FAIL_ENDPOINT] = "endpoint",
	[NBE_FAIL_CONFIG] = "config",
};

const char *upload_fail_name(enum nbe_upload_fail f)
{
	return (unsigned)f < sizeof(fail_names) / sizeof(fail_names[0]) ? fail_names[f] : "none";
}

enum nbe_upload_fail upload_fail_parse(const char *s)
{
	for (unsigned i = 0; s && i < sizeof(fail_names) / sizeof(fail_names[0]); i++) {
		if (strcmp(s, fail_names[i]) == 0)
			return (enum nbe_upload_fail)i;
	}
	return NBE_FAIL_NONE;
}

void upload_save_state(struct nbe_buffer *buf, const char *state, enum nbe_upload_fail fail,
		       const char *error, int64_t next_attempt_ms)
{
	char num[32];

	snprintf(num, sizeof(num), "%" PRId64, next_attempt_ms);
	nbe_buffer_meta_set_lazy(buf, "upload_state", state, NULL);
	nbe_buffer_meta_set_lazy(buf, "last_fail", upload_fail_name(fail), NULL);
	if (error && *error)
		nbe_buffer_meta_set_lazy(buf, "last_error", error, NULL);
	nbe_buffer_meta_set_lazy(buf, "next_attempt_ms", next_attempt_ms > 0 ? num : NULL, NULL);
}

int nuvla_client_new(const struct nbe_config *cfg, const char *jar_name, long max_in_flight,
		     const char *user_agent, struct nbe_nuvla **ret, struct nbe_error *err)
{
	struct nbe_nuvla_opts no = { 0 };
	char *jar = NULL;
	int r;

	if (jar_name && !(jar = nbe_path_join(cfg->state_dir, jar_name)))
		return nbe_error_set(err, -ENOMEM, "out of memory");
	no.endpoint = cfg->endpoint;
	no.insecure = cfg->insecure;
	no.ca_file = cfg->ca_file;
	no.client_cert = cfg->client_cert;
	no.client_key = cfg->client_key;
	no.cookie_file = jar;
	no.connect_timeout_ms = cfg->connect_timeout_ms;
	no.request_timeout_ms = cfg->request_timeout_ms;
	no.max_in_flight = max_in_flight;
	no.user_agent = user_agent;
	r = nbe_nuvla_new(&no, ret, err);
	nbe_free(jar);
	return r;
}

int upload_setup(const struct nbe_config *cfg, struct nbe_buffer *buf, const char *secret,
		 const char *boot_id, struct nbe_nuvla **ret_nuvla, struct nbe_uploader **ret_up,
		 struct nbe_error *err)
{
	struct nbe_uploader_opts uo = { 0 };
	struct nbe_nuvla *n = NULL;
	int r;

	r = nuvla_client_new(cfg, NBE_COOKIE_JAR, (long)cfg->max_in_flight,
			     "nuvlabox-event/" NBE_VERSION, &n, err);
	if (r < 0)
		return r;
	uo.buf = buf;
	uo.nuvla = n;
	uo.nuvlabox_id = cfg->nuvlabox_id;
	uo.api_key = cfg->api_key;
	uo.api_secret = secret;
	uo.agent_version = NBE_VERSION;
	uo.boot_id = boot_id;
	uo.timesync_file = cfg->timesync_file;
	uo.retry_base_ms = cfg->retry_base_ms;
	uo.retry_cap_ms = cfg->retry_cap_ms;
	uo.lookup_delay_ms = cfg->lookup_delay_ms;
	uo.request_timeout_ms = cfg->request_timeout_ms;
	uo.max_in_flight = (int)cfg->max_in_flight;
	r = nbe_uploader_new(&uo, ret_up, err);
	if (r < 0) {
		nbe_nuvla_free(n);
		return r;
	}
	*ret_nuvla = n;
	return 0;
}
