#include "nuvla.h"

#include "alloc.h"
#include "fsutil.h"
#include "ids.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#define COOKIE_FILE_MAX (64 * 1024)

/*
 * What a handle is set up for: a handle is reused as it is only for a
 * request of the same kind (POST or GET); any other change of method, and
 * every request of another method (PUT, ...), gets a fresh handle. Not
 * curl_easy_reset(): Debian's libcurl 7.88.1 (with the CVE-2023-38546 fix)
 * loses the CURLOPT_COOKIEFILE list there, a leak per reset.
 */
enum xfer_kind { KIND_NONE, KIND_POST, KIND_GET, KIND_OTHER };

/*
 * One request, and between requests an idle handle in the client's pool
 * with every option that does not change from one request to the next.
 */
struct transfer {
	struct nbe_nuvla *n;
	CURL *easy;
	enum xfer_kind kind;
	bool attached; /* added to n->multi */
	char *path;    /* the path the handle's URL was set for, or NULL */
	char *req_body;
	size_t req_len, req_cap, req_off; /* how much of the body libcurl has read */
	char *resp;
	size_t resp_len, resp_cap;
	bool too_big;
	int64_t retry_after_s;
	nbe_nuvla_done_fn done;
	void *userdata;
	char errbuf[CURL_ERROR_SIZE];
	struct transfer *next;
};

struct nbe_nuvla {
	CURLM *multi;
	CURLSH *share;
	char *endpoint;
	char *ca_file, *client_cert, *client_key, *cookie_file, *user_agent;
	bool insecure;
	int64_t connect_timeout_ms, request_timeout_ms;
	size_t max_body;
	long max_in_flight;
	int in_flight;
	bool has_session;
	struct transfer *transfers;
	struct transfer *idle; /* handles ready for reuse, at most max_in_flight */
	long nidle;
	struct curl_slist *hdr_plain, *hdr_json; /* the request headers, built once */

	bool poisoned; /* a request went out and its fate is unknown */
	int wake_fds[4];
	unsigned nwake;
	nbe_nuvla_interrupt_fn interrupt;
	void *interrupt_userdata;
};

static bool curl_ready;

void nbe_http_response_clear(struct nbe_http_response *r)
{
	if (!r)
		return;
	nbe_free(r->body);
	memset(r, 0, sizeof(*r));
	r->retry_after_s = -1;
}

const char *nbe_nuvla_tls_library(void)
{
	const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);

	return v && v->ssl_version ? v->ssl_version : "none";
}

static int global_init(void)
{
	if (curl_ready)
		return 0;
	/* curl's own allocations go through ours, so failure sweeps reach them */
	if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, nbe_lib_malloc, nbe_free, nbe_lib_realloc,
				 nbe_lib_strdup, nbe_lib_calloc) != CURLE_OK)
		return -ENOMEM;
	curl_ready = true;
	return 0;
}

long nbe_nuvla_parse_error(const char *body, char *out, size_t out_size)
{
	cJSON *j, *status, *msg;
	long s = -1;

	if (!body)
		return -1;
	j = cJSON_Parse(body);
	if (!cJSON_IsObject(j))
		goto out;
	status = cJSON_GetObjectItemCaseSensitive(j, "status");
	msg = cJSON_GetObjectItemCaseSensitive(j, "message");
	/* an HTTP status: a whole number 100..599 (a cast of any other double
	 * to long, 1e300 say, is undefined) */
	if (cJSON_IsNumber(status) && cJSON_IsString(msg) && status->valuedouble >= 100 &&
	    status->valuedouble <= 599 && status->valuedouble == (double)status->valueint) {
		s = status->valueint;
		snprintf(out, out_size, "%s", msg->valuestring);
		/* one printable line: it goes into logs, status and sd_notify */
		for (char *p = out; *p; p++) {
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				*p = ' ';
		}
	}
out:
	cJSON_Delete(j);
	return s;
}

char *nbe_nuvla_resource_id(const char *body)
{
	cJSON *j = body ? cJSON_Parse(body) : NULL, *id;
	char *ret = NULL;

	if (!cJSON_IsObject(j))
		goto out;
	id = cJSON_GetObjectItemCaseSensitive(j, "resource-id");
	if (!cJSON_IsString(id))
		id = cJSON_GetObjectItemCaseSensitive(j, "id");
	if (cJSON_IsString(id))
		ret = nbe_strdup(id->valuestring);
out:
	cJSON_Delete(j);
	return ret;
}

