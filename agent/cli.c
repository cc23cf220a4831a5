/*
 * nuvlabox-event: the command-line tool that captures and inspects device
 * events (DESIGN §7).
 */
#include "cli.h"

#include "helper.h"

#include "alloc.h"
#include "fsutil.h"
#include "json.h"
#include "version.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/*
 * The network commands live in nuvlabox-event-net, which links libcurl; this
 * front end does not, so record starts in about 2 ms instead of the 10 ms
 * that loading libcurl and its dependencies takes (DESIGN §7 targets).
 */
#ifdef NBE_CLI_NET
#define CMD_NET(fn) fn
#else
#define CMD_NET(fn) cmd_exec_net
static int cmd_exec_net(struct cli *c, int argc, char **argv);
#endif

struct command {
	const char *name;
	int (*run)(struct cli *c, int argc, char **argv);
	const char *usage;
};

static const struct command commands[] = {
	{ "record", cmd_record,
	  "record NAME [--severity S] [--job job/ID] [--parent REF] [--message TEXT] "
	  "[--detail KEY=VALUE]... [--details-json JSON]" },
	{ "list", cmd_list, "list [--state pending|sent|dead|all] [--limit N] [--json]" },
	{ "show", cmd_show, "show ID [--json]" },
	{ "status", cmd_status, "status [--json]" },
	{ "export", cmd_export, "export [--state pending|sent|dead|all]" },
	{ "purge", cmd_purge, "purge [--include-pending]" },
	{ "flush", CMD_NET(cmd_flush), "flush [--timeout SEC]" },
	{ "retry-dead", cmd_retry_dead, "retry-dead [ID...]" },
	{ "doctor", CMD_NET(cmd_doctor), "doctor" },
	{ "keygen", cmd_keygen, "keygen --out DIR [--subject CN=...]" },
	{ "activate", CMD_NET(cmd_activate), "activate [--force]" },
	{ "commission", CMD_NET(cmd_commission), "commission --payload FILE [--replace]" },
	{ "job", CMD_NET(cmd_job), "job run job/ID" },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	}
	return NULL;
}

static void vprint(const struct cli *c, const char *level, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void vprint(const struct cli *c, const char *level, const char *fmt, va_list ap)
{
	char msg[1024];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	fprintf(stderr, "%s%s%s: %s%s\n", c->prog, c->command ? " " : "",
		c->command ? c->command : "", level, msg);
}

void cli_err(const struct cli *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint(c, "", fmt, ap);
	va_end(ap);
}

void cli_warn(const struct cli *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint(c, "warning: ", fmt, ap);
	va_end(ap);
}

int cli_usage_error(const struct cli *c, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	/* one line: what is wrong, and where to look */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cli_err(c, "%s (see %s%s%s --help)", msg, c->prog, c->command ? " " : "",
		c->command ? c->command : "");
	return EX_USAGE;
}

int cli_global_option(struct cli *c, int opt, const char *arg)
{
	switch (opt) {
	case CLI_OPT_CONFIG:
		c->config_path = arg;
		c->config_explicit = true;
		return 0;
	case CLI_OPT_STATE_DIR:
		c->state_dir = arg;
		return 0;
	default:
		return EX_USAGE;
	}
}

int cli_parse(struct cli *c, int argc, char **argv, const struct option *opts, cli_opt_fn on_opt,
	      cli_arg_fn on_arg, void *userdata)
{
	int opt, r;

	opterr = 0;
	optind = 1;
	for (;;) {
		opt = getopt_long(argc, argv, "+:h", opts, NULL);
		if (opt == -1) {
			if (optind >= argc)
				return 0;
			/* a positional word; more options may follow it */
			r = on_arg ? on_arg(c, argv[optind], userdata)
				   : cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
			if (r)
				return r;
			optind++;
			continue;
		}
		switch (opt) {
		case 'h': {
			const struct command *cmd = find_command(c->command);
			printf("usage: %s %s\n\nSee nuvlabox-event(1).\n", c->prog,
			       cmd ? cmd->usage : "COMMAND");
			return CLI_HELP_SHOWN;
		}
		case ':':
			if (strncmp(argv[optind - 1], "--", 2) == 0 || !optopt)
				return cli_usage_error(c, "option '%s' needs a value",
						       argv[optind - 1]);
			return cli_usage_error(c, "option '-%c' needs a value", optopt);
		case '?':
			if (optopt && optopt != '?')
				return cli_usage_error(c, "unknown option '-%c'", optopt);
			return cli_usage_error(c, "unknown option '%s'", argv[optind - 1]);
		case CLI_OPT_CONFIG:
		case CLI_OPT_STATE_DIR:
			cli_global_option(c, opt, optarg);
			break;
		default:
			r = on_opt(c, opt, optarg, userdata);
			if (r)
				return r;
		}
	}
}

int cli_no_options(struct cli *c, int opt, const char *arg, void *userdata)
{
	(void)c;
	(void)opt;
	(void)arg;
	(void)userdata;
	return 0;
}

static const char *env_get(const char *name)
{
	return getenv(name);
}

int cli_load_config(struct cli *c)
{
	const char *flags[] = { "state_dir", c->state_dir, NULL };
	const struct nbe_config_source src = {
		.path = c->config_path,
		.required = c->config_explicit,
		.getenv_fn = env_get,
		.flags = c->state_dir ? flags : NULL,
		/* record needs no identity: keep NuvlaEdge's files off its hot path */
		.identity = strcmp(c->command, "record") != 0,
	};
	struct nbe_error err = { { 0 } };
	int r;

	if (c->cfg_loaded)
		return 0;
	r = nbe_config_load(&c->cfg, &src, &err);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return r == -ENOMEM ? EX_OSERR : EX_CONFIG;
	}
	c->cfg_loaded = true;
	return 0;
}

