#include "nuvlaedge.h"

#include "alloc.h"
#include "crypto.h"
#include "fsutil.h"
#include "ids.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

void nbe_nuvlaedge_identity_clear(struct nbe_nuvlaedge_identity *id)
{
	if (!id)
		return;
	nbe_free(id->endpoint);
	nbe_free(id->nuvlabox_id);
	nbe_free(id->api_key);
	nbe_free_secret_str(id->api_secret);
	memset(id, 0, sizeof(*id));
	id->insecure = -1;
}

static const char *str(cJSON *obj, const char *key)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsString(it) && it->valuestring[0] ? it->valuestring : NULL;
}

/* Parses @text as a JSON object; @path names it in messages. */
static int parse_object(const char *text, const char *path, cJSON **ret, struct nbe_error *err)
{
	cJSON *j = cJSON_Parse(text);

	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return nbe_error_set(err, -EINVAL,
				     "%s: not a JSON object (corrupt or partly "
				     "written); left as it is",
				     path);
	}
	*ret = j;
	return 0;
}

/* Reads @dir/@name (its path into @path). -ENOENT when absent. */
static int read_text(const char *dir, const char *name, char **ret, size_t *ret_len, char *path,
		     size_t psize, struct nbe_error *err)
{
	int r;

	snprintf(path, psize, "%s/%s", dir, name);
	r = nbe_read_file(path, NBE_NUVLAEDGE_MAX_FILE, ret, ret_len);
	if (r == -ENOENT)
		return r;
	if (r < 0)
		return nbe_error_set(err, r, "%s: %s", path,
				     r == -EFBIG ? "too large" : strerror(-r));
	return 0;
}

/* Decodes irs2 into "<key>:<secret>" and splits it. */
static int decode_irs2(const char *irs2, const char *nuvlabox_id, char **ret_key, char **ret_secret,
		       struct nbe_error *err)
{
	const char *uuid =
		strncmp(nuvlabox_id, "nuvlabox/", 9) == 0 ? nuvlabox_id + 9 : nuvlabox_id;
	unsigned char key[32], *raw = NULL, *plain = NULL;
	size_t rawlen, plen;
	char seed[64], *colon;
	int r;

	snprintf(seed, sizeof(seed), "%s:", uuid);
	nbe_crypto_sha256(seed, strlen(seed), key);
	r = nbe_base64_decode(irs2, strlen(irs2), &raw, &rawlen);
	if (r < 0)
		return nbe_error_set(err, r, "irs2 is not base64");
	if (rawlen < 32) {
		nbe_free(raw);
		return nbe_error_set(err, -EBADMSG, "irs2 is too short");
	}
	r = nbe_crypto_aes256cbc_decrypt(key, raw, raw + 16, rawlen - 16, &plain, &plen);
	nbe_free(raw);
	explicit_bzero(key, sizeof(key));
	if (r < 0)
		return nbe_error_set(err, r, "irs2 does not decrypt with the key of %s",
				     nuvlabox_id);
	colon = memchr(plain, ':', plen);
	if (!colon || memchr(plain, '\0', plen)) {
		nbe_free_secret(plain, plen);
		return nbe_error_set(err, -EBADMSG, "irs2 does not hold <key>:<secret>");
	}
	*ret_key = nbe_strndup((char *)plain, (size_t)(colon - (char *)plain));
	*ret_secret = nbe_strndup(colon + 1, plen - (size_t)(colon + 1 - (char *)plain));
	nbe_free_secret(plain, plen);
	if (!*ret_key || !*ret_secret) {
		nbe_free(*ret_key);
		nbe_free_secret_str(*ret_secret);
		return nbe_error_set(err, -ENOMEM, "out of memory");
	}
	return 0;
}

static int from_session(cJSON *j, const char *path, struct nbe_nuvlaedge_identity *id,
			struct nbe_error *err)
{
	const char *uuid = str(j, "nuvlaedge-uuid"), *endpoint = str(j, "endpoint");
	cJSON *creds = cJSON_GetObjectItemCaseSensitive(j, "credentials");
	cJSON *insecure = cJSON_GetObjectItemCaseSensitive(j, "insecure");
	const char *irs2 = str(j, "irs2");
	char *key = NULL, *secret = NULL;
	int r;

