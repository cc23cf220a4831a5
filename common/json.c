#include "json.h"

#include "alloc.h"

#include <errno.h>

void nbe_json_install_hooks(void)
{
	cJSON_Hooks hooks = { .malloc_fn = nbe_malloc, .free_fn = nbe_free };

	cJSON_InitHooks(&hooks);
}

int nbe_json_add_str_or_null(cJSON *obj, const char *key, const char *value)
{
	cJSON *it = value ? cJSON_CreateString(value) : cJSON_CreateNull();

	if (!it)
		return -ENOMEM;
	if (!cJSON_AddItemToObject(obj, key, it)) {
		cJSON_Delete(it);
		return -ENOMEM;
	}
	return 0;
}

cJSON *nbe_json_parse_object(const char *text)
{
	cJSON *obj = cJSON_Parse(text);

	if (obj && !cJSON_IsObject(obj)) {
		cJSON_Delete(obj);
		return NULL;
	}
	return obj;
}
