/*
 * list, show, export, status, purge: reading and tidying the buffer. One
 * function makes the JSON object of an event (DESIGN §7, contract), so list,
 * show and export agree field for field.
 */
#include "cli.h"

#include "alloc.h"
#include "clock.h"
#include "crypto.h"
#include "fsutil.h"
#include "notify.h"
#include "json.h"
#include "parse.h"
#include "version.h"
#include "wire.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- shared ------------------------------------------------------------ */

static int add_parsed(cJSON *obj, const char *key, const char *json, const char *fallback)
{
	cJSON *v = cJSON_Parse(json ? json : fallback);

	if (!v)
		v = cJSON_Parse(fallback);
	if (!v)
		return -ENOMEM;
	if (!cJSON_AddItemToObject(obj, key, v)) {
		cJSON_Delete(v);
		return -ENOMEM;
	}
	return 0;
}

/* The event object of DESIGN §7. Returns NULL on allocation failure. */
static cJSON *event_to_json(const struct nbe_event *ev)
{
	char ts[NBE_TIMESTAMP_LEN + 1];
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	if (nbe_wire_timestamp(ev->wall_ms, ts) < 0)
		ts[0] = '\0';
	if (!cJSON_AddStringToObject(o, "id", ev->id) ||
	    !cJSON_AddNumberToObject(o, "seq", (double)ev->seq) ||
	    !cJSON_AddStringToObject(o, "name", ev->name) ||
	    !cJSON_AddStringToObject(o, "severity", nbe_severity_str(ev->severity)) ||
	    nbe_json_add_str_or_null(o, "phase", nbe_phase_str(ev->phase)) < 0 ||
	    !cJSON_AddStringToObject(o, "timestamp", ts) ||
	    !cJSON_AddStringToObject(o, "clock", ev->clock_synced ? "synced" : "unsynced") ||
	    !cJSON_AddStringToObject(o, "state", nbe_state_str(ev->state)) ||
	    nbe_json_add_str_or_null(o, "server_id", ev->server_id) < 0 ||
	    nbe_json_add_str_or_null(o, "parent", ev->parent) < 0 ||
	    nbe_json_add_str_or_null(o, "parent_local",
				     ev->parent_local[0] ? ev->parent_local : NULL) < 0 ||
	    nbe_json_add_str_or_null(o, "job", ev->job) < 0 ||
	    nbe_json_add_str_or_null(o, "message", ev->message) < 0 ||
	    add_parsed(o, "details", ev->details, "{}") < 0 ||
	    add_parsed(o, "links", ev->links, "[]") < 0 ||
	    !cJSON_AddNumberToObject(o, "attempts", (double)ev->attempts) ||
	    nbe_json_add_str_or_null(o, "last_error", ev->last_error) < 0 ||
	    !cJSON_AddBoolToObject(o, "in_doubt", ev->in_doubt) ||
	    !cJSON_AddStringToObject(o, "boot_id", ev->boot_id) ||
	    !cJSON_AddNumberToObject(o, "boottime_ms", (double)ev->boottime_ms)) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* Prints @obj compactly on one line, or pretty with @pretty. */
static int print_json(struct cli *c, const cJSON *obj, bool pretty)
{
	char *s = pretty ? cJSON_Print(obj) : cJSON_PrintUnformatted(obj);

	if (!s) {
		cli_err(c, "out of memory");
		return EX_OSERR;
	}
	fputs(s, stdout);
	fputc('\n', stdout);
	nbe_free(s);
	return 0;
}

static int parse_state_filter(struct cli *c, const char *arg, unsigned *mask)
{
	enum nbe_state s;

	if (strcmp(arg, "all") == 0) {
		*mask = NBE_STATE_MASK_ALL;
		return 0;
	}
	if (nbe_state_parse(arg, &s) < 0)
		return cli_usage_error(c, "--state '%s': expected pending, sent, dead or all", arg);
	*mask = NBE_STATE_MASK(s);
	return 0;
}

/* The wire body of @ev as it is (or would be) posted now. On success either
 * *ret_body is set, or *ret_note says why there is none. */
static int wire_for(struct cli *c, struct nbe_buffer *buf, const struct nbe_event *ev,
		    char **ret_body, char *note, size_t note_size)
{
	struct nbe_wire_ctx ctx = { 0 };
	struct nbe_error err = { { 0 } };
	char *owner = NULL, *parent = NULL;
	bool wait = false;
	int r;

	*ret_body = NULL;
	note[0] = '\0';
	if (ev->state == NBE_STATE_SENT && ev->wire) {
		/* what was posted, not what would be posted now */
		*ret_body = nbe_strdup(ev->wire);
		return *ret_body ? 0 : EX_OSERR;
	}
	r = nbe_buffer_meta_get(buf, "owner", &owner, &err);
	if (r == 0)
		r = nbe_buffer_resolve_parent(buf, ev, &parent, &wait, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		nbe_free(owner);
		return cli_exit_for_errno(r);
	}
	ctx.nuvlabox_id = c->cfg.nuvlabox_id;
	ctx.owner = owner;
	ctx.agent_version = NBE_VERSION;
	ctx.parent_href = parent;
	ctx.now_ms = nbe_clock_wall_ms();
	ctx.now_synced = nbe_clock_synced(c->cfg.timesync_file);
	r = nbe_wire_build(ev, &ctx, ret_body, &err);
	if (r < 0) {
		snprintf(note, note_size, "%s", err.msg);
		r = r == -ENOMEM ? EX_OSERR : 0;
	} else if (wait) {
		snprintf(note, note_size,
			 "the parent %s is not sent yet; its event/<uuid> becomes \"parent\"",
			 ev->parent_local);
	}
	nbe_free(owner);
	nbe_free(parent);
	return r;
}

/* Whether the device was decommissioned and Nuvla refuses it now: its
 * pending events can no longer be delivered (they stay, for export). */
static bool decommissioned(struct nbe_buffer *buf, char **ret_reason)
{
	char *reason = NULL, *fail = NULL;
	bool yes;

	nbe_buffer_meta_get(buf, "decommission", &reason, NULL);
	nbe_buffer_meta_get(buf, "last_fail", &fail, NULL);
	yes = reason && fail && strcmp(fail, "auth") == 0;
	nbe_free(fail);
	if (ret_reason)
		*ret_reason = reason;
	else
		nbe_free(reason);
	return yes;
}

/* ---- list and export ----------------------------------------------------- */

struct list_args {
	unsigned mask;
	int64_t limit;
	bool json;
	bool lines; /* export: JSON Lines */
	bool first;
	bool undeliverable; /* decommissioned and refused: pending ones cannot go */
	struct cli *c;
};

static int list_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	struct list_args *a = userdata;

	switch (opt) {
	case 's':
		return parse_state_filter(c, arg, &a->mask);
	case 'n':
		if (nbe_parse_int64(arg, 1, INT64_MAX, &a->limit) < 0)
			return cli_usage_error(c, "--limit '%s': expected a positive number", arg);
		return 0;
	case 'j':
		a->json = true;
		return 0;
	}
	return 0;
}

