#include "job.h"

#include "alloc.h"
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *const states[] = { "QUEUED", "RUNNING", "SUCCESS", "FAILED", "CANCELED" };

bool nbe_job_state_final(const char *state)
{
	return strcmp(state, "SUCCESS") == 0 || strcmp(state, "FAILED") == 0 ||
	       strcmp(state, "CANCELED") == 0;
}

/* Parses @body (with no NUL inside) as a JSON object, telling a memory
 * failure from bad input. */
static int parse_object(const char *body, size_t len, cJSON **ret)
{
	unsigned long before = nbe_alloc_failures();

	*ret = NULL;
	if (!body || strlen(body) != len)
		return -EBADMSG;
	*ret = nbe_json_parse_object(body);
	if (*ret)
		return 0;
	return nbe_alloc_failures() != before ? -ENOMEM : -EBADMSG;
}

static bool action_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > NBE_JOB_ACTION_MAX)
		return false;
	for (; *s; s++) {
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' ||
		      *s == '-'))
			return false;
	}
	return true;
}

int nbe_job_parse(const char *body, size_t len, struct nbe_job_doc *ret, struct nbe_error *err)
{
	cJSON *doc, *action, *state, *target, *aff, *it;
	int r;

	memset(ret, 0, sizeof(*ret));
	r = parse_object(body, len, &doc);
	if (r < 0)
		return nbe_error_set(err, r, r == -ENOMEM ? "out of memory" : "not a JSON object");
	action = cJSON_GetObjectItemCaseSensitive(doc, "action");
	state = cJSON_GetObjectItemCaseSensitive(doc, "state");
	if (!cJSON_IsString(action) || !action_ok(action->valuestring)) {
		r = nbe_error_set(err, -EBADMSG, "not a job document: no action");
		goto out;
	}
	r = -EBADMSG;
	for (size_t i = 0; cJSON_IsString(state) && i < sizeof(states) / sizeof(states[0]); i++) {
		if (strcmp(state->valuestring, states[i]) == 0)
			r = 0;
	}
	if (r < 0) {
		nbe_error_set(err, r, "not a job document: no state of the five");
		goto out;
	}
	snprintf(ret->action, sizeof(ret->action), "%s", action->valuestring);
	snprintf(ret->state, sizeof(ret->state), "%s", state->valuestring);
	target = cJSON_GetObjectItemCaseSensitive(doc, "target-resource");
	ret->has_target = target != NULL;
	target = cJSON_GetObjectItemCaseSensitive(target, "href");
	if (cJSON_IsString(target) && nbe_href_valid(target->valuestring, true))
		snprintf(ret->target, sizeof(ret->target), "%s", target->valuestring);
	aff = cJSON_GetObjectItemCaseSensitive(doc, "affected-resources");
	if (!cJSON_IsArray(aff))
		aff = NULL;
	cJSON_ArrayForEach(it, aff)
	{
		cJSON *href = cJSON_GetObjectItemCaseSensitive(it, "href");
		if (ret->naffected < NBE_JOB_AFFECTED_MAX && cJSON_IsString(href) &&
		    nbe_href_valid(href->valuestring, true))
			snprintf(ret->affected[ret->naffected++], sizeof(ret->affected[0]), "%s",
				 href->valuestring);
	}
out:
	cJSON_Delete(doc);
	return r;
}

/* The "public-key" string of member @name of @ctx, or NULL. */
static const char *key_of(cJSON *ctx, const char *name)
{
	cJSON *c = cJSON_GetObjectItemCaseSensitive(ctx, name);
	cJSON *pk = cJSON_IsObject(c) ? cJSON_GetObjectItemCaseSensitive(c, "public-key") : NULL;

	return pk && cJSON_IsString(pk) ? pk->valuestring : NULL;
}

int nbe_job_context_key(const char *body, size_t len, const struct nbe_job_doc *job,
			char cred[NBE_HREF_MAX + 1], char **ret_key)
{
	const char *name = NULL, *key = NULL;
	cJSON *ctx, *it, *list;
	int r;

	*ret_key = NULL;
	cred[0] = '\0';
	r = parse_object(body, len, &ctx);
	if (r < 0)
		return r;
	for (unsigned i = 0; !key && job && i < job->naffected; i++) {
		if (nbe_href_is(job->affected[i], "credential") &&
		    (key = key_of(ctx, job->affected[i])) != NULL)
			name = job->affected[i];
	}
	list = key ? NULL : ctx;
	cJSON_ArrayForEach(it, list)
	{
		if (it->string && nbe_href_is(it->string, "credential") &&
		    (key = key_of(ctx, it->string)) != NULL) {
			name = it->string;
			break;
		}
	}
	if (!key) {
		r = -ENOENT;
	} else {
		snprintf(cred, NBE_HREF_MAX + 1, "%s", name);
		*ret_key = nbe_strdup(key);
		r = *ret_key ? 0 : -ENOMEM;
	}
	cJSON_Delete(ctx);
	return r;
}

int nbe_heartbeat_jobs(const char *body, size_t len, char (*ids)[NBE_HREF_MAX + 1], unsigned max,
		       unsigned *ret_n)
{
	cJSON *doc, *jobs, *it;
	unsigned n = 0;
	int r;

	*ret_n = 0;
	r = parse_object(body, len, &doc);
	if (r < 0)
		return r;
	jobs = cJSON_GetObjectItemCaseSensitive(doc, "jobs");
	if (!cJSON_IsArray(jobs))
		jobs = NULL;
	cJSON_ArrayForEach(it, jobs)
	{
		bool dup = false;
		if (n == max)
			break;
		if (!cJSON_IsString(it) || !nbe_href_is(it->valuestring, "job"))
			continue;
		for (unsigned i = 0; i < n && !dup; i++)
			dup = strcmp(ids[i], it->valuestring) == 0;
		if (!dup)
			snprintf(ids[n++], NBE_HREF_MAX + 1, "%s", it->valuestring);
	}
	cJSON_Delete(doc);
	*ret_n = n;
	return 0;
}
