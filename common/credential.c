#include "credential.h"

#include "alloc.h"
#include "fsutil.h"
#include "ids.h"
#include "json.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void nbe_credential_clear(struct nbe_credential *c)
{
	if (!c)
		return;
	nbe_free(c->nuvlabox_id);
	nbe_free(c->api_key);
	nbe_free_secret_str(c->api_secret);
	memset(c, 0, sizeof(*c));
}

/* Deletes @doc after wiping its "secret-key". */
static void delete_wiping(cJSON *doc)
{
	cJSON *s = doc ? cJSON_GetObjectItemCaseSensitive(doc, "secret-key") : NULL;

	if (s && cJSON_IsString(s))
		explicit_bzero(s->valuestring, strlen(s->valuestring));
	cJSON_Delete(doc);
}

/* A secret goes into HTTP bodies and files: printable ASCII, bounded. */
static bool secret_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 1024)
		return false;
	for (; *s; s++) {
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	}
	return true;
}

int nbe_credential_parse(const char *text, size_t len, struct nbe_credential *ret,
			 struct nbe_error *err)
{
	cJSON *doc, *key, *secret, *nb;
	int r = 0;

	memset(ret, 0, sizeof(*ret));
	if (!text || strlen(text) != len)
		return nbe_error_set(err, -EBADMSG, "not a credential: not text");
	doc = nbe_json_parse_object(text);
	if (!doc)
		return nbe_error_set(err, -EBADMSG, "not a credential: not a JSON object");
	key = cJSON_GetObjectItemCaseSensitive(doc, "api-key");
	secret = cJSON_GetObjectItemCaseSensitive(doc, "secret-key");
	nb = cJSON_GetObjectItemCaseSensitive(doc, "nuvlabox-id");
	if (!cJSON_IsString(key) || !nbe_href_is(key->valuestring, "credential"))
		r = nbe_error_set(err, -EBADMSG,
				  "not a credential: no \"api-key\" credential/<id>");
	else if (!cJSON_IsString(secret) || !secret_ok(secret->valuestring))
		r = nbe_error_set(err, -EBADMSG,
				  "not a credential: no \"secret-key\" of printable characters");
	else if (nb && !(cJSON_IsString(nb) && nbe_href_is(nb->valuestring, "nuvlabox")))
		r = nbe_error_set(err, -EBADMSG, "not a credential: bad \"nuvlabox-id\"");
	if (r == 0) {
		ret->api_key = nbe_strdup(key->valuestring);
		ret->api_secret = nbe_strdup(secret->valuestring);
		ret->nuvlabox_id = nb ? nbe_strdup(nb->valuestring) : NULL;
		if (!ret->api_key || !ret->api_secret || (nb && !ret->nuvlabox_id)) {
			nbe_credential_clear(ret);
			r = nbe_error_set(err, -ENOMEM, "out of memory");
		}
	}
	delete_wiping(doc);
	return r;
}

int nbe_credential_write(const char *path, const struct nbe_credential *c, struct nbe_error *err)
{
	cJSON *doc = cJSON_CreateObject();
	char *text = NULL;
	int r;

	if (doc &&
	    (!c->nuvlabox_id || cJSON_AddStringToObject(doc, "nuvlabox-id", c->nuvlabox_id)) &&
	    cJSON_AddStringToObject(doc, "api-key", c->api_key) &&
	    cJSON_AddStringToObject(doc, "secret-key", c->api_secret))
		text = cJSON_PrintUnformatted(doc);
	delete_wiping(doc);
	if (!text)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	r = nbe_write_file_atomic(path, text, strlen(text), 0600);
	nbe_free_secret_str(text);
	if (r < 0)
		return nbe_error_set(err, r, "%s: cannot write the credential: %s", path,
				     strerror(-r));
	return 0;
}

int nbe_credential_read(const char *path, struct nbe_credential *ret, struct nbe_error *err)
{
	struct nbe_error perr = { { 0 } };
	struct stat st;
	char *text = NULL;
	size_t len = 0;
	int r;

	memset(ret, 0, sizeof(*ret));
	if (stat(path, &st) != 0) {
		r = -errno;
		return nbe_error_set(err, r, "%s: %s", path, strerror(-r));
	}
	if (st.st_mode & 0077)
		return nbe_error_set(err, -EPERM,
				     "credential %s is readable by group or others (mode %04o); "
				     "refusing it (chmod 600)",
				     path, (unsigned)(st.st_mode & 07777));
	r = nbe_read_file(path, NBE_CREDENTIAL_MAX, &text, &len);
	if (r < 0)
		return nbe_error_set(err, r, "%s: %s", path,
				     r == -EFBIG ? "too large for a credential" : strerror(-r));
	r = nbe_credential_parse(text, len, ret, &perr);
	nbe_free_secret(text, len);
	if (r < 0)
		return nbe_error_set(err, r, "%s: %s", path, perr.msg);
	if (!ret->nuvlabox_id) {
		nbe_credential_clear(ret);
		return nbe_error_set(err, -EBADMSG, "%s: not a credential: no \"nuvlabox-id\"",
				     path);
	}
	return 0;
}