static int visit_json(const struct nbe_event *ev, void *userdata)
{
	struct list_args *a = userdata;
	cJSON *o = event_to_json(ev);
	char *s;

	if (!o)
		return -ENOMEM;
	if (a->undeliverable && ev->state == NBE_STATE_PENDING &&
	    !cJSON_AddBoolToObject(o, "undeliverable", true)) {
		cJSON_Delete(o);
		return -ENOMEM;
	}
	s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s)
		return -ENOMEM;
	if (a->lines)
		printf("%s\n", s);
	else
		printf("%s\n  %s", a->first ? "[" : ",", s);
	a->first = false;
	nbe_free(s);
	return 0;
}

static int visit_table(const struct nbe_event *ev, void *userdata)
{
	char ts[NBE_TIMESTAMP_LEN + 1];

	(void)userdata;
	if (nbe_wire_timestamp(ev->wall_ms, ts) < 0)
		snprintf(ts, sizeof(ts), "-");
	printf("%-6" PRId64 " %-36s %-7s %-8s %-24s %s%s%s\n", ev->seq, ev->id,
	       nbe_state_str(ev->state), nbe_severity_str(ev->severity), ts, ev->name,
	       ev->job ? " " : "", ev->job ? ev->job : "");
	return 0;
}

static int run_list(struct cli *c, struct list_args *a)
{
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *buf = NULL;
	int r;

	r = cli_load_config(c);
	if (r)
		return r;
	r = cli_open_buffer(c, true, &buf);
	if (r)
		return r;
	a->first = true;
	a->c = c;
	a->undeliverable = decommissioned(buf, NULL);
	if (!a->json && !a->lines)
		printf("%-6s %-36s %-7s %-8s %-24s %s\n", "SEQ", "ID", "STATE", "SEVERITY",
		       "CAPTURED", "NAME");
	r = nbe_buffer_foreach(buf, a->mask, a->limit,
			       a->json || a->lines ? visit_json : visit_table, a, &err);
	nbe_buffer_close(buf);
	if (r < 0) {
		cli_err(c, "%s", r == -ENOMEM ? "out of memory" : err.msg);
		return cli_exit_for_errno(r);
	}
	if (a->json)
		printf("%s]\n", a->first ? "[" : "\n");
	return EX_OK;
}