	if (!uuid)
		return nbe_error_set(err, -EINVAL, "%s: no nuvlaedge-uuid", path);
	id->nuvlabox_id = nbe_nuvlabox_id_normalize(uuid);
	if (!id->nuvlabox_id)
		return nbe_error_set(err, -EINVAL,
				     "%s: nuvlaedge-uuid '%.64s' is not a nuvlabox id", path, uuid);
	if (endpoint && !(id->endpoint = nbe_strdup(endpoint)))
		return nbe_error_set(err, -ENOMEM, "out of memory");
	if (cJSON_IsBool(insecure))
		id->insecure = cJSON_IsTrue(insecure);
	if (cJSON_IsObject(creds) && str(creds, "key") && str(creds, "secret")) {
		key = nbe_strdup(str(creds, "key"));
		secret = nbe_strdup(str(creds, "secret"));
		if (!key || !secret) {
			nbe_free(key);
			nbe_free_secret_str(secret);
			return nbe_error_set(err, -ENOMEM, "out of memory");
		}
	} else if (irs2) {
		struct nbe_error e2 = { { 0 } };
		r = decode_irs2(irs2, id->nuvlabox_id, &key, &secret, &e2);
		if (r < 0)
			return nbe_error_set(err, r, "%s: %s", path, e2.msg);
	} else {
		return 0; /* not activated yet: an identity without a credential */
	}
	if (!nbe_href_is(key, "credential")) {
		nbe_free(key);
		nbe_free_secret_str(secret);
		return nbe_error_set(err, -EINVAL, "%s: the api key is not credential/<uuid>",
				     path);
	}
	id->api_key = key;
	id->api_secret = secret;
	return 0;
}

static int from_legacy(const char *context, const char *activated, const char *dir,
		       struct nbe_nuvlaedge_identity *id, struct nbe_error *err)
{
	char path[600];
	cJSON *act = NULL, *ctx = NULL;
	const char *k, *s, *nb;
	int r;

	if (context) {
		snprintf(path, sizeof(path), "%s/.context", dir);
		r = parse_object(context, path, &ctx, err);
		if (r < 0)
			return r;
		nb = str(ctx, "id");
		if (nb && !(id->nuvlabox_id = nbe_nuvlabox_id_normalize(nb))) {
			/* the message quotes @nb: made before @ctx goes */
			r = nbe_error_set(err, -EINVAL, "%s: id '%.64s' is not a nuvlabox id", path,
					  nb);
			cJSON_Delete(ctx);
			return r;
		}
		cJSON_Delete(ctx);
		snprintf(id->source, sizeof(id->source), "%s", path);
	}
	if (activated) {
		snprintf(path, sizeof(path), "%s/.activated", dir);
		r = parse_object(activated, path, &act, err);
		if (r < 0)
			return r;
		k = str(act, "api-key");
		s = str(act, "secret-key");
		if (!k || !s || !nbe_href_is(k, "credential")) {
			cJSON_Delete(act);
			return nbe_error_set(err, -EINVAL, "%s: no api-key and secret-key", path);
		}
		id->api_key = nbe_strdup(k);
		id->api_secret = nbe_strdup(s);
		cJSON_Delete(act);
		if (!id->api_key || !id->api_secret)
			return nbe_error_set(err, -ENOMEM, "out of memory");
		snprintf(id->source, sizeof(id->source), "%s", path);
	}
	return context || activated ? 0 : -ENOENT;
}

/* Hands @id to @ret on success, else clears it. */
static int finish(int r, struct nbe_nuvlaedge_identity *id, struct nbe_nuvlaedge_identity *ret)
{
	if (r < 0) {
		nbe_nuvlaedge_identity_clear(id);
		return r;
	}
	*ret = *id;
	return 0;
}

int nbe_nuvlaedge_parse_session(const char *text, const char *path,
				struct nbe_nuvlaedge_identity *ret, struct nbe_error *err)
{
	struct nbe_nuvlaedge_identity id = { .insecure = -1 };
	cJSON *j = NULL;
	int r = parse_object(text, path, &j, err);

	if (r == 0) {
		snprintf(id.source, sizeof(id.source), "%s", path);
		r = from_session(j, path, &id, err);
		cJSON_Delete(j);
	}
	return finish(r, &id, ret);
}

int nbe_nuvlaedge_parse_legacy(const char *context, const char *activated, const char *dir,
			       struct nbe_nuvlaedge_identity *ret, struct nbe_error *err)
{
	struct nbe_nuvlaedge_identity id = { .insecure = -1 };

	return finish(from_legacy(context, activated, dir, &id, err), &id, ret);
}

int nbe_nuvlaedge_read(const char *dir, struct nbe_nuvlaedge_identity *ret, struct nbe_error *err)
{
	char path[600], *text = NULL, *context = NULL, *activated = NULL;
	size_t len = 0, clen = 0, alen = 0;
	int r;

	r = read_text(dir, NBE_NUVLAEDGE_SESSION, &text, &len, path, sizeof(path), err);
	if (r == 0) {
		r = nbe_nuvlaedge_parse_session(text, path, ret, err);
		nbe_free_secret(text, len);
		return r;
	}
	if (r != -ENOENT)
		return r;
	r = read_text(dir, ".context", &context, &clen, path, sizeof(path), err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = read_text(dir, ".activated", &activated, &alen, path, sizeof(path), err);
	if (r < 0 && r != -ENOENT)
		goto out;
	r = nbe_nuvlaedge_parse_legacy(context, activated, dir, ret, err);
	if (r == -ENOENT)
		nbe_error_set(err, r, "%s: no NuvlaEdge session file (%s) nor .activated", dir,
			      NBE_NUVLAEDGE_SESSION);
out:
	nbe_free_secret(context, clen);
	nbe_free_secret(activated, alen);
	return r;
}
