/*
 * activate, commission and job run: the lifecycle actions of a device on
 * which no NuvlaEdge agent runs (DESIGN §6.3, NUVLA-CONTRACT §4). Each
 * records nuvlabox.<op> when it starts and nuvlabox.<op>.completed or
 * .failed when it ends, linked as DESIGN §4 says. These commands log in for
 * themselves, without a cookie jar: they never disturb the uploader's
 * session.
 */
#include "cli.h"

#include "alloc.h"
#include "authkeys.h"
#include "clock.h"
#include "credential.h"
#include "event.h"
#include "fsutil.h"
#include "ids.h"
#include "job.h"
#include "json.h"
#include "notify.h"
#include "nuvla.h"
#include "spawn.h"
#include "sysinfo.h"
#include "upload_setup.h"
#include "version.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD_MAX	   (64 * 1024)
#define REBOOT_ARGV_MAX	   16
#define JOB_STATUS_MSG_MAX 1024

struct life {
	struct cli *c;
	struct nbe_buffer *buf;
	struct nbe_nuvla *n;
	char boot_id[NBE_UUID_LEN + 1];
};

static void life_close(struct life *l)
{
	nbe_nuvla_free(l->n);
	nbe_buffer_close(l->buf);
}

/* The buffer and a Nuvla client. Returns 0 or an exit code. */
static int life_open(struct cli *c, struct life *l)
{
	struct nbe_error err = { { 0 } };
	int r;

	memset(l, 0, sizeof(*l));
	l->c = c;
	if (!c->cfg.nuvlabox_id) {
		cli_err(c, "no nuvlabox id: set nuvlabox_id in %s or NUVLABOX_UUID",
			c->config_path);
		return EX_CONFIG;
	}
	r = nbe_config_check_key(&c->cfg, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return EX_CONFIG;
	}
	if (c->cfg.insecure)
		cli_warn(c, "insecure = true: the server's certificate is NOT verified; anyone "
			    "on the path can read and change what is sent");
	r = nbe_boot_id_read(c->cfg.boot_id_file, l->boot_id, sizeof(l->boot_id));
	if (r < 0) {
		cli_err(c, "%s: cannot read the boot id: %s", c->cfg.boot_id_file, strerror(-r));
		return EX_IOERR;
	}
	r = cli_open_buffer(c, false, &l->buf);
	if (r)
		return r;
	r = nuvla_client_new(&c->cfg, NULL, 1, "nuvlabox-event/" NBE_VERSION, &l->n, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return EX_OSERR;
	}
	return 0;
}

/* Records one event and pokes a running daemon. @ret_id (may be NULL) gets
 * its device event id. Returns 0 or an exit code. */
static int life_record(struct life *l, const struct nbe_event_input *in,
		       char ret_id[NBE_UUID_LEN + 1])
{
	struct nbe_event ev = { 0 };
	struct nbe_error err = { { 0 } };
	int r;

	r = nbe_event_init_capture(&ev, in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(),
				   l->boot_id, nbe_clock_synced(l->c->cfg.timesync_file), &err);
	if (r == 0)
		r = nbe_buffer_append(l->buf, &ev, &err);
	if (r < 0) {
		cli_err(l->c, "cannot record %s: %s", in->name, err.msg);
		nbe_event_clear(&ev);
		return cli_exit_for_errno(r);
	}
	if (ret_id)
		memcpy(ret_id, ev.id, sizeof(ev.id));
	nbe_event_clear(&ev);
	nbe_notify_send(l->c->cfg.runtime_dir, NBE_NOTIFY_POKE);
	return 0;
}

/* Records the end of an operation: @name ("nuvlabox.<op>.completed" or
 * ".failed"), after @parent (a device event id) or, with a job, after the
 * latest start of that job. */
static int life_record_end(struct life *l, const char *name, const char *parent, const char *job,
			   const char *message, const char *details, const char *const *links)
{
	struct nbe_event_input in = { 0 };

	in.name = name;
	in.parent = parent && *parent ? parent : NULL;
	in.job = job;
	in.message = message;
	in.details_json = details;
	in.links = links;
	if (strstr(name, ".failed"))
		in.severity = "high";
	return life_record(l, &in, NULL);
}

/* The exit code of DESIGN §7 for a request's outcome. */
static int exit_for_response(const struct nbe_http_response *r)
{
	switch (r->cls) {
	case NBE_HTTP_OK:
		return EX_OK;
	case NBE_HTTP_CONNECT:
	case NBE_HTTP_GATEWAY_ERROR:
		return EX_UNAVAILABLE;
	case NBE_HTTP_IN_DOUBT:
		return EX_TEMPFAIL;
	case NBE_HTTP_NUVLA_ERROR:
		if (r->status == 403 || r->status == 409)
			return EX_NOPERM;
		return r->status >= 500 ? EX_TEMPFAIL : EX_DATAERR;
	}
	return EX_TEMPFAIL;
}

