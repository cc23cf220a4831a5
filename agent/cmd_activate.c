/*
 * activate: the standalone activation of a NEW nuvlabox (DESIGN §6.3,
 * NUVLA-CONTRACT §4): the credential Nuvla issues exactly once is saved
 * before anything else, and never lost to a signal or a bad answer.
 */
#include "life.h"

#include "alloc.h"
#include "credential.h"
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
	api = life_api_path(c->cfg.nuvlabox_id, "activate");
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
		r = life_exit_for(&resp);
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
		char *details = life_details(kv);

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
