/*
 * doctor: checks everything an upload depends on, one line each, and exits
 * non-zero on any failure (DESIGN §7).
 */
#include "cli.h"

#include "alloc.h"
#include "clock.h"
#include "crypto.h"
#include "fsutil.h"
#include "nuvla.h"
#include "upload_setup.h"
#include "version.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define COOKIE_JAR    "session.cookie"
#define EXPIRY_WARN_S (30 * 24 * 3600)

struct doctor {
	int failures, warnings;
};

static void line(struct doctor *d, const char *verdict, const char *what, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void line(struct doctor *d, const char *verdict, const char *what, const char *fmt, ...)
{
	char msg[700];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (strcmp(verdict, "FAIL") == 0)
		d->failures++;
	else if (strcmp(verdict, "warn") == 0)
		d->warnings++;
	printf("%-4s  %-12s %s\n", verdict, what, msg);
}

/* Splits "https://host:port/..." into host and port. */
static int split_endpoint(const char *url, char *host, size_t hsize, char *port, size_t psize)
{
	const char *p = strstr(url, "://"), *end;
	bool https = strncmp(url, "https", 5) == 0;

	p = p ? p + 3 : url;
	if (*p == '[') {
		end = strchr(p, ']');
		if (!end)
			return -EINVAL;
		snprintf(host, hsize, "%.*s", (int)(end - p - 1), p + 1);
		p = end + 1;
	} else {
		size_t n = strcspn(p, ":/");
		snprintf(host, hsize, "%.*s", (int)n, p);
		p += n;
	}
	if (*p == ':')
		snprintf(port, psize, "%.*s", (int)strcspn(p + 1, "/"), p + 1);
	else
		snprintf(port, psize, "%s", https ? "443" : "80");
	return host[0] ? 0 : -EINVAL;
}

static void check_files(struct cli *c, struct doctor *d)
{
	struct nbe_cert_info ci;
	struct nbe_error err = { { 0 } };
	char *secret = NULL;
	int r;

	if (!c->cfg.nuvlabox_id)
		line(d, "FAIL", "identity", "nuvlabox_id is not set (nor NUVLAEDGE_UUID)%s%s",
		     c->cfg.identity_note ? "; " : "",
		     c->cfg.identity_note ? c->cfg.identity_note : "");
	else
		line(d, "ok", "identity", "%s%s%s", c->cfg.nuvlabox_id,
		     c->cfg.identity_source ? " from " : "",
		     c->cfg.identity_source ? c->cfg.identity_source : "");
	r = nbe_config_read_secret(&c->cfg, &secret, &err);
	if (r < 0)
		line(d, "FAIL", "credential", "%s", err.msg);
	else if (!c->cfg.api_key || !secret)
		line(d, "FAIL", "credential",
		     "api_key and api_secret_file (or NUVLAEDGE_API_KEY/"
		     "NUVLAEDGE_API_SECRET) must be set");
	else
		line(d, "ok", "credential", "%s, secret from %s", c->cfg.api_key,
		     c->cfg.api_secret_file ? c->cfg.api_secret_file
		     : c->cfg.identity_source && !getenv("NUVLAEDGE_API_SECRET")
			     ? c->cfg.identity_source
			     : "NUVLAEDGE_API_SECRET");
	nbe_free_secret_str(secret);
	if (c->cfg.ca_file) {
		r = nbe_crypto_cert_info(c->cfg.ca_file, &ci, &err);
		if (r < 0)
			line(d, "FAIL", "ca_file", "%s", err.msg);
		else
			line(d, "ok", "ca_file", "%s (%s)", c->cfg.ca_file, ci.subject);
	} else {
		line(d, "ok", "ca_file", "the system trust store");
	}
	if (!c->cfg.client_cert) {
		line(d, "ok", "client cert", "none configured (no mTLS gateway)");
		return;
	}
	r = nbe_config_check_key(&c->cfg, &err);
	if (r < 0) {
		line(d, "FAIL", "client key", "%s", err.msg);
		return;
	}
	r = nbe_crypto_cert_info(c->cfg.client_cert, &ci, &err);
	if (r < 0) {
		line(d, "FAIL", "client cert", "%s", err.msg);
		return;
	}
	{
		int64_t now = nbe_clock_wall_ms() / 1000;
		char until[32];
		struct tm tm;
		time_t t = (time_t)ci.not_after;

		if (!gmtime_r(&t, &tm) ||
		    strftime(until, sizeof(until), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
			snprintf(until, sizeof(until), "@%lld", (long long)t); /* out of range */
		/* a warning only: the device clock may be the one that is wrong */
		if (now > ci.not_after)
			line(d, "warn", "client cert", "%s expired on %s (by this device's clock)",
			     ci.subject, until);
		else if (now < ci.not_before)
			line(d, "warn", "client cert",
			     "%s is not valid yet (by this device's clock)", ci.subject);
		else if (ci.not_after - now < EXPIRY_WARN_S)
			line(d, "warn", "client cert", "%s expires soon, on %s", ci.subject, until);
		else
			line(d, "ok", "client cert", "%s, valid until %s", ci.subject, until);
	}
	r = nbe_crypto_key_matches(c->cfg.client_cert, c->cfg.client_key, &err);
	if (r < 0)
		line(d, "FAIL", "client key", "%s", err.msg);
	else
		line(d, "ok", "client key", "%s matches the certificate", c->cfg.client_key);
}

/* DNS and TCP: returns 0 when a connection could be made. */
static int check_network(struct cli *c, struct doctor *d)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL, *ai;
	char host[256], port[16], addr[NI_MAXHOST];
	int r;

	if (split_endpoint(c->cfg.endpoint, host, sizeof(host), port, sizeof(port)) < 0) {
		line(d, "FAIL", "dns", "cannot read a host out of %s", c->cfg.endpoint);
		return -EINVAL;
	}
	r = getaddrinfo(host, port, &hints, &res);
	if (r != 0) {
		line(d, "FAIL", "dns", "%s: %s", host, gai_strerror(r));
		return -EHOSTUNREACH;
	}
	if (getnameinfo(res->ai_addr, res->ai_addrlen, addr, sizeof(addr), NULL, 0,
			NI_NUMERICHOST) != 0)
		snprintf(addr, sizeof(addr), "?");
	line(d, "ok", "dns", "%s is %s", host, addr);
	r = -ECONNREFUSED;
	for (ai = res; ai; ai = ai->ai_next) {
		struct pollfd pfd;
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
			r = -errno;
			close(fd);
			continue;
		}
		pfd.fd = fd;
		pfd.events = POLLOUT;
		if (poll(&pfd, 1, (int)c->cfg.connect_timeout_ms) == 1 &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0) {
			if (getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr), NULL, 0,
					NI_NUMERICHOST) != 0)
				snprintf(addr, sizeof(addr), "?");
			close(fd);
			freeaddrinfo(res);
			line(d, "ok", "tcp", "connected to %s port %s", addr, port);
			return 0;
		}
		r = soerr ? -soerr : -ETIMEDOUT;
		close(fd);
	}
	freeaddrinfo(res);
	line(d, "FAIL", "tcp", "%s port %s: %s", host, port, strerror(-r));
	return r;
}