int nbe_nuvla_parse_nuvlabox(const char *body, char *state, size_t state_size, char **ret_owner)
{
	cJSON *doc = body ? cJSON_Parse(body) : NULL;
	cJSON *owner = cJSON_GetObjectItemCaseSensitive(doc, "owner");
	cJSON *st = cJSON_GetObjectItemCaseSensitive(doc, "state");
	char *o = NULL;

	if (cJSON_IsString(st) && strlen(st->valuestring) < state_size)
		snprintf(state, state_size, "%s", st->valuestring);
	if (cJSON_IsString(owner) && nbe_principal_valid(owner->valuestring)) {
		o = nbe_strdup(owner->valuestring);
		if (!o) {
			cJSON_Delete(doc);
			return -ENOMEM;
		}
	}
	cJSON_Delete(doc);
	*ret_owner = o;
	return 0;
}

int nbe_nuvla_parse_search(const char *body, const char *const *tags, size_t n, char **ret_ids)
{
	cJSON *doc = body ? cJSON_Parse(body) : NULL, *it, *t;
	cJSON *list = cJSON_GetObjectItemCaseSensitive(doc, "resources");

	if (!cJSON_IsArray(list)) {
		cJSON_Delete(doc);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		ret_ids[i] = NULL;
		cJSON_ArrayForEach(it, list)
		{
			cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
			bool match = false;

			cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(it, "tags"))
			{
				if (cJSON_IsString(t) && strcmp(t->valuestring, tags[i]) == 0)
					match = true;
			}
			if (!match || !cJSON_IsString(id) || !nbe_href_is(id->valuestring, "event"))
				continue;
			ret_ids[i] = nbe_strdup(id->valuestring);
			if (!ret_ids[i]) {
				for (size_t k = 0; k < i; k++) {
					nbe_free(ret_ids[k]);
					ret_ids[k] = NULL;
				}
				cJSON_Delete(doc);
				return -ENOMEM;
			}
			break;
		}
	}
	cJSON_Delete(doc);
	return 0;
}

/* A gateway's reason: the <title> of an HTML page, else the first line. */
static void gateway_reason(const char *body, char *out, size_t size)
{
	const char *t = body ? strstr(body, "<title>") : NULL;
	size_t n;

	if (t) {
		const char *e = strstr(t, "</title>");
		t += 7;
		n = e ? (size_t)(e - t) : strcspn(t, "\r\n");
	} else if (body) {
		t = body;
		n = strcspn(t, "\r\n");
	} else {
		t = "";
		n = 0;
	}
	if (n > 200)
		n = 200;
	snprintf(out, size, "%.*s", (int)n, t);
	/* keep it one printable line */
	for (char *p = out; *p; p++) {
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	}
}

/* The request body, handed to libcurl piece by piece. */
static size_t on_read(char *buf, size_t size, size_t nmemb, void *userdata)
{
	struct transfer *t = userdata;
	size_t n = size * nmemb, left = t->req_len - t->req_off;

	if (n > left)
		n = left;
	memcpy(buf, t->req_body + t->req_off, n);
	t->req_off += n;
	return n;
}

/*
 * libcurl rewinds a body to send it again, for instance on a fresh
 * connection after a reused one died ("retrying"). Once any of it went out
 * that would be a second POST the agent never sees: refuse, and the
 * transfer fails with CURLE_SEND_FAIL_REWIND (in doubt, looked up later).
 */
static int on_seek(void *userdata, curl_off_t offset, int origin)
{
	struct transfer *t = userdata;

	if (origin == SEEK_SET && offset == 0 && t->req_off == 0)
		return CURL_SEEKFUNC_OK;
	return CURL_SEEKFUNC_FAIL;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct transfer *t = userdata;
	size_t n = size * nmemb;

	if (t->resp_len + n > t->n->max_body) {
		t->too_big = true;
		return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
	}
	if (t->resp_len + n + 1 > t->resp_cap) {
		size_t cap = t->resp_cap ? t->resp_cap : 1024;
		char *p;
		while (cap < t->resp_len + n + 1)
			cap *= 2;
		p = nbe_realloc(t->resp, cap);
		if (!p)
			return 0;
		t->resp = p;
		t->resp_cap = cap;
	}
	memcpy(t->resp + t->resp_len, data, n);
	t->resp_len += n;
	t->resp[t->resp_len] = '\0';
	return n;
}

