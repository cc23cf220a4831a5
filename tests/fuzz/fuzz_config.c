/*
 * Harness: the configuration file (DESIGN §8). The input is the text of an
 * agent.conf; it is read over the defaults as nbe_config_load_file() reads
 * a file, then validated.
 */
#include "fuzz.h"

#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ORIGIN "fuzz.conf"

static const char *no_env(const char *name)
{
	(void)name;
	return NULL;
}

static void check_config(const struct nbe_config *cfg)
{
	FUZZ_CHECK(strncmp(cfg->endpoint, "https://", 8) == 0 ||
		   strncmp(cfg->endpoint, "http://", 7) == 0);
	FUZZ_CHECK(cfg->endpoint[strlen(cfg->endpoint) - 1] != '/');
	FUZZ_CHECK(!cfg->nuvlabox_id || strncmp(cfg->nuvlabox_id, "nuvlabox/", 9) == 0);
	FUZZ_CHECK(!cfg->api_key || strncmp(cfg->api_key, "credential/", 11) == 0);
	FUZZ_CHECK(cfg->state_dir && cfg->state_dir[0]);
	FUZZ_CHECK(cfg->max_buffer_bytes >= 256 * 1024);
	FUZZ_CHECK(cfg->max_events >= 10);
	FUZZ_CHECK(cfg->max_in_flight >= 1 && cfg->max_in_flight <= 64);
	FUZZ_CHECK(cfg->retry_base_ms >= 10 && cfg->retry_cap_ms >= 100);
	FUZZ_CHECK(cfg->log_level >= NBE_LOG_ERROR && cfg->log_level <= NBE_LOG_DEBUG);
	for (int i = 0; i < NBE_CONFIG_MAX_KEYS_FILES && cfg->authorized_keys[i]; i++)
		FUZZ_CHECK(cfg->authorized_keys[i][0] == '/');
}

static void one(const uint8_t *data, size_t size, bool oom)
{
	struct nbe_config cfg;
	struct nbe_error err = { { 0 } };
	char *text;
	int r;

	/* nbe_config_load_file() refuses these before parsing */
	if (size > NBE_CONFIG_MAX_BYTES || memchr(data, '\0', size))
		return;
	if (nbe_config_defaults(&cfg, no_env) < 0) {
		FUZZ_CHECK(oom);
		return;
	}
	text = fuzz_strndup(data, size);
	r = nbe_config_load_text(&cfg, text, ORIGIN, &err);
	free(text);
	if (r == 0) {
		check_config(&cfg);
		r = nbe_config_validate(&cfg, &err);
	}
	if (r < 0) {
		FUZZ_CHECK(r == -EINVAL || (r == -ENOMEM && oom));
		FUZZ_CHECK(err.msg[0] != '\0');
		/* a bad line is named: file and line */
		FUZZ_CHECK(r != -EINVAL || strncmp(err.msg, ORIGIN ":", 10) == 0 ||
			   strstr(err.msg, "retry_base") || strstr(err.msg, "client_cert") ||
			   strstr(err.msg, "state_dir"));
	}
	nbe_config_free(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_run(data, size, one);
	return 0;
}