/* TLS handshake (both directions of certificate checks) and login. */
static void check_tls_and_login(struct cli *c, struct doctor *d)
{
	struct nbe_http_response resp = { 0 };
	struct nbe_error err = { { 0 } };
	struct nbe_nuvla *n = NULL;
	char *secret = NULL;
	int r;

	/* no jar: never disturb the uploader's session */
	r = nuvla_client_new(&c->cfg, NULL, 1, "nuvlabox-event-doctor/" NBE_VERSION, &n, &err);
	if (r < 0) {
		line(d, "FAIL", "tls", "%s", err.msg);
		return;
	}
	if (nbe_config_read_secret(&c->cfg, &secret, &err) < 0 || !secret || !c->cfg.api_key) {
		/* no login possible: a plain GET still proves the TLS handshake */
		r = nbe_nuvla_request(n, "GET", "/api/cloud-entry-point", NULL, &resp, &err);
	} else {
		r = nbe_nuvla_login(n, c->cfg.api_key, secret, &resp, &err);
	}
	if (r < 0) {
		line(d, "FAIL", "tls", "%s", err.msg);
		goto out;
	}
	if (resp.cls == NBE_HTTP_CONNECT) {
		line(d, "FAIL", "tls", "%s", resp.message);
		goto out;
	}
	line(d, c->cfg.insecure ? "warn" : "ok", "tls", "handshake with %s%s", c->cfg.endpoint,
	     c->cfg.insecure ? " WITHOUT verifying the server (insecure = true)" : "");
	if (resp.cls == NBE_HTTP_GATEWAY_ERROR && resp.status < 500)
		line(d, "FAIL", "gateway", "%s", resp.message);
	else if (!secret || !c->cfg.api_key)
		line(d, "FAIL", "login", "no credential to log in with");
	else if (resp.cls == NBE_HTTP_OK)
		line(d, "ok", "login", "session opened as %s", c->cfg.api_key);
	else
		line(d, "FAIL", "login", "%s", resp.message);
out:
	nbe_free_secret_str(secret);
	nbe_http_response_clear(&resp);
	nbe_nuvla_free(n);
}

int cmd_doctor(struct cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
		CLI_GLOBAL_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	struct doctor d = { 0 };
	struct nbe_buffer *buf = NULL;
	struct nbe_error err = { { 0 } };
	int r;

	r = cli_parse(c, argc, argv, opts, cli_no_options, NULL, NULL);
	if (r)
		return r;
	r = cli_load_config(c);
	if (r) {
		line(&d, "FAIL", "config", "see the line above");
		return r;
	}
	line(&d, "ok", "config", "%s%s", c->config_path,
	     access(c->config_path, R_OK) == 0 ? "" : " (absent: built-in defaults)");
	line(&d, "ok", "tls library", "libcurl %s with %s; mbedTLS %s for the agent's own crypto",
	     curl_version_info(CURLVERSION_NOW)->version, nbe_nuvla_tls_library(),
	     nbe_crypto_version());
	r = cli_open_buffer(c, true, &buf);
	if (r) {
		line(&d, "FAIL", "buffer", "cannot open the buffer in %s", c->cfg.state_dir);
	} else {
		r = nbe_buffer_integrity_check(buf, &err);
		if (r < 0)
			line(&d, "FAIL", "buffer", "%s", err.msg);
		else
			line(&d, "ok", "buffer", "%s/%s: integrity ok", c->cfg.state_dir,
			     NBE_BUFFER_FILE);
		nbe_buffer_close(buf);
	}
	check_files(c, &d);
	if (check_network(c, &d) == 0)
		check_tls_and_login(c, &d);
	line(&d, nbe_clock_synced(c->cfg.timesync_file) ? "ok" : "warn", "clock", "%s",
	     nbe_clock_synced(c->cfg.timesync_file)
		     ? "synchronised"
		     : "not synchronised (events are sent with clock \"unsynced\")");
	printf("%d failure%s, %d warning%s\n", d.failures, d.failures == 1 ? "" : "s", d.warnings,
	       d.warnings == 1 ? "" : "s");
	return d.failures ? EX_UNAVAILABLE : EX_OK;
}
