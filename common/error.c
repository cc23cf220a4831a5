#include "error.h"

#include <stdarg.h>
#include <stdio.h>

/* (the name in parentheses: error.h defines a macro of it for the analyzer) */
int(nbe_error_set)(struct nbe_error *err, int ret, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return ret;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return ret;
}
