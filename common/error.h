/*
 * error: the human-readable half of an error. Functions return 0 or a
 * negative errno; when they fail they may also describe what and where in a
 * caller-provided struct nbe_error, which the agent logs or prints once.
 * common/ and platform/ never log.
 */
#ifndef NBE_ERROR_H
#define NBE_ERROR_H

#define NBE_ERROR_MAX 512

struct nbe_error {
	char msg[NBE_ERROR_MAX];
};

/* Formats into @err (may be NULL). Always returns @ret, so callers can write
 * `return nbe_error_set(err, -EINVAL, "...")`. */
int nbe_error_set(struct nbe_error *err, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#ifdef __clang_analyzer__
/* The analyzer does not look into variadic calls: tell it the result is @ret
 * (or it reports out-values of failed calls as uninitialised). */
#define nbe_error_set(err, ret, ...) (nbe_error_set((err), (ret), __VA_ARGS__), (ret))
#endif

#endif
