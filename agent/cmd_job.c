/*
 * job run: one Nuvla job the way the job engine runs it (DESIGN §6.3,
 * NUVLA-CONTRACT §4): reboot_nuvlabox and the ssh-key jobs; one job at a
 * time on a device.
 */
#include "life.h"

#include "alloc.h"
#include "authkeys.h"
#include "fsutil.h"
#include "job.h"
#include "json.h"
#include "spawn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define REBOOT_ARGV_MAX	   16
#define JOB_STATUS_MSG_MAX 1024

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
		r = life_exit_for(&resp);
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
	char *api = life_api_path(l->c->cfg.nuvlabox_id, NULL), *body = NULL;
	cJSON *nb = NULL, *keys, *out = NULL, *k;
	bool have = false;

	*ret_code = api ? life_call(l, "GET", api, NULL, resp) : EX_OSERR;
	nbe_free(api);
	if (*ret_code)
		return NULL;
	if (resp->cls != NBE_HTTP_OK) {
		*ret_code = life_exit_for(resp);
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
	char *api = life_api_path(j->id, "get-context"), *details = NULL, *body = NULL, name[96],
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
			    : life_exit_for(&resp);
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

		details = life_details(ok ? kv_ok : kv);
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
		r = life_commission(l, body, &resp);
	if (r == 0 && resp.cls != NBE_HTTP_OK)
		r = life_exit_for(&resp);
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
		r = life_exit_for(&resp);
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
		r = life_exit_for(&resp);
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
	j.api = life_api_path(a.id, NULL);
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
