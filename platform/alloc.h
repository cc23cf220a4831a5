/*
 * alloc: the one place every allocation of the agent goes through, so tests
 * can make the N-th allocation fail (see nbe_alloc_fail_at()) and prove each
 * failure path: no crash, no leak, a clear error.
 *
 * cJSON is pointed at these functions too (nbe_json_install_hooks() in common).
 */
#ifndef NBE_PLATFORM_ALLOC_H
#define NBE_PLATFORM_ALLOC_H

#include <stddef.h>

void *nbe_malloc(size_t size);
void *nbe_calloc(size_t n, size_t size);
void *nbe_realloc(void *p, size_t size);
/* Accepts NULL. */
void nbe_free(void *p);
/*
 * For memory that held a secret (an api secret, a file or an HTTP body with
 * one in it): wipes @n bytes at @p with explicit_bzero(), which the compiler
 * may not drop as a dead store, then frees it. Accepts NULL. The one place
 * the agent wipes and frees: a secret never lingers in freed memory.
 */
void nbe_free_secret(void *p, size_t n);
/* The same for a NUL-terminated string, wiped up to its terminator. */
void nbe_free_secret_str(char *s);
/* Copies of strings; NULL in gives NULL out (not an error). */
char *nbe_strdup(const char *s);

/*
 * The allocator given to libcurl: nbe_malloc() & co., except that a sweep
 * may spare them (NBE_ALLOC_SPARE_LIBS, sanitizer builds only): libcurl
 * 7.88.1 frees twice on some of its own out-of-memory paths, which the
 * agent cannot mend. Free with nbe_free().
 */
void *nbe_lib_malloc(size_t size);
void *nbe_lib_calloc(size_t n, size_t size);
void *nbe_lib_realloc(void *p, size_t size);
char *nbe_lib_strdup(const char *s);
char *nbe_strndup(const char *s, size_t n);

/*
 * The number of allocations that have failed so far (injected or real).
 * Lets a caller tell "out of memory" from "bad input" when a library such as
 * cJSON reports both the same way: compare before and after the call.
 */
unsigned long nbe_alloc_failures(void);

/*
 * Test hook: make the @n-th allocation from now on fail (1 = the next one);
 * with @persistent every later one fails too. 0 disables. Returns the number
 * of allocations made since the last call, so a sweep knows when to stop.
 */
unsigned long nbe_alloc_fail_at(unsigned long n, int persistent);

/*
 * Gives the C library's free heap memory back to the kernel (glibc's
 * malloc_trim(); a no-op elsewhere). For a long-lived process going idle
 * after a burst: freed memory otherwise stays resident at its peak.
 */
void nbe_alloc_trim(void);

#endif
