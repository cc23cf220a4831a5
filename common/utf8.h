/*
 * utf8: strict UTF-8 validation (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF, no NUL). Everything a producer gives us passes
 * through it before it reaches the buffer or the wire.
 */
#ifndef NBE_UTF8_H
#define NBE_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Whether @len bytes at @s are valid UTF-8 without NUL. On failure
 * *ret_offset (may be NULL) is the offset of the first bad byte. */
bool nbe_utf8_valid(const char *s, size_t len, size_t *ret_offset);

#endif
