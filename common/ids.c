#include "ids.h"

#include "alloc.h"
#include "random.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

int nbe_uuid_v4(char ret[NBE_UUID_LEN + 1])
{
	unsigned char b[16];
	int r = nbe_random_bytes(b, sizeof(b));

	if (r < 0)
		return r;
	b[6] = (unsigned char)((b[6] & 0x0F) | 0x40); /* version 4 */
	b[8] = (unsigned char)((b[8] & 0x3F) | 0x80); /* variant 10 */
	snprintf(ret, NBE_UUID_LEN + 1,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
		 b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
		 b[15]);
	return 0;
}

bool nbe_uuid_valid(const char *s)
{
	size_t i;

	for (i = 0; i < NBE_UUID_LEN; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return s[i] == '\0';
}

static bool is_lower(char c)
{
	return c >= 'a' && c <= 'z';
}

static bool is_alnum(char c)
{
	return is_lower(c) || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool nbe_href_valid(const char *s, bool require_id)
{
	size_t n = strlen(s), i = 0, type_end;

	if (n == 0 || n > NBE_HREF_MAX || !is_lower(s[0]))
		return false;
	while (i < n && (is_lower(s[i]) || s[i] == '-'))
		i++;
	type_end = i;
	if (s[type_end - 1] == '-')
		return false;
	if (i == n)
		return !require_id;
	if (s[i] != '/' || i + 1 == n)
		return false;
	i++;
	if (!is_alnum(s[i]) || !is_alnum(s[n - 1]))
		return false;
	for (; i < n; i++) {
		if (!is_alnum(s[i]) && s[i] != '_' && s[i] != '-')
			return false;
	}
	return true;
}

bool nbe_href_is(const char *s, const char *type)
{
	size_t tl = strlen(type);

	return strncmp(s, type, tl) == 0 && s[tl] == '/' && nbe_href_valid(s, true);
}

bool nbe_principal_valid(const char *s)
{
	const char *slash = strchr(s, '/');

	if (!slash || slash == s || slash[1] == '\0')
		return false;
	for (const char *p = s; p < slash; p++) {
		if (!is_lower(*p) && *p != '-')
			return false;
	}
	for (const char *p = slash + 1; *p; p++) {
		if (!is_lower(*p) && !(*p >= '0' && *p <= '9') && *p != '-')
			return false;
	}
	return true;
}

char *nbe_nuvlabox_id_normalize(const char *s)
{
	const char *uuid = s;
	char *ret;

	if (strncmp(s, "nuvlabox/", 9) == 0)
		uuid = s + 9;
	if (!nbe_uuid_valid(uuid))
		return NULL;
	ret = nbe_malloc(9 + NBE_UUID_LEN + 1);
	if (!ret)
		return NULL;
	/* NOLINTNEXTLINE(bugprone-not-null-terminated-result): the loop copies the NUL */
	memcpy(ret, "nuvlabox/", 9);
	for (size_t i = 0; i <= NBE_UUID_LEN; i++)
		ret[9 + i] = (char)tolower((unsigned char)uuid[i]);
	return ret;
}