int cmd_list(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "state", required_argument, NULL, 's' },
		{ "limit", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct list_args a = { .mask = NBE_STATE_MASK_ALL };
	int r = cli_parse(c, argc, argv, opts, list_opt, NULL, &a);

	return r ? r : run_list(c, &a);
}

int cmd_export(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "state", required_argument, NULL, 's' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct list_args a = { .mask = NBE_STATE_MASK_ALL, .lines = true };
	int r = cli_parse(c, argc, argv, opts, list_opt, NULL, &a);

	return r ? r : run_list(c, &a);
}

/* ---- show ------------------------------------------------------------------ */

struct show_args {
	const char *ref;
	bool json;
};

static int show_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	struct show_args *a = userdata;

	(void)c;
	(void)arg;
	if (opt == 'j')
		a->json = true;
	return 0;
}

static int show_arg(struct cli *c, const char *arg, void *userdata)
{
	struct show_args *a = userdata;

	if (a->ref)
		return cli_usage_error(c, "unexpected argument '%s'", arg);
	a->ref = arg;
	return 0;
}

static void print_field(const char *key, const char *value)
{
	printf("%-13s %s\n", key, value ? value : "-");
}

static int show_text(const struct nbe_event *ev, const char *wire, const char *note)
{
	char ts[NBE_TIMESTAMP_LEN + 1], num[32];
	cJSON *w;

	if (nbe_wire_timestamp(ev->wall_ms, ts) < 0)
		snprintf(ts, sizeof(ts), "-");
	print_field("id:", ev->id);
	snprintf(num, sizeof(num), "%" PRId64, ev->seq);
	print_field("seq:", num);
	print_field("name:", ev->name);
	print_field("severity:", nbe_severity_str(ev->severity));
	print_field("phase:", nbe_phase_str(ev->phase));
	print_field("captured:", ts);
	print_field("clock:", ev->clock_synced ? "synced" : "unsynced");
	print_field("boot id:", ev->boot_id);
	print_field("state:", nbe_state_str(ev->state));
	print_field("server id:", ev->server_id);
	print_field("job:", ev->job);
	print_field("parent:",
		    ev->parent ? ev->parent : (ev->parent_local[0] ? ev->parent_local : NULL));
	print_field("message:", ev->message);
	print_field("details:", ev->details);
	snprintf(num, sizeof(num), "%" PRId64, ev->attempts);
	print_field("attempts:", num);
	print_field("last error:", ev->last_error);
	if (note[0])
		print_field("note:", note);
	if (wire) {
		w = cJSON_Parse(wire);
		if (w) {
			char *pretty = cJSON_Print(w);
			cJSON_Delete(w);
			if (!pretty)
				return EX_OSERR;
			printf("wire:\n%s\n", pretty);
			nbe_free(pretty);
		}
	}
	return EX_OK;
}

