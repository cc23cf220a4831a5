/*
 * life: what the standalone lifecycle actions share (see life.h).
 */
#include "life.h"

#include "alloc.h"
#include "clock.h"
#include "json.h"
#include "notify.h"
#include "sysinfo.h"
#include "upload_setup.h"
#include "version.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void life_close(struct life *l)
{
	nbe_nuvla_free(l->n);
	nbe_buffer_close(l->buf);
}

int life_open(struct cli *c, struct life *l)
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

int life_record(struct life *l, const struct nbe_event_input *in, char ret_id[NBE_UUID_LEN + 1])
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

int life_record_end(struct life *l, const char *name, const char *parent, const char *job,
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

int life_exit_for(const struct nbe_http_response *r)
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

int life_call(struct life *l, const char *method, const char *path, const char *body,
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

int life_login(struct life *l)
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
	r = life_exit_for(&resp);
	if (r)
		cli_err(l->c, "login as %s failed: %s", cfg->api_key, resp.message);
	nbe_http_response_clear(&resp);
	return r;
}

char *life_api_path(const char *href, const char *op)
{
	size_t n = strlen(href) + (op ? strlen(op) : 0) + 8;
	char *p = nbe_malloc(n);

	if (p)
		snprintf(p, n, "/api/%s%s%s", href, op ? "/" : "", op ? op : "");
	return p;
}

char *life_details(const char *const *kv)
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

int life_commission(struct life *l, const char *body, struct nbe_http_response *resp)
{
	char *api = life_api_path(l->c->cfg.nuvlabox_id, "commission");
	int r = api ? life_call(l, "POST", api, body, resp) : EX_OSERR;

	nbe_free(api);
	return r;
}