/* Runs one request. Returns 0 when it ran (whatever its outcome: see
 * @resp), or an exit code after printing why not. */
static int life_call(struct life *l, const char *method, const char *path, const char *body,
		     struct nbe_http_response *resp)
{
	struct nbe_error err = { { 0 } };
	int r;

	nbe_http_response_clear(resp);
	r = nbe_nuvla_request(l->n, method, path, body, resp, &err);
	if (r < 0) {
		cli_err(l->c, "%s %s: %s", method, path, err.msg);
		return r == -ENOMEM ? EX_OSERR : EX_SOFTWARE;
	}
	return 0;
}

/* Logs in with the configured (or activated) credential. Returns 0 or an
 * exit code. */
static int life_login(struct life *l)
{
	struct nbe_http_response resp = { 0 };
	struct nbe_error err = { { 0 } };
	const struct nbe_config *cfg = &l->c->cfg;
	char *secret = NULL;
	int r;

	r = nbe_config_read_secret(cfg, &secret, &err);
	if (r < 0) {
		cli_err(l->c, "%s", err.msg);
		return r == -ENOMEM ? EX_OSERR : EX_CONFIG;
	}
	if (!secret || !cfg->api_key) {
		cli_err(l->c,
			"no credential to log in with: run `nuvlabox-event activate`, or set "
			"api_key and api_secret_file in %s%s%s",
			l->c->config_path, cfg->identity_note ? "; " : "",
			cfg->identity_note ? cfg->identity_note : "");
		nbe_free_secret_str(secret);
		return EX_CONFIG;
	}
	r = nbe_nuvla_login(l->n, cfg->api_key, secret, &resp, &err);
	nbe_free_secret_str(secret);
	if (r < 0) {
		cli_err(l->c, "login: %s", err.msg);
		return EX_OSERR;
	}
	r = exit_for_response(&resp);
	if (r)
		cli_err(l->c, "login as %s failed: %s", cfg->api_key, resp.message);
	nbe_http_response_clear(&resp);
	return r;
}

/* "/api/<href>[/<op>]" */
static char *api_path(const char *href, const char *op)
{
	size_t n = strlen(href) + (op ? strlen(op) : 0) + 8;
	char *p = nbe_malloc(n);

	if (p)
		snprintf(p, n, "/api/%s%s%s", href, op ? "/" : "", op ? op : "");
	return p;
}

/* A details object as text, from key/value string pairs (NULL-terminated). */
static char *details_of(const char *const *kv)
{
	cJSON *d = cJSON_CreateObject();
	char *text = NULL;

	for (; d && kv && kv[0]; kv += 2) {
		if (kv[1] && !cJSON_AddStringToObject(d, kv[0], kv[1]))
			goto out;
	}
	text = d ? cJSON_PrintUnformatted(d) : NULL;
out:
	cJSON_Delete(d);
	return text;
}

/* ------------------------------------------------------------ activate */

struct activate_args {
	bool force;
};

static int activate_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	struct activate_args *a = userdata;

	(void)c;
	(void)arg;
	if (opt == 'f')
		a->force = true;
	return 0;
}

/*
 * The secret exists nowhere else: when it cannot be saved, the operator is
 * its last chance. Printed on standard output only (never logged), once.
 */
static void hand_over_credential(struct cli *c, const struct nbe_credential *cred, const char *why)
{
	cli_err(c, "%s", why);
	cli_err(c, "Nuvla issues this credential only once: it follows on standard output; "
		   "store it now (api_key, and the secret in a 0600 api_secret_file)");
	printf("{\"nuvlabox-id\":\"%s\",\"api-key\":\"%s\",\"secret-key\":\"%s\"}\n",
	       c->cfg.nuvlabox_id, cred->api_key, cred->api_secret);
	if (fflush(stdout) != 0 || ferror(stdout))
		cli_err(c, "the credential could not be written to standard output either: %s",
			strerror(errno));
}

/* What an activation answer that gave no credential is kept as. */
#define ANSWER_PREFIX "activate-answer."

/*
 * Nuvla activated the device (or may have) but its answer held no credential
 * the agent could read: the answer may still be the only copy of the secret,
 * so it is kept (0600, atomically) as <state_dir>/activate-answer.<event>.json
 * for an operator, never dropped. Appends where it went (or why it could not
 * be kept) to @msg.
 */
