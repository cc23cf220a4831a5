/*
 * fuzz: what the libFuzzer harnesses share. Each harness file defines
 * LLVMFuzzerTestOneInput() and nothing else public; the same file is built
 * into a libFuzzer program (NBE_FUZZ=ON, clang) and into a replay program
 * (replay.c) that feeds it every committed seed and regression input, so a
 * crash found once is checked in every CI lane.
 *
 * A harness runs its input twice (fuzz_run()): once normally, then with one
 * allocation failing, chosen from the input, so the out-of-memory paths of
 * the parsers are fuzzed too. It aborts (FUZZ_CHECK) when a parser breaks a
 * promise of its header: -ENOMEM without an allocation failing, an output
 * that is not what the header says.
 */
#ifndef NBE_FUZZ_H
#define NBE_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One run of a harness over @data; @oom: an allocation may have failed. */
typedef void (*fuzz_one_fn)(const uint8_t *data, size_t size, bool oom);

/* Runs @one over @data normally, then again with one allocation failing. */
void fuzz_run(const uint8_t *data, size_t size, fuzz_one_fn one);

/* A copy of @data with a NUL after it (free()); aborts when out of memory. */
char *fuzz_strndup(const uint8_t *data, size_t size);

/* Whether @s is one line of printable text (no byte below 0x20, no DEL). */
bool fuzz_printable(const char *s);

void fuzz_fail(const char *file, int line, const char *what) __attribute__((noreturn));

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			fuzz_fail(__FILE__, __LINE__, #cond);                                      \
	} while (0)

#endif