int64_t nbe_nuvla_parse_retry_after(const char *line, size_t n, int64_t now_s)
{
	char value[128];
	const char *v;
	size_t vlen;
	int64_t s = -1;

	if (n < 12 || strncasecmp(line, "Retry-After:", 12) != 0)
		return -1;
	v = line + 12;
	vlen = n - 12;
	while (vlen && (*v == ' ' || *v == '\t')) {
		v++;
		vlen--;
	}
	while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
		vlen--;
	if (vlen == 0 || vlen >= sizeof(value))
		return -1;
	memcpy(value, v, vlen);
	value[vlen] = '\0';
	if (strspn(value, "0123456789") == vlen) {
		s = vlen > 7 ? NBE_RETRY_AFTER_MAX_S : strtoll(value, NULL, 10);
	} else {
		time_t when = curl_getdate(value, NULL);
		if (when > 0)
			s = when > now_s ? (int64_t)when - now_s : 0;
	}
	return s > NBE_RETRY_AFTER_MAX_S ? NBE_RETRY_AFTER_MAX_S : s;
}

/* Picks Retry-After (seconds or an HTTP date) out of the response headers. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct transfer *t = userdata;
	size_t n = size * nmemb;
	int64_t s = nbe_nuvla_parse_retry_after(data, n, (int64_t)time(NULL));

	if (s >= 0)
		t->retry_after_s = s;
	return n;
}

static bool connect_phase_error(CURLcode c)
{
	switch (c) {
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CLIENTCERT: /* the server refused our certificate in the handshake */
		return true;
	default:
		return false;
	}
}

/* Turns a finished transfer into a classified response. */
static void classify(struct transfer *t, CURLcode result, struct nbe_http_response *r)
{
	curl_off_t pretransfer = 0;
	long status = 0;

	nbe_http_response_clear(r);
	r->retry_after_s = t->retry_after_s;
	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(t->easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
	r->status = status;

	if (result != CURLE_OK) {
		const char *detail = t->errbuf[0] ? t->errbuf : curl_easy_strerror(result);
		if (result == CURLE_SEND_FAIL_REWIND) {
			r->cls = NBE_HTTP_IN_DOUBT;
			snprintf(r->message, sizeof(r->message),
				 "the connection died after the request went out (not re-sent)");
		} else if (t->too_big) {
			r->cls = NBE_HTTP_IN_DOUBT;
			snprintf(r->message, sizeof(r->message),
				 "response larger than %zu bytes (HTTP %ld)", t->n->max_body,
				 status);
		} else if (connect_phase_error(result) || pretransfer == 0) {
			r->cls = NBE_HTTP_CONNECT;
			snprintf(r->message, sizeof(r->message), "%s", detail);
		} else {
			r->cls = NBE_HTTP_IN_DOUBT;
			snprintf(r->message, sizeof(r->message), "%s", detail);
		}
		return;
	}
	r->body = t->resp;
	r->body_len = t->resp_len;
	t->resp = NULL;
	nbe_nuvla_classify_answer(status, r);
}

void nbe_nuvla_classify_answer(long status, struct nbe_http_response *r)
{
	char msg[400];
	long s;

	r->status = status;
	if (status >= 200 && status < 300) {
		r->cls = NBE_HTTP_OK;
		snprintf(r->message, sizeof(r->message), "HTTP %ld", status);
		return;
	}
	s = nbe_nuvla_parse_error(r->body, msg, sizeof(msg));
	/* another JSON error (a gateway's) is not Nuvla's: its status must be
	 * the answer's */
	if (s == status) {
		r->cls = NBE_HTTP_NUVLA_ERROR;
		snprintf(r->message, sizeof(r->message), "%ld %s", status, msg);
	} else {
		r->cls = NBE_HTTP_GATEWAY_ERROR;
		gateway_reason(r->body, msg, sizeof(msg));
		snprintf(r->message, sizeof(r->message), "HTTP %ld from the gateway: %s", status,
			 msg[0] ? msg : "(no body)");
	}
}

/*
 * Every socket closes with a reset that discards what the kernel still
 * holds: a request that timed out on a dead link must not be delivered
 * minutes later, after its lookup said "not there" and it was sent again.
 */
static int on_sockopt(void *userdata, curl_socket_t fd, curlsocktype purpose)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };

	(void)userdata;
	(void)purpose;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	/* a child the agent starts (a job's command) must not inherit it */
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	return CURL_SOCKOPT_OK;
}

