/*
 * random: bytes from the kernel's CSPRNG (getrandom(2)).
 */
#ifndef NBE_PLATFORM_RANDOM_H
#define NBE_PLATFORM_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* Fills @buf with @len random bytes. Returns 0 or -errno. */
int nbe_random_bytes(void *buf, size_t len);

/* A uniformly distributed value in [0, bound) (bound > 0); 0 on failure. */
uint64_t nbe_random_below(uint64_t bound);

#endif
