#include "fuzz.h"

#include "alloc.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fuzz_fail(const char *file, int line, const char *what)
{
	fprintf(stderr, "%s:%d: fuzz check failed: %s\n", file, line, what);
	abort();
}

char *fuzz_strndup(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (!s)
		fuzz_fail(__FILE__, __LINE__, "out of memory in the harness");
	if (size)
		memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

bool fuzz_printable(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	}
	return true;
}

/* FNV-1a: picks the allocation that fails, the same one for the same input. */
static uint64_t hash(const uint8_t *data, size_t size)
{
	uint64_t h = UINT64_C(14695981039346656037);

	for (size_t i = 0; i < size; i++) {
		h ^= data[i];
		h *= UINT64_C(1099511628211);
	}
	return h;
}

void fuzz_run(const uint8_t *data, size_t size, fuzz_one_fn one)
{
	unsigned long made;

	nbe_json_install_hooks();
	nbe_alloc_fail_at(0, 0);
	one(data, size, false);
	made = nbe_alloc_fail_at(0, 0);
	if (made == 0)
		return;
	nbe_alloc_fail_at(1 + (unsigned long)(hash(data, size) % made), 0);
	one(data, size, true);
	nbe_alloc_fail_at(0, 0);
}