int cli_exit_for_errno(int r)
{
	switch (-r) {
	case 0:
		return EX_OK;
	case EINVAL:
	case E2BIG:
	case EMSGSIZE:
		return EX_DATAERR;
	case ENOBUFS:
	case EBUSY:
	case EAGAIN:
		return EX_TEMPFAIL;
	case ENOMEM:
		return EX_OSERR;
	default:
		return EX_IOERR;
	}
}

int cli_open_buffer(struct cli *c, bool full_check, struct nbe_buffer **ret)
{
	struct nbe_buffer_open_info info = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_buffer_opts opts = { 0 };
	char *path;
	int r;

	r = nbe_mkdir_exist_ok(c->cfg.state_dir, 0750);
	if (r < 0) {
		cli_err(c, "state directory %s: %s", c->cfg.state_dir, strerror(-r));
		return EX_IOERR;
	}
	path = nbe_path_join(c->cfg.state_dir, NBE_BUFFER_FILE);
	if (!path) {
		cli_err(c, "out of memory");
		return EX_OSERR;
	}
	opts.path = path;
	opts.max_bytes = c->cfg.max_buffer_bytes;
	opts.max_events = c->cfg.max_events;
	opts.keep_sent = c->cfg.keep_sent;
	opts.busy_timeout_ms = c->cfg.busy_timeout_ms;
	opts.full_check = full_check;
	opts.boot_id_file = c->cfg.boot_id_file;
	opts.timesync_file = c->cfg.timesync_file;
	r = nbe_buffer_open(&opts, ret, &info, &err);
	nbe_free(path);
	if (r < 0) {
		cli_err(c, "%s", err.msg);
		return r == -EINVAL ? EX_CONFIG : cli_exit_for_errno(r);
	}
	if (info.reset)
		cli_warn(c, "the buffer was corrupt (%s); moved to %s, %lld events salvaged",
			 info.reason, info.quarantined, (long long)info.salvaged);
	return 0;
}

static void print_help(const char *prog)
{
	printf("usage: %s [--config FILE] [--state-dir DIR] COMMAND [ARGS]\n\n"
	       "Captures NuvlaBox lifecycle events into a durable buffer and inspects it.\n\n"
	       "commands:\n",
	       prog);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		printf("  %s\n", commands[i].usage);
	printf("\nSee nuvlabox-event(1).\n");
}

#ifndef NBE_CLI_NET
/* Runs the network helper with the same arguments: beside this program in
 * a build tree, else where the package installs it. */
static int cmd_exec_net(struct cli *c, int argc, char **argv)
{
	char path[4200];
	char **args = nbe_calloc((size_t)argc + 3, sizeof(*args));
	int k = 0;

	if (!args)
		return EX_OSERR;
	nbe_net_helper_path(path, sizeof(path));
	/* argv without the command word (main removed it): put it back */
	args[k++] = argv[0];
	args[k++] = (char *)(uintptr_t)c->command;
	for (int i = 1; i < argc; i++)
		args[k++] = argv[i];
	args[k] = NULL;
	(void)fflush(stdout); /* nothing is printed before this: a precaution */
	execv(path, args);
	cli_err(c, "%s: %s (the network commands are in that program)", path, strerror(errno));
	nbe_free(args);
	return EX_OSFILE;
}
#endif

int main(int argc, char **argv)
{
	struct cli c = { .prog = "nuvlabox-event", .config_path = NBE_CONFIG_FILE };
	const struct command *cmd = NULL;
	int i, r, flushed;

	nbe_json_install_hooks();
	/* the command is the first word that is neither an option nor the value
	 * of a global option; getopt in the command permutes the rest */
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--config") == 0 || strcmp(a, "--state-dir") == 0) {
			i++;
			continue;
		}
		if (strcmp(a, "--version") == 0) {
			/* the TLS library in use: `doctor`, or nuvlabox-eventd --version */
			printf("nuvlabox-event %s\n", NBE_VERSION);
			return EX_OK;
		}
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			print_help(c.prog);
			return EX_OK;
		}
		if (a[0] == '-')
			continue;
		cmd = find_command(a);
		if (!cmd) {
			fprintf(stderr, "%s: unknown command '%s' (see --help)\n", c.prog, a);
			return EX_USAGE;
		}
		break;
	}
	if (!cmd) {
		fprintf(stderr, "%s: no command given (see --help)\n", c.prog);
		return EX_USAGE;
	}
	c.command = cmd->name;
	/* hand the command its arguments with its own name removed */
	memmove(&argv[i], &argv[i + 1], (size_t)(argc - i) * sizeof(char *));
	argc--;
	r = cmd->run(&c, argc, argv);
	if (r == CLI_HELP_SHOWN)
		r = EX_OK;
	/* a write that failed before the last buffer (ferror) fails the command too */
	flushed = fflush(stdout);
	if ((flushed != 0 || ferror(stdout)) && r == EX_OK) {
		cli_err(&c, "writing the output: %s",
			flushed != 0 ? strerror(errno) : "an earlier write failed");
		r = EX_IOERR;
	}
	if (c.cfg_loaded)
		nbe_config_free(&c.cfg);
	return r;
}