static int configure_multi(struct nbe_nuvla *n)
{
	if (curl_multi_setopt(n->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) !=
		    CURLM_OK ||
	    curl_multi_setopt(n->multi, CURLMOPT_MAX_HOST_CONNECTIONS, n->max_in_flight) !=
		    CURLM_OK ||
	    curl_multi_setopt(n->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, n->max_in_flight) !=
		    CURLM_OK)
		return -EINVAL;
	return 0;
}

/* Wipes and forgets the request body (the login body holds the api secret). */
static void wipe_body(struct transfer *t)
{
	if (t->req_body)
		explicit_bzero(t->req_body, t->req_cap);
	t->req_len = t->req_off = 0;
}

static void transfer_free(struct transfer *t)
{
	if (!t)
		return;
	if (t->easy) {
		if (t->attached)
			curl_multi_remove_handle(t->n->multi, t->easy);
		curl_easy_cleanup(t->easy);
	}
	nbe_free_secret(t->req_body, t->req_cap); /* the login body holds the api secret */
	nbe_free(t->path);
	nbe_free(t->resp);
	nbe_free(t);
}

/* Frees the idle handles: nothing of them is left to a later request. */
static void free_idle(struct nbe_nuvla *n)
{
	while (n->idle) {
		struct transfer *t = n->idle;
		n->idle = t->next;
		transfer_free(t);
	}
	n->nidle = 0;
}

void nbe_nuvla_trim(struct nbe_nuvla *n)
{
	if (n)
		free_idle(n);
}

/* Closes every connection (with a reset, see on_sockopt()): nothing queued
 * on them can reach the server later. Only with nothing in flight. The idle
 * handles go too: after a failure, requests start from fresh handles. */
static void drop_connections(struct nbe_nuvla *n)
{
	CURLM *fresh = curl_multi_init();

	free_idle(n);
	if (!fresh)
		return; /* keep the old one; the next in-doubt outcome tries again */
	curl_multi_cleanup(n->multi);
	n->multi = fresh;
	if (configure_multi(n) == 0)
		n->poisoned = false;
}

static void unlink_transfer(struct nbe_nuvla *n, struct transfer *t)
{
	for (struct transfer **p = &n->transfers; *p; p = &(*p)->next) {
		if (*p == t) {
			*p = t->next;
			return;
		}
	}
}

/*
 * Every option a handle of @kind gets whatever its request: the client's
 * settings, the callbacks (their data is @t, which lives as long as its
 * handle) and the method.
 */
static CURLcode setup_easy(struct nbe_nuvla *n, struct transfer *t, enum xfer_kind kind)
{
	CURL *e = t->easy;
	CURLcode c = CURLE_OK;

#define SET(opt, val)                                                                              \
	do {                                                                                       \
		if (c == CURLE_OK)                                                                 \
			c = curl_easy_setopt(e, opt, val);                                         \
	} while (0)
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_SHARE, n->share);
	SET(CURLOPT_COOKIEFILE, ""); /* the cookie engine, fed from our jar */
	SET(CURLOPT_CONNECTTIMEOUT_MS, (long)n->connect_timeout_ms);
	SET(CURLOPT_TIMEOUT_MS, (long)n->request_timeout_ms);
	SET(CURLOPT_SSL_VERIFYPEER, n->insecure ? 0L : 1L);
	SET(CURLOPT_SSL_VERIFYHOST, n->insecure ? 0L : 2L);
	/* as with a fresh handle per request: every new connection makes a
	 * full handshake, none resumes a session an earlier one left */
	SET(CURLOPT_SSL_SESSIONID_CACHE, 0L);
	if (n->ca_file)
		SET(CURLOPT_CAINFO, n->ca_file);
	if (n->client_cert) {
		SET(CURLOPT_SSLCERT, n->client_cert);
		SET(CURLOPT_SSLKEY, n->client_key);
	}
	/* HTTP/2 multiplexing where libcurl has it (setting it without is an error) */
	if (curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_HTTP2)
		SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	SET(CURLOPT_PIPEWAIT, 1L);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_SOCKOPTFUNCTION, on_sockopt);
	SET(CURLOPT_USERAGENT, n->user_agent);
	SET(CURLOPT_WRITEFUNCTION, on_body);
	SET(CURLOPT_WRITEDATA, t);
	SET(CURLOPT_HEADERFUNCTION, on_header);
	SET(CURLOPT_HEADERDATA, t);
	SET(CURLOPT_ERRORBUFFER, t->errbuf);
	SET(CURLOPT_PRIVATE, t);
	if (kind == KIND_POST) {
		SET(CURLOPT_POST, 1L);
		SET(CURLOPT_READFUNCTION, on_read);
		SET(CURLOPT_READDATA, t);
		SET(CURLOPT_SEEKFUNCTION, on_seek);
		SET(CURLOPT_SEEKDATA, t);
	}