int cmd_show(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct show_args a = { 0 };
	struct nbe_event ev = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *buf = NULL;
	char *wire = NULL, note[NBE_ERROR_MAX + 64];
	cJSON *o = NULL, *w;
	int r;

	r = cli_parse(c, argc, argv, opts, show_opt, show_arg, &a);
	if (r)
		return r;
	if (!a.ref)
		return cli_usage_error(c, "missing the event ID");
	r = cli_load_config(c);
	if (r)
		return r;
	r = cli_open_buffer(c, true, &buf);
	if (r)
		return r;
	r = nbe_buffer_get(buf, a.ref, &ev, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		r = r == -ENOENT ? EX_DATAERR : r == -EINVAL ? EX_USAGE : cli_exit_for_errno(r);
		goto out;
	}
	r = wire_for(c, buf, &ev, &wire, note, sizeof(note));
	if (r)
		goto out;
	if (!a.json) {
		r = show_text(&ev, wire, note);
		goto out;
	}
	o = event_to_json(&ev);
	w = wire ? cJSON_Parse(wire) : cJSON_CreateNull();
	if (!o || !w || !cJSON_AddItemToObject(o, "wire", w)) {
		cJSON_Delete(w);
		cli_err(c, "out of memory");
		r = EX_OSERR;
		goto out;
	}
	if (note[0] && nbe_json_add_str_or_null(o, "wire_note", note) < 0) {
		cli_err(c, "out of memory");
		r = EX_OSERR;
		goto out;
	}
	r = print_json(c, o, true);
out:
	cJSON_Delete(o);
	nbe_free(wire);
	nbe_event_clear(&ev);
	nbe_buffer_close(buf);
	return r;
}

/* ---- status ---------------------------------------------------------------- */

/* Whether the daemon (or a flush) holds the upload lock. */
static bool uploader_running(const struct cli *c)
{
	char *path = nbe_path_join(c->cfg.state_dir, NBE_UPLOAD_LOCK);
	int fd = -1, r;

	if (!path)
		return false;
	r = nbe_lock_try(path, 0660, &fd);
	nbe_free(path);
	if (fd >= 0)
		close(fd);
	return r == -EWOULDBLOCK;
}

/* The client certificate's expiry as a timestamp, "" when none is
 * configured or readable; *expired when this device's clock is past it. */
static void cert_expiry(const struct cli *c, char out[NBE_TIMESTAMP_LEN + 1], bool *expired)
{
	struct nbe_cert_info ci;

	out[0] = '\0';
	*expired = false;
	if (!c->cfg.client_cert || nbe_crypto_cert_info(c->cfg.client_cert, &ci, NULL) < 0)
		return;
	if (nbe_wire_timestamp(ci.not_after * 1000, out) < 0)
		out[0] = '\0';
	*expired = nbe_clock_wall_ms() / 1000 > ci.not_after;
}

static int status_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	(void)c;
	(void)arg;
	if (opt == 'j')
		*(bool *)userdata = true;
	return 0;
}

static void human_bytes(int64_t n, char *out, size_t size)
{
	if (n >= 1024 * 1024)
		snprintf(out, size, "%.1f MiB", (double)n / (1024.0 * 1024.0));
	else if (n >= 1024)
		snprintf(out, size, "%.1f KiB", (double)n / 1024.0);
	else
		snprintf(out, size, "%" PRId64 " B", n);
}

