#include "alloc.h"

#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static unsigned long alloc_count;
static unsigned long alloc_fail_n;
static int alloc_fail_persistent;
static unsigned long alloc_failures;

unsigned long nbe_alloc_failures(void)
{
	return alloc_failures;
}

static void *counted(void *p)
{
	if (!p)
		alloc_failures++;
	return p;
}

static int should_fail(void)
{
	alloc_count++;
	if (alloc_fail_n == 0)
		return 0;
	if (alloc_count == alloc_fail_n)
		return 1;
	return alloc_fail_persistent && alloc_count > alloc_fail_n;
}

unsigned long nbe_alloc_fail_at(unsigned long n, int persistent)
{
	unsigned long made = alloc_count;

	alloc_count = 0;
	alloc_fail_n = n;
	alloc_fail_persistent = persistent;
	return made;
}

void *nbe_malloc(size_t size)
{
	if (should_fail())
		return counted(NULL);
	return counted(malloc(size ? size : 1));
}

void *nbe_calloc(size_t n, size_t size)
{
	if (should_fail())
		return counted(NULL);
	return counted(calloc(n ? n : 1, size ? size : 1));
}

void *nbe_realloc(void *p, size_t size)
{
	if (should_fail())
		return counted(NULL);
	return counted(realloc(p, size ? size : 1));
}

void nbe_free(void *p)
{
	free(p);
}

char *nbe_strndup(const char *s, size_t n)
{
	size_t len;
	char *d;

	if (!s)
		return NULL;
	len = strnlen(s, n);
	d = nbe_malloc(len + 1);
	if (!d)
		return NULL;
	memcpy(d, s, len);
	d[len] = '\0';
	return d;
}

char *nbe_strdup(const char *s)
{
	return s ? nbe_strndup(s, strlen(s)) : NULL;
}

void nbe_alloc_trim(void)
{
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}