#undef SET
	return c;
}

static enum xfer_kind kind_of(const char *method)
{
	if (strcmp(method, "POST") == 0)
		return KIND_POST;
	if (strcmp(method, "GET") == 0)
		return KIND_GET;
	return KIND_OTHER;
}

/* Sets @t up for one request: an idle handle of the same kind keeps its
 * options, any other is replaced by a fresh one. */
static CURLcode prepare(struct nbe_nuvla *n, struct transfer *t, const char *method,
			const char *path, const char *body)
{
	enum xfer_kind kind = kind_of(method);
	CURLcode c = CURLE_OK;

	if (t->kind != kind || kind == KIND_OTHER) {
		if (t->kind != KIND_NONE) {
			curl_easy_cleanup(t->easy);
			t->easy = curl_easy_init();
			if (!t->easy)
				return CURLE_OUT_OF_MEMORY;
		}
		t->kind = KIND_NONE;
		nbe_free(t->path);
		t->path = NULL;
		c = setup_easy(n, t, kind);
		if (c != CURLE_OK)
			return c;
		t->kind = kind;
	}
	/* what a previous request left in the transfer */
	t->req_len = t->req_off = 0;
	t->resp_len = 0;
	t->too_big = false;
	t->retry_after_s = -1;
	t->errbuf[0] = '\0';
	if (!t->path || strcmp(t->path, path) != 0) {
		size_t ul = strlen(n->endpoint) + strlen(path) + 1;
		char *url = nbe_malloc(ul);

		nbe_free(t->path);
		t->path = NULL;
		if (!url)
			return CURLE_OUT_OF_MEMORY;
		snprintf(url, ul, "%s%s", n->endpoint, path);
		c = curl_easy_setopt(t->easy, CURLOPT_URL, url); /* libcurl copies it */
		nbe_free(url);
		if (c != CURLE_OK)
			return c;
		t->path = nbe_strdup(path); /* when it fails, the URL is set again next time */
	}
	c = curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, body ? n->hdr_json : n->hdr_plain);
	if (c != CURLE_OK)
		return c;
	if (body) {
		size_t len = strlen(body);

		if (len + 1 > t->req_cap) {
			char *p = nbe_malloc(len + 1);

			if (!p)
				return CURLE_OUT_OF_MEMORY;
			nbe_free_secret(t->req_body, t->req_cap);
			t->req_body = p;
			t->req_cap = len + 1;
		}
		memcpy(t->req_body, body, len + 1);
		t->req_len = len;
	}
	if (kind == KIND_POST)
		return curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE,
					(curl_off_t)t->req_len);
	if (kind == KIND_OTHER) {
		c = curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, method);
		if (c == CURLE_OK && body)
			c = curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->req_body);
		if (c == CURLE_OK && body)
			c = curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)t->req_len);
	}
	return c;
}