int cmd_status(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct nbe_buffer_stats st;
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *buf = NULL;
	char *last_error = NULL, *upload_state = NULL, *next_meta = NULL, *decom = NULL;
	bool gone = false;
	int64_t now = nbe_clock_wall_ms(), age = -1, next_in = -1;
	bool json = false, synced, expired, running;
	char expiry[NBE_TIMESTAMP_LEN + 1];
	cJSON *o = NULL;
	int r;

	r = cli_parse(c, argc, argv, opts, status_opt, NULL, &json);
	if (r)
		return r;
	r = cli_load_config(c);
	if (r)
		return r;
	r = cli_open_buffer(c, true, &buf);
	if (r)
		return r;
	running = uploader_running(c);
	r = nbe_buffer_stats(buf, &st, &err);
	if (r == 0)
		r = nbe_buffer_meta_get(buf, "last_error", &last_error, &err);
	if (r == 0)
		r = nbe_buffer_meta_get(buf, "upload_state", &upload_state, &err);
	if (r == 0)
		r = nbe_buffer_meta_get(buf, "next_attempt_ms", &next_meta, &err);
	if (r == 0)
		gone = decommissioned(buf, &decom);
	nbe_buffer_close(buf);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		r = cli_exit_for_errno(r);
		goto out;
	}
	if (st.pending > 0 && st.oldest_pending_wall_ms > 0)
		age = now > st.oldest_pending_wall_ms ? (now - st.oldest_pending_wall_ms) / 1000
						      : 0;
	/* the uploader's schedule (a backoff) when it has one, else the
	 * earliest per-event one (an in-doubt lookup) */
	{
		int64_t when = st.next_attempt_ms, sched = 0;
		if (next_meta && nbe_parse_int64(next_meta, 1, INT64_MAX, &sched) == 0)
			when = sched;
		if (st.pending > 0 && when > 0)
			next_in = when > now ? (when - now + 999) / 1000 : 0;
	}
	synced = nbe_clock_synced(c->cfg.timesync_file);
	cert_expiry(c, expiry, &expired);
	if (upload_state && !running && strcmp(upload_state, "uploading") == 0) {
		/* left behind by an uploader that is gone */
		nbe_free(upload_state);
		upload_state = NULL;
	}
	if (!upload_state)
		upload_state = nbe_strdup("idle");
	if (!upload_state) {
		cli_err(c, "out of memory");
		r = EX_OSERR;
		goto out;
	}

	if (json) {
		o = cJSON_CreateObject();
		if (!o || !cJSON_AddNumberToObject(o, "pending", (double)st.pending) ||
		    !cJSON_AddNumberToObject(o, "sent", (double)st.sent) ||
		    !cJSON_AddNumberToObject(o, "dead", (double)st.dead) ||
		    !cJSON_AddNumberToObject(o, "dropped", (double)st.dropped) ||
		    !(age >= 0 ? cJSON_AddNumberToObject(o, "oldest_pending_age_s", (double)age)
			       : cJSON_AddNullToObject(o, "oldest_pending_age_s")) ||
		    !cJSON_AddNumberToObject(o, "buffer_bytes",
					     (double)(st.db_bytes + st.wal_bytes)) ||
		    !cJSON_AddNumberToObject(o, "max_buffer_bytes", (double)st.max_bytes) ||
		    !cJSON_AddNumberToObject(o, "max_events", (double)st.max_events) ||
		    !cJSON_AddStringToObject(o, "upload_state", upload_state) ||
		    !cJSON_AddBoolToObject(o, "uploader_running", running) ||
		    nbe_json_add_str_or_null(o, "decommission", decom) < 0 ||
		    !cJSON_AddBoolToObject(o, "decommissioned", gone) ||
		    nbe_json_add_str_or_null(o, "last_error", last_error) < 0 ||
		    !(next_in >= 0
			      ? cJSON_AddNumberToObject(o, "next_attempt_in_s", (double)next_in)
			      : cJSON_AddNullToObject(o, "next_attempt_in_s")) ||
		    !cJSON_AddBoolToObject(o, "clock_synced", synced) ||
		    nbe_json_add_str_or_null(o, "certificate_expiry", expiry[0] ? expiry : NULL) <
			    0 ||
		    !cJSON_AddBoolToObject(o, "certificate_expired", expired) ||
		    nbe_json_add_str_or_null(o, "nuvlabox_id", c->cfg.nuvlabox_id) < 0 ||
		    nbe_json_add_str_or_null(o, "identity_source", c->cfg.identity_source) < 0 ||
		    nbe_json_add_str_or_null(o, "identity_note", c->cfg.identity_note) < 0 ||
		    !cJSON_AddStringToObject(o, "endpoint", c->cfg.endpoint) ||
		    !cJSON_AddStringToObject(o, "state_dir", c->cfg.state_dir)) {
			cli_err(c, "out of memory");
			r = EX_OSERR;
			goto out;
		}
		r = print_json(c, o, true);
		goto out;
	}
	{
		char used[32], cap[32], line[64];

		human_bytes(st.db_bytes + st.wal_bytes, used, sizeof(used));
		human_bytes(st.max_bytes, cap, sizeof(cap));
		printf("pending:      %" PRId64, st.pending);
		if (age >= 0)
			printf(" (oldest captured %" PRId64 " s ago)", age);
		printf("\nsent:         %" PRId64 "\ndead:         %" PRId64
		       "\ndropped:      %" PRId64 "\n",
		       st.sent, st.dead, st.dropped);
		printf("buffer:       %s of %s, %" PRId64 " of at most %" PRId64 " events\n", used,
		       cap, st.pending + st.sent + st.dead, st.max_events);
		printf("upload:       %s (%s)\n", upload_state,
		       running ? "the daemon or a flush is uploading" : "no uploader running");
		if (next_in >= 0) {
			snprintf(line, sizeof(line), "in %" PRId64 " s", next_in);
			printf("next attempt: %s\n", line);
		}
		printf("last error:   %s\n", last_error ? last_error : "none");
		if (decom)
			printf("decommission: %s%s\n", decom,
			       gone ? "; Nuvla refuses the device now: pending events stay here "
				      "and are not sent"
				    : "");
		printf("clock:        %s\n", synced ? "synchronised" : "not synchronised");
		if (expiry[0])
			printf("client cert:  %s %s%s\n", expired ? "EXPIRED on" : "valid until",
			       expiry, expired ? " (by this device's clock)" : "");
		if (c->cfg.nuvlabox_id && c->cfg.identity_source)
			printf("nuvlabox:     %s (from %s)\n", c->cfg.nuvlabox_id,
			       c->cfg.identity_source);
		else if (c->cfg.nuvlabox_id)
			printf("nuvlabox:     %s\n", c->cfg.nuvlabox_id);
		else
			printf("nuvlabox:     not known yet (%s)\n",
			       c->cfg.identity_note ? c->cfg.identity_note
						    : "nuvlabox_id is not set");
		printf("endpoint:     %s\n", c->cfg.endpoint);
	}
	r = EX_OK;
