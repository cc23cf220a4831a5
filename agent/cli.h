/*
 * cli: what the subcommands of nuvlabox-event share: the parsed global
 * options, the loaded configuration, opening the buffer, and turning errors
 * into one stderr line and a sysexits.h exit code.
 */
#ifndef NBE_CLI_H
#define NBE_CLI_H

#include "buffer.h"
#include "config.h"
#include "error.h"

#include <getopt.h>
#include <stdbool.h>
#include <sysexits.h>

/* Options every subcommand accepts, before or after its name. */
#define CLI_OPT_CONFIG	  0x1001
#define CLI_OPT_STATE_DIR 0x1002
#define CLI_GLOBAL_OPTIONS                                                                         \
	{ "config", required_argument, NULL, CLI_OPT_CONFIG },                                     \
		{ "state-dir", required_argument, NULL, CLI_OPT_STATE_DIR },                       \
	{                                                                                          \
		"help", no_argument, NULL, 'h'                                                     \
	}

struct cli {
	const char *prog;
	const char *command;
	const char *config_path;
	bool config_explicit;
	const char *state_dir;
	struct nbe_config cfg;
	bool cfg_loaded;
};

/* Prints "nuvlabox-event: <message>" on stderr. */
void cli_err(const struct cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cli_warn(const struct cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Handles a global option seen by a subcommand's getopt loop. Returns 0 when
 * handled, EX_USAGE when @opt is not one. */
int cli_global_option(struct cli *c, int opt, const char *arg);

/* Called for each option of a command (not the global ones); returns 0 or
 * an exit code. */
typedef int (*cli_opt_fn)(struct cli *c, int opt, const char *arg, void *userdata);
/* Called for each positional argument; returns 0 or an exit code. */
typedef int (*cli_arg_fn)(struct cli *c, const char *arg, void *userdata);

/* An option handler for commands with only the global options. */
int cli_no_options(struct cli *c, int opt, const char *arg, void *userdata);

/* Returned by cli_parse() after --help was printed: exit 0. */
#define CLI_HELP_SHOWN (-1)

/*
 * Parses a command's arguments: options in @opts (which must end with
 * CLI_GLOBAL_OPTIONS and a zero entry) anywhere among the positional ones.
 * Returns 0, CLI_HELP_SHOWN, or EX_USAGE (after printing why).
 */
int cli_parse(struct cli *c, int argc, char **argv, const struct option *opts, cli_opt_fn on_opt,
	      cli_arg_fn on_arg, void *userdata);

/* Prints the usage line of the current command and returns EX_USAGE. */
int cli_usage_error(const struct cli *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Loads defaults, the file, the environment and the flags. Returns 0 or
 * EX_CONFIG (after printing why). */
int cli_load_config(struct cli *c);

/*
 * Opens the buffer in the configured state directory (creating the
 * directory if its parent exists). @full_check runs quick_check. Returns 0
 * or an exit code (after printing why).
 */
int cli_open_buffer(struct cli *c, bool full_check, struct nbe_buffer **ret);

/* The exit code for a buffer or I/O error. */
int cli_exit_for_errno(int r);

/* The subcommands. Each returns an exit code. */
int cmd_record(struct cli *c, int argc, char **argv);
int cmd_list(struct cli *c, int argc, char **argv);
int cmd_export(struct cli *c, int argc, char **argv);
int cmd_show(struct cli *c, int argc, char **argv);
int cmd_status(struct cli *c, int argc, char **argv);
int cmd_purge(struct cli *c, int argc, char **argv);
int cmd_flush(struct cli *c, int argc, char **argv);
int cmd_retry_dead(struct cli *c, int argc, char **argv);
int cmd_doctor(struct cli *c, int argc, char **argv);
int cmd_keygen(struct cli *c, int argc, char **argv);
int cmd_activate(struct cli *c, int argc, char **argv);
int cmd_commission(struct cli *c, int argc, char **argv);
int cmd_job(struct cli *c, int argc, char **argv);

/* flush's work after its options and the configuration (nuvlabox-event-net
 * only): uploads, or asks the daemon to, within @timeout_ms. */
int cli_flush(struct cli *c, int64_t timeout_ms);

#endif