int nbe_nuvla_start(struct nbe_nuvla *n, const char *method, const char *path, const char *body,
		    nbe_nuvla_done_fn done, void *userdata, struct nbe_error *err)
{
	struct transfer *t;
	CURLcode c;

	if (n->in_flight >= n->max_in_flight)
		return nbe_error_set(err, -EBUSY, "%d requests in flight already", n->in_flight);
	t = n->idle;
	if (t) {
		n->idle = t->next;
		n->nidle--;
		t->next = NULL;
	} else {
		t = nbe_calloc(1, sizeof(*t));
		if (!t)
			return nbe_error_set(err, -ENOMEM, "out of memory");
		t->n = n;
		t->easy = curl_easy_init();
		if (!t->easy) {
			transfer_free(t);
			return nbe_error_set(err, -ENOMEM, "out of memory");
		}
	}
	t->done = done;
	t->userdata = userdata;
	c = prepare(n, t, method, path, body);
	if (c != CURLE_OK) {
		/* a handle half set up is not reused */
		transfer_free(t);
		return nbe_error_set(err, c == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL,
				     "setting up a request: %s", curl_easy_strerror(c));
	}
	if (curl_multi_add_handle(n->multi, t->easy) != CURLM_OK) {
		transfer_free(t);
		return nbe_error_set(err, -ENOMEM, "cannot start a request");
	}
	t->attached = true;
	t->next = n->transfers;
	n->transfers = t;
	n->in_flight++;
	return 0;
}

/*
 * After its callback: a transfer that completed keeps its handle for the
 * next request (its body wiped); any other is freed, so no error state of
 * libcurl's is ever carried into another request.
 */
static void finish_transfer(struct nbe_nuvla *n, struct transfer *t, CURLcode result)
{
	bool keep = result == CURLE_OK && !t->too_big && n->nidle < n->max_in_flight;

	if (keep && curl_multi_remove_handle(n->multi, t->easy) != CURLM_OK)
		keep = false;
	if (!keep) {
		transfer_free(t);
		return;
	}
	t->attached = false;
	wipe_body(t);
	nbe_free(t->resp);
	t->resp = NULL;
	t->resp_cap = 0;
	t->done = NULL;
	t->userdata = NULL;
	t->next = n->idle;
	n->idle = t;
	n->nidle++;
}

void nbe_nuvla_set_interrupt(struct nbe_nuvla *n, const int *fds, unsigned nfds,
			     nbe_nuvla_interrupt_fn fn, void *userdata)
{
	n->nwake = nfds > 4 ? 4 : nfds;
	for (unsigned i = 0; i < n->nwake; i++)
		n->wake_fds[i] = fds[i];
	n->interrupt = fn;
	n->interrupt_userdata = userdata;
}

void nbe_nuvla_abort_all(struct nbe_nuvla *n)
{
	while (n->transfers) {
		struct transfer *t = n->transfers;
		n->transfers = t->next;
		transfer_free(t);
	}
	n->in_flight = 0;
	drop_connections(n); /* what they had queued must not go out later */
}

int nbe_nuvla_in_flight(const struct nbe_nuvla *n)
{
	return n->in_flight;
}

int nbe_nuvla_perform(struct nbe_nuvla *n, int timeout_ms, struct nbe_error *err)
{
	CURLMcode mc;
	CURLMsg *msg;
	int running = 0, left;

	mc = curl_multi_perform(n->multi, &running);
	if (mc == CURLM_OK && running > 0 && timeout_ms > 0) {
		struct curl_waitfd extra[4];
		for (unsigned i = 0; i < n->nwake; i++) {
			extra[i].fd = n->wake_fds[i];
			extra[i].events = CURL_WAIT_POLLIN;
			extra[i].revents = 0;
		}
		mc = curl_multi_poll(n->multi, extra, n->nwake, timeout_ms, NULL);
	}
	if (mc == CURLM_OK && n->interrupt && n->interrupt(n->interrupt_userdata))
		return nbe_error_set(err, -EINTR, "interrupted");
	if (mc == CURLM_OK)
		mc = curl_multi_perform(n->multi, &running);
	if (mc != CURLM_OK)
		return nbe_error_set(err, mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO, "curl: %s",
				     curl_multi_strerror(mc));
	while ((msg = curl_multi_info_read(n->multi, &left)) != NULL) {
		struct nbe_http_response resp = { 0 };
		struct transfer *t = NULL;
		CURLcode result;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
		if (!t)
			continue;
		result = msg->data.result;
		classify(t, result, &resp);
		if (resp.cls == NBE_HTTP_IN_DOUBT)
			n->poisoned = true;
		unlink_transfer(n, t);
		n->in_flight--;
		t->done(t->userdata, &resp);
		nbe_http_response_clear(&resp);
		finish_transfer(n, t, result);
	}
	if (n->poisoned && n->in_flight == 0)
		drop_connections(n);
	return 0;
}

