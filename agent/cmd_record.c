/*
 * record: captures one event durably and prints its device event id.
 */
#include "cli.h"

#include "clock.h"
#include "event.h"
#include "notify.h"
#include "sysinfo.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define MAX_DETAIL_PAIRS 256

struct record_args {
	struct nbe_event_input in;
	const char *pairs[MAX_DETAIL_PAIRS + 1];
	size_t npairs;
};

static int record_opt(struct cli *c, int opt, const char *arg, void *userdata)
{
	struct record_args *a = userdata;

	switch (opt) {
	case 's':
		a->in.severity = arg;
		break;
	case 'j':
		a->in.job = arg;
		break;
	case 'p':
		a->in.parent = arg;
		break;
	case 'm':
		a->in.message = arg;
		break;
	case 'D':
		if (a->in.details_json)
			return cli_usage_error(c, "--details-json given twice");
		a->in.details_json = arg;
		break;
	case 'd':
		if (a->npairs == MAX_DETAIL_PAIRS)
			return cli_usage_error(c, "more than %d --detail options",
					       MAX_DETAIL_PAIRS);
		a->pairs[a->npairs++] = arg;
		break;
	}
	return 0;
}

static int record_arg(struct cli *c, const char *arg, void *userdata)
{
	struct record_args *a = userdata;

	if (a->in.name)
		return cli_usage_error(c, "unexpected argument '%s'", arg);
	a->in.name = arg;
	return 0;
}

int cmd_record(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "severity", required_argument, NULL, 's' },
		{ "job", required_argument, NULL, 'j' },
		{ "parent", required_argument, NULL, 'p' },
		{ "message", required_argument, NULL, 'm' },
		{ "detail", required_argument, NULL, 'd' },
		{ "details-json", required_argument, NULL, 'D' },
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct record_args a = { 0 };
	struct nbe_event ev = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer *buf = NULL;
	char boot_id[NBE_UUID_LEN + 1];
	int r;

	a.in.detail_pairs = a.pairs;
	r = cli_parse(c, argc, argv, opts, record_opt, record_arg, &a);
	if (r)
		return r;
	if (!a.in.name)
		return cli_usage_error(c, "missing the event NAME");
	r = cli_load_config(c);
	if (r)
		return r;
	r = nbe_boot_id_read(c->cfg.boot_id_file, boot_id, sizeof(boot_id));
	if (r < 0) {
		cli_err(c, "%s: cannot read the boot id: %s", c->cfg.boot_id_file,
			r == -EINVAL ? "not a UUID" : strerror(-r));
		return r == -EINVAL ? EX_DATAERR : EX_IOERR;
	}
	/* validate everything before touching the buffer */
	r = nbe_event_init_capture(&ev, &a.in, nbe_clock_wall_ms(), nbe_clock_boottime_ms(),
				   boot_id, nbe_clock_synced(c->cfg.timesync_file), &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return cli_exit_for_errno(r);
	}
	r = cli_open_buffer(c, false, &buf);
	if (r)
		goto out;
	r = nbe_buffer_append(buf, &ev, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		r = r == -ENOENT ? EX_DATAERR : cli_exit_for_errno(r);
		goto out;
	}
	printf("%s\n", ev.id);
	/* best effort: a running daemon uploads it at once */
	nbe_notify_send(c->cfg.runtime_dir, NBE_NOTIFY_POKE);
	r = EX_OK;
out:
	nbe_buffer_close(buf);
	nbe_event_clear(&ev);
	return r;
}
