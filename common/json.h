/*
 * json: small helpers around cJSON shared by the modules that read or write
 * JSON (wire format, buffer, config output).
 */
#ifndef NBE_JSON_H
#define NBE_JSON_H

#include <cjson/cJSON.h>

/* Routes cJSON's allocations through nbe_malloc()/nbe_free(); call once at
 * program start. */
void nbe_json_install_hooks(void);

/* Adds @key with the string @value, or null when @value is NULL. Returns 0 or -ENOMEM. */
int nbe_json_add_str_or_null(cJSON *obj, const char *key, const char *value);

/* Parses @text (NUL-terminated) and returns the object, or NULL (not JSON,
 * not an object, or out of memory). */
cJSON *nbe_json_parse_object(const char *text);

#endif