struct sync_done {
	bool finished;
	struct nbe_http_response *out;
};

static void sync_cb(void *userdata, struct nbe_http_response *resp)
{
	struct sync_done *s = userdata;

	*s->out = *resp;
	resp->body = NULL; /* ownership moves to the caller */
	s->finished = true;
}

int nbe_nuvla_request(struct nbe_nuvla *n, const char *method, const char *path, const char *body,
		      struct nbe_http_response *ret, struct nbe_error *err)
{
	struct sync_done s = { .out = ret };
	int r;

	nbe_http_response_clear(ret);
	r = nbe_nuvla_start(n, method, path, body, sync_cb, &s, err);
	if (r < 0)
		return r;
	while (!s.finished) {
		r = nbe_nuvla_perform(n, 200, err);
		if (r < 0) {
			/* the callback points into this frame: the request must go */
			nbe_nuvla_abort_all(n);
			return r;
		}
	}
	/* one request now and then (a heartbeat, a look-up, a login): no
	 * handle is kept for it, as no handle outlived its request before */
	if (n->in_flight == 0)
		free_idle(n);
	return 0;
}

/* A handle on the share for reading and writing the cookie store. */
static CURL *cookie_handle(struct nbe_nuvla *n)
{
	CURL *e = curl_easy_init();

	if (e && (curl_easy_setopt(e, CURLOPT_SHARE, n->share) != CURLE_OK ||
		  curl_easy_setopt(e, CURLOPT_COOKIEFILE, "") != CURLE_OK)) {
		curl_easy_cleanup(e);
		return NULL;
	}
	return e;
}

static void load_jar(struct nbe_nuvla *n)
{
	char *text, *line, *save = NULL;
	size_t len;
	CURL *e;

	if (!n->cookie_file || nbe_read_file(n->cookie_file, COOKIE_FILE_MAX, &text, &len) < 0)
		return;
	e = cookie_handle(n);
	if (e) {
		for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
			if (*line == '\0' || (*line == '#' && strncmp(line, "#HttpOnly_", 10) != 0))
				continue;
			if (curl_easy_setopt(e, CURLOPT_COOKIELIST, line) == CURLE_OK)
				n->has_session = true;
		}
		curl_easy_cleanup(e);
	}
	nbe_free_secret(text, len);
}

/* Writes the cookie store to the jar: atomically, mode 0600. */
static int save_jar(struct nbe_nuvla *n)
{
	struct curl_slist *list = NULL;
	size_t len = 0, off = 0;
	char *text;
	CURL *e;
	int r;

	if (!n->cookie_file)
		return 0;
	e = cookie_handle(n);
	if (!e)
		return -ENOMEM;
	if (curl_easy_getinfo(e, CURLINFO_COOKIELIST, &list) != CURLE_OK) {
		curl_easy_cleanup(e);
		return -EIO;
	}
	for (struct curl_slist *l = list; l; l = l->next)
		len += strlen(l->data) + 1;
	text = nbe_malloc(len + 1);
	if (!text) {
		curl_slist_free_all(list);
		curl_easy_cleanup(e);
		return -ENOMEM;
	}
	for (struct curl_slist *l = list; l; l = l->next) {
		size_t k = strlen(l->data);
		memcpy(text + off, l->data, k);
		off += k;
		text[off++] = '\n';
	}
	text[off] = '\0';
	curl_slist_free_all(list);
	curl_easy_cleanup(e);
	r = nbe_write_file_atomic(n->cookie_file, text, off, 0600);
	nbe_free_secret(text, off);
	return r;
}

bool nbe_nuvla_has_session(const struct nbe_nuvla *n)
{
	return n->has_session;
}

void nbe_nuvla_drop_session(struct nbe_nuvla *n)
{
	CURL *e = cookie_handle(n);

	if (e) {
		curl_easy_setopt(e, CURLOPT_COOKIELIST, "ALL");
		curl_easy_cleanup(e);
	}
	n->has_session = false;
	if (n->cookie_file)
		unlink(n->cookie_file);
}