out:
	cJSON_Delete(o);
	nbe_free(last_error);
	nbe_free(upload_state);
	nbe_free(next_meta);
	nbe_free(decom);
	return r;
}

/* ---- purge ----------------------------------------------------------------- */

static int purge_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	(void)c;
	(void)arg;
	if (opt == 'P')
		*(bool *)userdata = true;
	return 0;
}

int cmd_purge(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "include-pending", no_argument, NULL, 'P' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *buf = NULL;
	bool pending = false;
	int64_t removed = 0;
	int r;

	r = cli_parse(c, argc, argv, opts, purge_opt, NULL, &pending);
	if (r)
		return r;
	r = cli_load_config(c);
	if (r)
		return r;
	r = cli_open_buffer(c, true, &buf);
	if (r)
		return r;
	r = nbe_buffer_purge(buf, pending, &removed, &err);
	nbe_buffer_close(buf);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return cli_exit_for_errno(r);
	}
	printf("removed %" PRId64 " event%s%s\n", removed, removed == 1 ? "" : "s",
	       pending ? " (pending ones included)" : " (sent and dead)");
	return EX_OK;
}

/* ---- retry-dead ------------------------------------------------------------ */

static int retry_arg(struct cli *c, const char *arg, void *userdata)
{
	const char ***refs = userdata;
	size_t n = 0;

	(void)c;
	while ((*refs)[n])
		n++;
	(*refs)[n] = arg;
	return 0;
}

int cmd_retry_dead(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	const char **refs = nbe_calloc((size_t)argc + 1, sizeof(*refs));
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *buf = NULL;
	int64_t n = 0;
	size_t nrefs = 0;
	int r;

	if (!refs)
		return EX_OSERR;
	r = cli_parse(c, argc, argv, opts, cli_no_options, retry_arg, &refs);
	if (r)
		goto out;
	while (refs[nrefs])
		nrefs++;
	r = cli_load_config(c);
	if (r)
		goto out;
	r = cli_open_buffer(c, true, &buf);
	if (r)
		goto out;
	r = nbe_buffer_retry_dead(buf, refs, nrefs, &n, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		r = r == -ENOENT || r == -EINVAL ? EX_DATAERR : cli_exit_for_errno(r);
		goto out;
	}
	printf("re-queued %" PRId64 " dead event%s\n", n, n == 1 ? "" : "s");
	r = EX_OK;
out:
	nbe_buffer_close(buf);
	nbe_free(refs);
	return r;
}