static void keep_answer(struct cli *c, const char *start, const struct nbe_http_response *resp,
			char *msg, size_t msg_size)
{
	char name[sizeof(ANSWER_PREFIX) + NBE_UUID_LEN + sizeof(".json")];
	size_t used = strlen(msg);
	char *path;
	int r;

	if (!resp->body || resp->body_len == 0 || used >= msg_size)
		return;
	snprintf(name, sizeof(name), ANSWER_PREFIX "%s.json", start);
	path = nbe_path_join(c->cfg.state_dir, name);
	r = path ? nbe_write_file_atomic(path, resp->body, resp->body_len, 0600) : -ENOMEM;
	if (r == 0)
		snprintf(msg + used, msg_size - used,
			 "; its answer (%zu bytes) is kept in %s: it may hold the only copy of "
			 "the secret",
			 resp->body_len, path);
	else
		snprintf(msg + used, msg_size - used, "; its answer could not be kept (%s)",
			 strerror(-r));
	nbe_free(path);
}

/*
 * A temporary file of an activation killed while it wrote the credential
 * may hold the only copy of the secret: say so rather than activate over
 * it. Returns true (after printing) when there is one.
 */
static bool leftover_credential(struct cli *c)
{
	DIR *dir = opendir(c->cfg.state_dir);
	struct dirent *de;
	bool found = false;

	while (dir && (de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, NBE_CREDENTIAL_FILE ".tmp.",
			    sizeof(NBE_CREDENTIAL_FILE ".tmp.") - 1) == 0) {
			cli_err(c,
				"%s/%s is left from an activation that was killed while it saved "
				"the credential: it may hold the only copy of the secret; rename "
				"it to %s (or remove it) and run activate again, or use --force",
				c->cfg.state_dir, de->d_name, NBE_CREDENTIAL_FILE);
			found = true;
		} else if (strncmp(de->d_name, ANSWER_PREFIX, sizeof(ANSWER_PREFIX) - 1) == 0) {
			cli_err(c,
				"%s/%s is the answer of an earlier activation that held no "
				"credential the agent could read: it may hold the only copy of the "
				"secret; save what it holds (api_key, api_secret_file), move it "
				"away and run activate again, or use --force",
				c->cfg.state_dir, de->d_name);
			found = true;
		}
	}
	if (dir)
		closedir(dir);
	return found;
}