int nbe_nuvla_login(struct nbe_nuvla *n, const char *key, const char *secret,
		    struct nbe_http_response *ret, struct nbe_error *err)
{
	cJSON *body = cJSON_CreateObject(), *tmpl;
	char *text = NULL;
	int r;

	tmpl = body ? cJSON_AddObjectToObject(body, "template") : NULL;
	if (!tmpl || !cJSON_AddStringToObject(tmpl, "href", "session-template/api-key") ||
	    !cJSON_AddStringToObject(tmpl, "key", key) ||
	    !cJSON_AddStringToObject(tmpl, "secret", secret) ||
	    !(text = cJSON_PrintUnformatted(body))) {
		cJSON_Delete(body);
		return nbe_error_set(err, -ENOMEM, "out of memory");
	}
	cJSON_Delete(body);
	nbe_nuvla_drop_session(n);
	r = nbe_nuvla_request(n, "POST", "/api/session", text, ret, err);
	nbe_free_secret_str(text);
	if (r < 0)
		return r;
	if (ret->cls == NBE_HTTP_OK) {
		n->has_session = true;
		r = save_jar(n);
		if (r < 0) {
			/* an error return leaves the caller nothing to clear */
			nbe_http_response_clear(ret);
			return nbe_error_set(err, r, "%s: cannot save the session: %s",
					     n->cookie_file, strerror(-r));
		}
	}
	return 0;
}

void nbe_nuvla_free(struct nbe_nuvla *n)
{
	if (!n)
		return;
	while (n->transfers) {
		struct transfer *t = n->transfers;
		n->transfers = t->next;
		transfer_free(t);
	}
	free_idle(n);
	curl_multi_cleanup(n->multi);
	curl_share_cleanup(n->share);
	curl_slist_free_all(n->hdr_plain);
	curl_slist_free_all(n->hdr_json);
	nbe_free(n->endpoint);
	nbe_free(n->ca_file);
	nbe_free(n->client_cert);
	nbe_free(n->client_key);
	nbe_free(n->cookie_file);
	nbe_free(n->user_agent);
	nbe_free(n);
}

static int dup_opt(char **dst, const char *src)
{
	if (!src)
		return 0;
	*dst = nbe_strdup(src);
	return *dst ? 0 : -ENOMEM;
}

int nbe_nuvla_new(const struct nbe_nuvla_opts *opts, struct nbe_nuvla **ret, struct nbe_error *err)
{
	struct nbe_nuvla *n;
	int r = global_init();

	if (r < 0)
		return nbe_error_set(err, r, "cannot initialise libcurl");
	n = nbe_calloc(1, sizeof(*n));
	if (!n)
		return nbe_error_set(err, -ENOMEM, "out of memory");
	n->insecure = opts->insecure;
	n->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 10000;
	n->request_timeout_ms = opts->request_timeout_ms > 0 ? opts->request_timeout_ms : 30000;
	n->max_body = opts->max_body ? opts->max_body : NBE_NUVLA_MAX_BODY;
	n->max_in_flight = opts->max_in_flight > 0 ? opts->max_in_flight : 1;
	if (dup_opt(&n->endpoint, opts->endpoint) || dup_opt(&n->ca_file, opts->ca_file) ||
	    dup_opt(&n->client_cert, opts->client_cert) ||
	    dup_opt(&n->client_key, opts->client_key) ||
	    dup_opt(&n->cookie_file, opts->cookie_file) ||
	    dup_opt(&n->user_agent, opts->user_agent ? opts->user_agent : "nuvlabox-event"))
		goto err_oom;
	n->multi = curl_multi_init();
	n->share = curl_share_init();
	if (!n->multi || !n->share)
		goto err_oom;
	if (!(n->hdr_plain = curl_slist_append(NULL, "Accept: application/json")) ||
	    !(n->hdr_json = curl_slist_append(NULL, "Accept: application/json")) ||
	    !curl_slist_append(n->hdr_json, "Content-Type: application/json"))
		goto err_oom;
	if (curl_share_setopt(n->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_COOKIE) != CURLSHE_OK ||
	    configure_multi(n) < 0) {
		nbe_nuvla_free(n);
		return nbe_error_set(err, -EINVAL, "cannot configure libcurl");
	}
	load_jar(n);
	*ret = n;
	return 0;

err_oom:
	nbe_nuvla_free(n);
	return nbe_error_set(err, -ENOMEM, "out of memory");
}
