/*
 * log: the programs' logging. To stderr; with "<N>" priority prefixes when
 * stderr is the journal (systemd sets JOURNAL_STREAM), plain otherwise.
 * Never pass a secret (api secret, cookie, private key) to it.
 */
#ifndef NBE_LOG_H
#define NBE_LOG_H

#include "config.h"

#include <stdbool.h>

void log_init(const char *prog, enum nbe_log_level level);
void log_set_level(enum nbe_log_level level);
bool log_enabled(enum nbe_log_level level);
void log_msg(enum nbe_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...)	 log_msg(NBE_LOG_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(NBE_LOG_WARNING, __VA_ARGS__)
#define log_notice(...)	 log_msg(NBE_LOG_NOTICE, __VA_ARGS__)
#define log_info(...)	 log_msg(NBE_LOG_INFO, __VA_ARGS__)
#define log_debug(...)	 log_msg(NBE_LOG_DEBUG, __VA_ARGS__)

#endif
