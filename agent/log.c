#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static enum nbe_log_level max_level = NBE_LOG_INFO;
static bool journal;
static const char *program = "nuvlabox-eventd";

/* Whether stderr is the journal stream systemd named in JOURNAL_STREAM. */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	char *end;
	struct stat st;

	if (!js || fstat(2, &st) != 0)
		return false;
	/* "<device>:<inode>", both decimal */
	errno = 0;
	dev = strtoull(js, &end, 10);
	if (errno != 0 || end == js || *end != ':')
		return false;
	js = end + 1;
	ino = strtoull(js, &end, 10);
	if (errno != 0 || end == js || *end != '\0')
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(const char *prog, enum nbe_log_level level)
{
	program = prog;
	max_level = level;
	journal = stderr_is_journal();
}

void log_set_level(enum nbe_log_level level)
{
	max_level = level;
}

bool log_enabled(enum nbe_log_level level)
{
	return level <= max_level;
}

void log_msg(enum nbe_log_level level, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* one line per message: a newline in a server's text must not forge one */
	for (char *p = msg; *p; p++) {
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	}
	if (journal)
		fprintf(stderr, "<%d>%s\n", (int)level, msg);
	else
		fprintf(stderr, "%s: %s%s\n", program,
			level <= NBE_LOG_ERROR	   ? "error: "
			: level == NBE_LOG_WARNING ? "warning: "
						   : "",
			msg);
}
