#include "parse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Parses the leading decimal digits of @s into *ret, *end after them. */
static int parse_prefix(const char *s, int64_t *ret, const char **end)
{
	char *e;
	long long v;

	if (!s || !*s || !((*s >= '0' && *s <= '9') || *s == '-'))
		return -EINVAL;
	errno = 0;
	v = strtoll(s, &e, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (e == s)
		return -EINVAL;
	*ret = v;
	*end = e;
	return 0;
}

int nbe_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret)
{
	const char *end;
	int64_t v;
	int r = parse_prefix(s, &v, &end);

	if (r < 0)
		return r;
	if (*end)
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

static int scale(int64_t v, int64_t mul, int64_t *ret)
{
	if (v < 0)
		return -ERANGE;
	if (v > INT64_MAX / mul)
		return -ERANGE;
	*ret = v * mul;
	return 0;
}

int nbe_parse_size(const char *s, int64_t *ret_bytes)
{
	const char *end;
	int64_t v, mul = 1;
	int r = parse_prefix(s, &v, &end);

	if (r < 0)
		return r;
	if (*end) {
		if (end[1] != '\0' && !((end[1] == 'B' || end[1] == 'b') && end[2] == '\0'))
			return -EINVAL;
		switch (*end) {
		case 'K':
		case 'k':
			mul = 1024;
			break;
		case 'M':
		case 'm':
			mul = 1024 * 1024;
			break;
		case 'G':
		case 'g':
			mul = 1024 * 1024 * 1024;
			break;
		case 'B':
		case 'b':
			if (end[1] != '\0')
				return -EINVAL;
			break;
		default:
			return -EINVAL;
		}
	}
	return scale(v, mul, ret_bytes);
}

int nbe_parse_duration_ms(const char *s, int64_t *ret_ms)
{
	const char *end;
	int64_t v, mul;
	int r = parse_prefix(s, &v, &end);

	if (r < 0)
		return r;
	if (*end == '\0' || strcmp(end, "s") == 0)
		mul = 1000;
	else if (strcmp(end, "ms") == 0)
		mul = 1;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		mul = 60 * 1000;
	else if (strcmp(end, "h") == 0)
		mul = 3600 * 1000;
	else
		return -EINVAL;
	return scale(v, mul, ret_ms);
}

int nbe_parse_bool(const char *s, bool *ret)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	if (!s)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*ret = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*ret = false;
			return 0;
		}
	}
	return -EINVAL;
}
