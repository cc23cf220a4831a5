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

void nbe_free_secret(void *p, size_t n)
{
	if (!p)
		return;
	explicit_bzero(p, n);
	nbe_free(p);
}

void nbe_free_secret_str(char *s)
{
	if (s)
		nbe_free_secret(s, strlen(s));
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

/* Set by the sanitizer builds' environment hook (NBE_ALLOC_SPARE_LIBS). */
static int spare_libs;

void *nbe_lib_malloc(size_t size)
{
	if (!spare_libs)
		return nbe_malloc(size);
	alloc_count++;
	return counted(malloc(size ? size : 1));
}

void *nbe_lib_calloc(size_t n, size_t size)
{
	if (!spare_libs)
		return nbe_calloc(n, size);
	alloc_count++;
	return counted(calloc(n ? n : 1, size ? size : 1));
}

void *nbe_lib_realloc(void *p, size_t size)
{
	if (!spare_libs)
		return nbe_realloc(p, size);
	alloc_count++;
	return counted(realloc(p, size ? size : 1));
}

char *nbe_lib_strdup(const char *s)
{
	char *d;

	if (!spare_libs)
		return nbe_strdup(s);
	alloc_count++;
	d = s ? strdup(s) : NULL;
	return s ? counted(d) : NULL;
}

void nbe_alloc_trim(void)
{
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

#ifdef NBE_ALLOC_ENV_HOOK
/*
 * Sanitizer builds only (NBE_SANITIZE): the real programs take the test
 * hook from the environment, so a sweep can make the N-th allocation of a
 * whole `flush` fail (tests/fault/test_alloc.py). NBE_ALLOC_FAIL_AT=N
 * (NBE_ALLOC_FAIL_PERSISTENT=1: and every later one); NBE_ALLOC_REPORT=1
 * prints the number of allocations made at exit; NBE_ALLOC_SPARE_LIBS=1
 * counts the allocations of the libraries given nbe_lib_*() but never
 * fails them.
 */
#include <stdio.h>

static int alloc_report;

__attribute__((constructor)) static void alloc_env_hook(void)
{
	const char *n = getenv("NBE_ALLOC_FAIL_AT");

	alloc_report = getenv("NBE_ALLOC_REPORT") != NULL;
	spare_libs = getenv("NBE_ALLOC_SPARE_LIBS") != NULL;
	if (n && *n)
		nbe_alloc_fail_at(strtoul(n, NULL, 10),
				  getenv("NBE_ALLOC_FAIL_PERSISTENT") != NULL);
}

__attribute__((destructor)) static void alloc_env_report(void)
{
	if (alloc_report)
		fprintf(stderr, "nbe-alloc: %lu allocations\n", alloc_count);
}
#endif