int cmd_activate(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "force", no_argument, NULL, 'f' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct activate_args a = { 0 };
	struct nbe_event_input in = { 0 };
	struct nbe_http_response resp = { 0 };
	struct nbe_credential cred = { 0 };
	struct nbe_error err = { { 0 } };
	struct life l = { 0 };
	char start[NBE_UUID_LEN + 1] = "", msg[NBE_ERROR_MAX + 1536], *path = NULL, *api = NULL;
	sigset_t hold, saved_mask;
	bool held = false;
	int r;

	r = cli_parse(c, argc, argv, opts, activate_opt, NULL, &a);
	if (r)
		return r;
	r = cli_load_config(c);
	if (r)
		return r;
	path = nbe_path_join(c->cfg.state_dir, NBE_CREDENTIAL_FILE);
	if (!path)
		return EX_OSERR;
	if (!a.force && (c->cfg.api_key || access(path, F_OK) == 0)) {
		cli_err(c,
			"%s already has a credential (%s, from %s): it is activated; activating "
			"again needs --force and a device that Nuvla shows as NEW",
			c->cfg.nuvlabox_id ? c->cfg.nuvlabox_id : "this device",
			c->cfg.api_key ? c->cfg.api_key : path,
			c->cfg.identity_source ? c->cfg.identity_source
					       : (c->cfg.api_key ? "the configuration" : path));
		r = EX_CONFIG;
		goto out;
	}
	if (!a.force && leftover_credential(c)) {
		r = EX_CONFIG;
		goto out;
	}
	r = life_open(c, &l);
	if (r)
		goto out;
	in.name = "nuvlabox.activate";
	in.parent = c->cfg.nuvlabox_id;
	r = life_record(&l, &in, start);
	if (r)
		goto out;
	api = api_path(c->cfg.nuvlabox_id, "activate");
	/* from the request until the credential is saved, a Ctrl-C or a
	 * terminal hang-up must not lose what Nuvla issues only once (SIGKILL
	 * and power loss cannot be helped: the file is then absent or whole) */
	sigemptyset(&hold);
	sigaddset(&hold, SIGINT);
	sigaddset(&hold, SIGTERM);
	sigaddset(&hold, SIGHUP);
	sigaddset(&hold, SIGQUIT);
	sigaddset(&hold, SIGPIPE);
	sigprocmask(SIG_BLOCK, &hold, &saved_mask);
	held = true;
	r = api ? life_call(&l, "POST", api, NULL, &resp) : EX_OSERR;
	if (r)
		goto out;
	if (resp.cls != NBE_HTTP_OK) {
		if (resp.cls == NBE_HTTP_NUVLA_ERROR && resp.status == 409)
			snprintf(
				msg, sizeof(msg),
				"%s is not NEW: it was activated before, and Nuvla issues the "
				"credential only once (%s). Restore the credential saved then "
				"(api_key and api_secret_file in %s, or NuvlaEdge's session file), "
				"or have the owner create the device anew",
				c->cfg.nuvlabox_id, resp.message, c->config_path);
		else if (resp.cls == NBE_HTTP_IN_DOUBT) {
			snprintf(msg, sizeof(msg),
				 "the activation's outcome is unknown (%s): if Nuvla activated the "
				 "device, its credential is lost and a new activation gets 409",
				 resp.message);
			keep_answer(c, start, &resp, msg, sizeof(msg));
		} else
			snprintf(msg, sizeof(msg), "activation failed: %s", resp.message);
		cli_err(c, "%s", msg);
		life_record_end(&l, "nuvlabox.activate.failed", start, NULL, msg, NULL, NULL);
		r = exit_for_response(&resp);
		goto out;
	}
	r = nbe_credential_parse(resp.body ? resp.body : "", resp.body ? resp.body_len : 0, &cred,
				 &err);
	if (r == 0 && !(cred.nuvlabox_id = nbe_strdup(c->cfg.nuvlabox_id)))
		r = -ENOMEM;
	if (r < 0) {
		snprintf(msg, sizeof(msg), "Nuvla answered the activation without a credential: %s",
			 err.msg);
		if (r != -ENOMEM)
			keep_answer(c, start, &resp, msg, sizeof(msg));
		cli_err(c, "%s", msg);
		life_record_end(&l, "nuvlabox.activate.failed", start, NULL, msg, NULL, NULL);
		r = r == -ENOMEM ? EX_OSERR : EX_UNAVAILABLE;
		goto out;
	}
	/* before anything else: the secret exists nowhere else */
	r = nbe_credential_write(path, &cred, &err);
	if (r < 0) {
		hand_over_credential(c, &cred, err.msg);
		snprintf(msg, sizeof(msg), "activated, but the credential could not be saved: %s",
			 err.msg);
		life_record_end(&l, "nuvlabox.activate.failed", start, NULL, msg, NULL, NULL);
		r = EX_IOERR;
		goto out;
	}
	{
		const char *links[] = { cred.api_key, NULL };
		const char *kv[] = { "credential", cred.api_key, "file", path, NULL };
		char *details = details_of(kv);

		snprintf(msg, sizeof(msg), "activated: credential %s saved in %s", cred.api_key,
			 path);
		if (!details || life_record_end(&l, "nuvlabox.activate.completed", start, NULL, msg,
						details, links) != 0)
			cli_warn(c, "the activation succeeded and its credential is saved, but its "
				    "completion could not be recorded");
		nbe_free(details);
	}
	printf("%s\n", msg);
	printf("a running nuvlabox-eventd uses it after a reload (systemctl reload "
	       "nuvlabox-eventd)\n");
	r = EX_OK;
out:
	if (held) {
		/* a pending SIGPIPE (the terminal went away) must not kill us now */
		struct timespec zero = { 0, 0 };
		sigset_t pipe;
		sigemptyset(&pipe);
		sigaddset(&pipe, SIGPIPE);
		while (sigtimedwait(&pipe, NULL, &zero) > 0)
			;
		sigprocmask(SIG_SETMASK, &saved_mask, NULL);
	}
	nbe_credential_clear(&cred);
	nbe_http_response_clear(&resp);
	nbe_free(api);
	nbe_free(path);
	life_close(&l);
	return r;
}

/* ---------------------------------------------------------- commission */

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

