/*
 * parse: checked conversions of text from outside (config values, flags)
 * into numbers, sizes, durations and booleans. Never atoi: every function
 * rejects empty input, trailing garbage and out-of-range values.
 * Out-parameters are written only on success; failures return -EINVAL or
 * -ERANGE.
 */
#ifndef NBE_PARSE_H
#define NBE_PARSE_H

#include <stdbool.h>
#include <stdint.h>

/* Decimal integer in [min, max]. */
int nbe_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret);

/* Size: a decimal integer with an optional K, M or G suffix (powers of 1024). */
int nbe_parse_size(const char *s, int64_t *ret_bytes);

/* Duration: an integer with a unit ms, s, m or h ("500ms", "10s", "5m",
 * "1h"); a bare number is seconds. */
int nbe_parse_duration_ms(const char *s, int64_t *ret_ms);

/* true/false, yes/no, on/off, 1/0 (case-insensitive). */
int nbe_parse_bool(const char *s, bool *ret);

#endif
