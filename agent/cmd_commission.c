/*
 * commission: send a commission payload of the keys Nuvla reads (DESIGN
 * §6.3, NUVLA-CONTRACT §4); keys that replace server state only with
 * --replace; the events carry the key names, never their values.
 */
#include "life.h"

#include "alloc.h"
#include "fsutil.h"
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define PAYLOAD_MAX (64 * 1024)

/* What nuvlabox commission reads (api-server resources/nuvlabox), plus
 * ssh-keys (NUVLA-CONTRACT §4). */
static const char *const commission_keys[] = {
	"tags",
	"capabilities",
	"ssh-keys",
	"swarm-endpoint",
	"swarm-token-manager",
	"swarm-token-worker",
	"swarm-client-key",
	"swarm-client-cert",
	"swarm-client-ca",
	"minio-endpoint",
	"minio-access-key",
	"minio-secret-key",
	"vpn-csr",
	"kubernetes-endpoint",
	"kubernetes-client-key",
	"kubernetes-client-cert",
	"kubernetes-client-ca",
	"cluster-id",
	"cluster-node-id",
	"cluster-orchestrator",
	"cluster-managers",
	"cluster-workers",
	"removed",
};

/* Keys whose value replaces what the server holds. */
static const char *const replacing_keys[] = { "capabilities", "ssh-keys", "vpn-csr" };

static bool in_list(const char *k, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(k, list[i]) == 0)
			return true;
	}
	return false;
}

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct commission_args {
	const char *payload;
	bool replace;
};

static int commission_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	struct commission_args *a = userdata;

	(void)c;
	if (opt == 'p')
		a->payload = arg;
	else if (opt == 'r')
		a->replace = true;
	return 0;
}

/*
 * Reads and checks the payload: a JSON object with only keys Nuvla's
 * commission accepts; keys that replace server state only with @replace.
 * *ret_keys gets the key names as a JSON array (for the event's details:
 * never the values). Returns 0 or an exit code.
 */
static int read_payload(struct cli *c, const struct commission_args *a, cJSON **ret_doc,
			char **ret_keys)
{
	cJSON *doc = NULL, *item, *names = NULL;
	char *text = NULL, replacing[128] = "";
	size_t len;
	int r;

	*ret_doc = NULL;
	*ret_keys = NULL;
	r = nbe_read_file(a->payload, PAYLOAD_MAX, &text, &len);
	if (r < 0) {
		cli_err(c, "%s: %s", a->payload, r == -EFBIG ? "larger than 64 KiB" : strerror(-r));
		return r == -EFBIG ? EX_DATAERR : EX_NOINPUT;
	}
	doc = strlen(text) == len ? nbe_json_parse_object(text) : NULL;
	nbe_free(text);
	if (!doc) {
		cli_err(c, "%s: not a JSON object", a->payload);
		return EX_DATAERR;
	}
	names = cJSON_CreateArray();
	if (!names) {
		r = EX_OSERR;
		goto fail;
	}
	cJSON_ArrayForEach(item, doc)
	{
		if (!in_list(item->string, commission_keys, ARRAY_LEN(commission_keys))) {
			cli_err(c, "%s: '%s' is not a key Nuvla's commission accepts", a->payload,
				item->string);
			r = EX_DATAERR;
			goto fail;
		}
		if (in_list(item->string, replacing_keys, ARRAY_LEN(replacing_keys))) {
			size_t used = strlen(replacing);
			snprintf(replacing + used, sizeof(replacing) - used, "%s%s",
				 used ? ", " : "", item->string);
		}
		if (!cJSON_AddItemToArray(names, cJSON_CreateString(item->string))) {
			r = EX_OSERR;
			goto fail;
		}
	}
	if (cJSON_GetArraySize(doc) == 0) {
		cli_err(c, "%s: the payload is empty", a->payload);
		r = EX_DATAERR;
		goto fail;
	}
	if (replacing[0] && !a->replace) {
		cli_err(c,
			"%s: %s replace%s what Nuvla holds for this device; pass --replace to "
			"send %s",
			a->payload, replacing, strchr(replacing, ',') ? "" : "s",
			strchr(replacing, ',') ? "them" : "it");
		r = EX_USAGE;
		goto fail;
	}
	if (replacing[0])
		cli_warn(c, "%s will replace what Nuvla holds for this device", replacing);
	*ret_keys = cJSON_PrintUnformatted(names);
	cJSON_Delete(names);
	if (!*ret_keys) {
		cJSON_Delete(doc);
		return EX_OSERR;
	}
	*ret_doc = doc;
	return 0;
fail:
	cJSON_Delete(names);
	cJSON_Delete(doc);
	return r;
}

int cmd_commission(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "payload", required_argument, NULL, 'p' },
		{ "replace", no_argument, NULL, 'r' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct commission_args a = { 0 };
	struct nbe_event_input in = { 0 };
	struct nbe_http_response resp = { 0 };
	struct life l = { 0 };
	cJSON *doc = NULL;
	char start[NBE_UUID_LEN + 1] = "", msg[NBE_ERROR_MAX + 64], *keys = NULL, *details = NULL,
				  *body = NULL;
	int r;

	r = cli_parse(c, argc, argv, opts, commission_opt, NULL, &a);
	if (r)
		return r;
	if (!a.payload)
		return cli_usage_error(c, "missing --payload FILE");
	r = read_payload(c, &a, &doc, &keys);
	if (r)
		return r;
	r = cli_load_config(c);
	if (r)
		goto out;
	r = life_open(c, &l);
	if (r == 0)
		r = life_login(&l);
	if (r)
		goto out;
	body = cJSON_PrintUnformatted(doc);
	details = nbe_malloc(strlen(keys) + 16);
	if (!body || !details) {
		r = EX_OSERR;
		goto out;
	}
	snprintf(details, strlen(keys) + 16, "{\"keys\":%s}", keys);
	in.name = "nuvlabox.commission";
	in.parent = c->cfg.nuvlabox_id;
	in.details_json = details;
	r = life_record(&l, &in, start);
	if (r)
		goto out;
	r = life_commission(&l, body, &resp);
	if (r)
		goto out;
	if (resp.cls == NBE_HTTP_OK) {
		snprintf(msg, sizeof(msg), "commissioned %s", c->cfg.nuvlabox_id);
		r = life_record_end(&l, "nuvlabox.commission.completed", start, NULL, msg, details,
				    NULL);
		if (r)
			cli_warn(c, "the commission succeeded, but its completion could not be "
				    "recorded");
		printf("%s\n", msg);
		r = EX_OK;
	} else {
		/* the server's message may quote the payload (tokens, keys): on
		 * the terminal only, the event says the status */
		cli_err(c, "commission failed: %s", resp.message);
		if (resp.status > 0)
			snprintf(msg, sizeof(msg), "commission failed: HTTP %ld", resp.status);
		else
			snprintf(msg, sizeof(msg), "commission failed: no answer from the server");
		life_record_end(&l, "nuvlabox.commission.failed", start, NULL, msg, details, NULL);
		r = life_exit_for(&resp);
	}
out:
	nbe_http_response_clear(&resp);
	nbe_free(body);
	nbe_free(details);
	nbe_free(keys);
	cJSON_Delete(doc);
	life_close(&l);
	return r;
}