/* POSTs @body to the nuvlabox's commission. Returns 0 when it ran. */
static int commission_post(struct life *l, const char *body, struct nbe_http_response *resp)
{
	char *api = api_path(l->c->cfg.nuvlabox_id, "commission");
	int r = api ? life_call(l, "POST", api, body, resp) : EX_OSERR;

	nbe_free(api);
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
	r = commission_post(&l, body, &resp);
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
		r = exit_for_response(&resp);
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

/* ----------------------------------------------------------------- job */

struct job {
	const char *id; /* "job/<uuid>" */
	char *api;	/* "/api/job/<uuid>" */
	struct nbe_job_doc doc;
};

/* job_finish(): the job was final already (canceled meanwhile). */
#define JOB_WAS_FINAL (-2)

/*
 * Reports the job's end. A 409 means it became final meanwhile (canceled,
 * or failed as a zombie): JOB_WAS_FINAL, not an error. Returns 0,
 * JOB_WAS_FINAL or an exit code.
 */
static int job_finish(struct life *l, struct job *j, bool ok, const char *message)
{
	struct nbe_http_response resp = { 0 };
	cJSON *b = cJSON_CreateObject();
	char *body = NULL, m[JOB_STATUS_MSG_MAX];
	int r;

	snprintf(m, sizeof(m), "%s", message);
	if (b && cJSON_AddStringToObject(b, "state", ok ? "SUCCESS" : "FAILED") &&
	    cJSON_AddNumberToObject(b, "return-code", ok ? 0 : 1) &&
	    cJSON_AddStringToObject(b, "status-message", m))
		body = cJSON_PrintUnformatted(b);
	cJSON_Delete(b);
	if (!body)
		return EX_OSERR;
	r = life_call(l, "PUT", j->api, body, &resp);
	nbe_free(body);
	if (r == 0 && resp.cls == NBE_HTTP_NUVLA_ERROR && resp.status == 409) {
		cli_warn(l->c, "%s was final already; not marked %s", j->id,
			 ok ? "SUCCESS" : "FAILED");
		r = JOB_WAS_FINAL;
	} else if (r == 0 && resp.cls != NBE_HTTP_OK) {
		cli_err(l->c, "cannot mark %s %s: %s", j->id, ok ? "SUCCESS" : "FAILED",
			resp.message);
		r = exit_for_response(&resp);
	}
	nbe_http_response_clear(&resp);
	return r;
}

/* Marks the job failed and records @op's failure; returns @code. */
static int job_fail(struct life *l, struct job *j, const char *op, int code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int job_fail(struct life *l, struct job *j, const char *op, int code, const char *fmt, ...)
{
	char msg[JOB_STATUS_MSG_MAX], name[96];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cli_err(l->c, "%s: %s", j->id, msg);
	if (op) {
		snprintf(name, sizeof(name), "%s.failed", op);
		life_record_end(l, name, NULL, j->id, msg, NULL, NULL);
	}
	job_finish(l, j, false, msg);
	return code;
}

/* Splits the reboot command on blanks (no shell) and runs it. Returns 0 or
 * -errno / a positive exit status, with @why set. */
static int run_command(const char *cmdline, char *why, size_t why_size)
{
	char *copy = nbe_strdup(cmdline), *argv[REBOOT_ARGV_MAX + 1], *p;
	int n = 0, status = 0, r;
	pid_t pid;

	if (!copy)
		return -ENOMEM;
	for (p = copy; *p && n < REBOOT_ARGV_MAX;) {
		p += strspn(p, " \t");
		if (!*p)
			break;
		argv[n++] = p;
		p += strcspn(p, " \t");
		if (*p)
			*p++ = '\0';
	}
	argv[n] = NULL;
	if (n == 0) {
		nbe_free(copy);
		snprintf(why, why_size, "reboot_command is empty");
		return -EINVAL;
	}
	/* stdio inherited: a reboot command may ask the operator (polkit) */
	r = nbe_spawn(&(struct nbe_spawn_opts){ .argv = argv, .search_path = true }, &pid, NULL);
	if (r < 0) {
		snprintf(why, why_size, "cannot run %s: %s", argv[0], strerror(-r));
		nbe_free(copy);
		return r;
	}
	for (;;) {
		if (waitpid(pid, &status, 0) == pid)
			break;
		if (errno != EINTR) {
			int e = errno;
			nbe_free(copy);
			snprintf(why, why_size, "waitpid: %s", strerror(e));
			return -e;
		}
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		nbe_free(copy);
		return 0;
	}
	if (WIFEXITED(status))
		snprintf(why, why_size, "%s exited with status %d", argv[0], WEXITSTATUS(status));
	else
		snprintf(why, why_size, "%s was killed by signal %d", argv[0],
			 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	nbe_free(copy);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/*
 * reboot_nuvlabox, as the job-engine does it: the request recorded, the job
 * marked SUCCESS before the machine goes down, what is pending uploaded
 * within job_flush_timeout, then the reboot. The boot detector records the
 * completion in the next boot.
 */
static int job_reboot(struct life *l, struct job *j)
{
	struct nbe_event_input in = { 0 };
	char why[256] = "", msg[512];
	int r;

	in.name = "nuvlabox.reboot";
	in.job = j->id;
	in.message = "reboot requested by a job";
	r = life_record(l, &in, NULL);
	if (r)
		return job_fail(l, j, NULL, r, "cannot record the reboot request");
	r = job_finish(l, j, true, "rebooting");
	if (r == JOB_WAS_FINAL) {
		/* canceled after RUNNING: the owner no longer wants the reboot */
		snprintf(msg, sizeof(msg), "%s became final before the reboot: not rebooting",
			 j->id);
		printf("%s\n", msg);
		life_record_end(l, "nuvlabox.reboot.failed", NULL, j->id, msg, NULL, NULL);
		return EX_OK;
	}
	if (r)
		return r; /* not rebooting a device whose job could not be closed */
	if (l->c->cfg.job_flush_timeout_ms > 0)
		cli_flush(l->c, l->c->cfg.job_flush_timeout_ms);
	printf("%s: rebooting (%s)\n", j->id, l->c->cfg.reboot_command);
	r = run_command(l->c->cfg.reboot_command, why, sizeof(why));
	if (r == 0)
		return EX_OK;
	snprintf(msg, sizeof(msg), "the reboot command failed: %s", why);
	cli_err(l->c, "%s: %s", j->id, msg);
	life_record_end(l, "nuvlabox.reboot.failed", NULL, j->id, msg, NULL, NULL);
	return EX_OSERR;
}

/*
 * The nuvlabox's ssh-keys with @cred added or removed, as a commission
 * body. NULL when out of memory or when the nuvlabox cannot be read (@resp
 * says why).
 */
static char *ssh_keys_body(struct life *l, const char *cred, bool add,
			   struct nbe_http_response *resp, int *ret_code)
{
	char *api = api_path(l->c->cfg.nuvlabox_id, NULL), *body = NULL;
	cJSON *nb = NULL, *keys, *out = NULL, *k;
	bool have = false;

	*ret_code = api ? life_call(l, "GET", api, NULL, resp) : EX_OSERR;
	nbe_free(api);
	if (*ret_code)
		return NULL;
	if (resp->cls != NBE_HTTP_OK) {
		*ret_code = exit_for_response(resp);
		return NULL;
	}
	nb = nbe_json_parse_object(resp->body ? resp->body : "");
	keys = cJSON_GetObjectItemCaseSensitive(nb, "ssh-keys");
	out = cJSON_CreateObject();
	k = out ? cJSON_AddArrayToObject(out, "ssh-keys") : NULL;
	if (!nb || !k) {
		*ret_code = nb ? EX_OSERR : EX_UNAVAILABLE;
		goto done;
	}
	for (cJSON *it = cJSON_IsArray(keys) ? keys->child : NULL; it; it = it->next) {
		if (!cJSON_IsString(it))
			continue;
		if (strcmp(it->valuestring, cred) == 0) {
			have = true;
			if (!add)
				continue;
		}
		if (!cJSON_AddItemToArray(k, cJSON_CreateString(it->valuestring))) {
			*ret_code = EX_OSERR;
			goto done;
		}
	}
	if (add && !have && !cJSON_AddItemToArray(k, cJSON_CreateString(cred))) {
		*ret_code = EX_OSERR;
		goto done;
	}
	body = cJSON_PrintUnformatted(out);
	*ret_code = body ? 0 : EX_OSERR;
done:
	cJSON_Delete(nb);
	cJSON_Delete(out);
	return body;
}

/*
 * nuvlabox_add_ssh_key / nuvlabox_revoke_ssh_key: the key from the job's
 * context, validated as sshd reads keys, added to (removed from) the first
 * authorized_keys file, then the nuvlabox's key list commissioned. The key
 * watcher records the completion when the file changed; when it did not
 * (already there, already gone) the completion is recorded here.
 */
static int job_ssh_key(struct life *l, struct job *j, bool add)
{
	const char *op = add ? "nuvlabox.add-ssh-key" : "nuvlabox.revoke-ssh-key";
	const char *file = l->c->cfg.authorized_keys[0];
	char cred[NBE_HREF_MAX + 1] = "", *key = NULL;
	struct nbe_http_response resp = { 0 };
	struct nbe_event_input in = { 0 };
	struct nbe_sshkey k;
	struct nbe_error err = { { 0 } };
	char *api = api_path(j->id, "get-context"), *details = NULL, *body = NULL, name[96],
	     msg[JOB_STATUS_MSG_MAX];
	bool changed = false;
	int r;

	r = api ? life_call(l, "POST", api, NULL, &resp) : EX_OSERR;
	if (r)
		goto out;
	if (resp.cls != NBE_HTTP_OK) {
		/* left RUNNING when the network failed: a later run finishes it */
		r = resp.cls == NBE_HTTP_NUVLA_ERROR && resp.status < 500
			    ? job_fail(l, j, NULL, EX_NOPERM, "get-context: %s", resp.message)
			    : exit_for_response(&resp);
		if (resp.cls != NBE_HTTP_NUVLA_ERROR)
			cli_err(l->c, "%s: get-context: %s", j->id, resp.message);
		goto out;
	}
	r = nbe_job_context_key(resp.body ? resp.body : "", resp.body ? resp.body_len : 0, &j->doc,
				cred, &key);
	if (r == -ENOMEM) {
		r = EX_OSERR;
		goto out;
	}
	if (r < 0) {
		r = job_fail(l, j, NULL, EX_DATAERR, "the job's context holds no public key");
		goto out;
	}
	{
		const char *kv[] = { "credential", cred, "file", file, NULL };
		bool ok = nbe_authkeys_check_key(key, &k, &err) == 0;
		const char *kv_ok[] = { "credential", cred,   "fingerprint", k.fingerprint,
					"type",	      k.type, "comment",     k.comment,
					"file",	      file,   NULL };

		details = details_of(ok ? kv_ok : kv);
		in.name = op;
		in.job = j->id;
		in.details_json = details;
		r = details ? life_record(l, &in, NULL) : EX_OSERR;
		if (r) {
			r = job_fail(l, j, NULL, r, "cannot record the request");
			goto out;
		}
		if (!ok) {
			r = job_fail(l, j, op, EX_DATAERR, "%s: %s", cred, err.msg);
			goto out;
		}
	}
	if (!file) {
		r = job_fail(l, j, op, EX_CONFIG, "no authorized_keys file is configured");
		goto out;
	}
	r = nbe_authkeys_update(file, key, add, &changed, &err);
	if (r < 0) {
		r = job_fail(l, j, op, EX_IOERR, "%s", err.msg);
		goto out;
	}
	if (!changed) {
		snprintf(name, sizeof(name), "%s.completed", op);
		snprintf(msg, sizeof(msg), "%s %s %s already", k.fingerprint,
			 add ? "was in" : "was not in", file);
		life_record_end(l, name, NULL, j->id, msg, details, NULL);
	}
	nbe_http_response_clear(&resp);
	body = ssh_keys_body(l, cred, add, &resp, &r);
	if (r == 0)
		r = commission_post(l, body, &resp);
	if (r == 0 && resp.cls != NBE_HTTP_OK)
		r = exit_for_response(&resp);
	if (r) {
		/* the file changed (its watcher records that); the server's list did not */
		snprintf(msg, sizeof(msg), "%s %s %s, but Nuvla's key list was not updated: %s",
			 k.fingerprint, add ? "added to" : "removed from", file,
			 resp.message[0] ? resp.message : "see the agent's output");
		cli_err(l->c, "%s: %s", j->id, msg);
		job_finish(l, j, false, msg);
		goto out;
	}
	snprintf(msg, sizeof(msg), "%s %s %s", k.fingerprint,
		 add ? (changed ? "added to" : "already in")
		     : (changed ? "removed from" : "not in"),
		 file);
	r = job_finish(l, j, true, msg);
	if (r == JOB_WAS_FINAL)
		r = EX_OK; /* the key is in place; the job was closed by someone else */
	if (r == 0)
		printf("%s: %s\n", j->id, msg);
out:
	nbe_http_response_clear(&resp);
	nbe_free(key);
	nbe_free(api);
	nbe_free(details);
	nbe_free(body);
	return r;
}

/* Fetches the job. Returns 0 or an exit code. */
static int job_fetch(struct life *l, struct job *j)
{
	struct nbe_http_response resp = { 0 };
	int r;

	r = life_call(l, "GET", j->api, NULL, &resp);
	if (r == 0 && resp.cls != NBE_HTTP_OK) {
		cli_err(l->c, "%s: %s", j->id, resp.message);
		r = exit_for_response(&resp);
	}
	if (r == 0) {
		struct nbe_error err = { { 0 } };
		int pr = nbe_job_parse(resp.body ? resp.body : "", resp.body ? resp.body_len : 0,
				       &j->doc, &err);
		if (pr < 0) {
			cli_err(l->c, "%s: %s", j->id, err.msg);
			r = pr == -ENOMEM ? EX_OSERR : EX_UNAVAILABLE;
		}
	}
	nbe_http_response_clear(&resp);
	return r;
}

/* Marks the job RUNNING. Returns 0, CLI_HELP_SHOWN when it became final
 * meanwhile (skip it), or an exit code. */
#define JOB_SKIP CLI_HELP_SHOWN
static int job_start(struct life *l, struct job *j)
{
	struct nbe_http_response resp = { 0 };
	int r = life_call(l, "PUT", j->api, "{\"state\":\"RUNNING\"}", &resp);

	if (r == 0 && resp.cls == NBE_HTTP_NUVLA_ERROR && resp.status == 409) {
		printf("%s became final meanwhile: not run\n", j->id);
		r = JOB_SKIP;
	} else if (r == 0 && resp.cls != NBE_HTTP_OK) {
		cli_err(l->c, "cannot mark %s RUNNING: %s", j->id, resp.message);
		r = exit_for_response(&resp);
	}
	nbe_http_response_clear(&resp);
	return r;
}

/* One job at a time on a device, whoever runs it (the daemon's puller, an
 * operator): two reboots or two edits of the same file must not race.
 * Returns 0 or an exit code. */
static int job_lock(struct life *l, int *ret_fd)
{
	char *path = nbe_path_join(l->c->cfg.state_dir, "job.lock");
	int r;

	if (!path)
		return EX_OSERR;
	r = nbe_lock_try(path, 0660, ret_fd);
	if (r == -EWOULDBLOCK)
		cli_err(l->c, "another job is running (%s is held); try again later", path);
	else if (r < 0)
		cli_err(l->c, "%s: %s", path, strerror(-r));
	nbe_free(path);
	return r == 0 ? 0 : r == -EWOULDBLOCK ? EX_TEMPFAIL : EX_IOERR;
}

struct job_args {
	const char *verb, *id;
};

static int job_arg(struct cli *c, const char *arg, void *userdata)
{
	struct job_args *a = userdata;

	if (!a->verb)
		a->verb = arg;
	else if (!a->id)
		a->id = arg;
	else
		return cli_usage_error(c, "unexpected argument '%s'", arg);
	return 0;
}

int cmd_job(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct job_args a = { 0 };
	struct job j = { 0 };
	struct life l = { 0 };
	int r, lock_fd = -1;

	r = cli_parse(c, argc, argv, opts, cli_no_options, job_arg, &a);
	if (r)
		return r;
	if (!a.verb || strcmp(a.verb, "run") != 0)
		return cli_usage_error(c, "expected `job run job/ID`");
	if (!a.id || !nbe_href_is(a.id, "job"))
		return cli_usage_error(c, "expected a job id job/<uuid>, not '%s'",
				       a.id ? a.id : "");
	r = cli_load_config(c);
	if (r)
		return r;
	j.id = a.id;
	j.api = api_path(a.id, NULL);
	if (!j.api)
		return EX_OSERR;
	r = life_open(c, &l);
	if (r == 0)
		r = job_lock(&l, &lock_fd);
	if (r == 0)
		r = life_login(&l);
	if (r == 0)
		r = job_fetch(&l, &j);
	if (r == 0 && j.doc.has_target && strcmp(j.doc.target, c->cfg.nuvlabox_id) != 0) {
		/* a user's api key sees the jobs of all its devices: never run (or
		 * mark) another device's job here */
		cli_err(c, "%s is for %s, not for this device (%s): not run", j.id,
			j.doc.target[0] ? j.doc.target : "an invalid target-resource",
			c->cfg.nuvlabox_id);
		r = EX_DATAERR;
	}
	if (r)
		goto out;
	if (nbe_job_state_final(j.doc.state)) {
		printf("%s is %s already: not run\n", j.id, j.doc.state);
		goto out;
	}
	r = job_start(&l, &j);
	if (r == JOB_SKIP) {
		r = EX_OK;
		goto out;
	}
	if (r)
		goto out;
	if (strcmp(j.doc.action, "reboot_nuvlabox") == 0)
		r = job_reboot(&l, &j);
	else if (strcmp(j.doc.action, "nuvlabox_add_ssh_key") == 0)
		r = job_ssh_key(&l, &j, true);
	else if (strcmp(j.doc.action, "nuvlabox_revoke_ssh_key") == 0)
		r = job_ssh_key(&l, &j, false);
	else
		r = job_fail(&l, &j, NULL, EX_UNAVAILABLE,
			     "action '%s' is not supported by this agent", j.doc.action);
out:
	nbe_free(j.api);
	life_close(&l);
	if (lock_fd >= 0)
		close(lock_fd);
	return r;
}
