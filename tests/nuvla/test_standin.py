#!/usr/bin/env python3
"""Proves the Nuvla stand-in, the nginx mTLS gateway and the validator.

Starts one harness (stand-in + real nginx + generated PKI) in a temporary
directory for the whole module, resets the stand-in before each test, and
talks through nginx with Python's ssl/http.client (HTTP/1.1) and with the curl
CLI (HTTP/2). Everything started here is stopped even when a test fails.

Run:  python3 tests/nuvla/test_standin.py        (or: -m unittest discover -s tests/nuvla)
Set NUVLA_TEST_KEEP=1 to keep the harness directory for inspection.
"""

import gzip
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import schema  # noqa: E402

ENV = {}
_H = None
_DIR = None
CURL = shutil.which("curl")


def setUpModule():
    global _H, _DIR
    _DIR = tempfile.mkdtemp(prefix="nuvla-standin-test-")
    unittest.addModuleCleanup(_cleanup)
    _H = harness.Harness(_DIR, refresh_delay=1.0)
    ENV.update(_H.start())


def _cleanup():
    if _H is not None:
        _H.stop()
    if _DIR and not os.environ.get("NUVLA_TEST_KEEP"):
        shutil.rmtree(_DIR, ignore_errors=True)
    elif _DIR:
        print("\nharness directory kept: %s" % _DIR, file=sys.stderr)


# --------------------------------------------------------------------- clients

class Result:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        try:
            return json.loads(self.body.decode())
        except (UnicodeDecodeError, ValueError):
            return None

    @property
    def ctype(self):
        return self.headers.get("Content-Type") or ""

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.ctype, self.body[:300])


class Http:
    """One keep-alive HTTP/1.1 connection (TLS for https) and a cookie jar."""

    def __init__(self, url, cert=None, key=None, ca=None, timeout=10):
        u = urllib.parse.urlsplit(url)
        self.https, self.host, self.port = u.scheme == "https", u.hostname, u.port
        self.timeout = timeout
        self.ctx = None
        if self.https:
            self.ctx = ssl.create_default_context(cafile=ca or ENV["NUVLA_TEST_CA"])
            if cert:
                self.ctx.load_cert_chain(cert, key)
        self.conn = None
        self.cookies = {}

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, headers=None, raw=None):
        hdrs = {}
        if body is not None:
            raw = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join("%s=%s" % kv for kv in self.cookies.items())
        if self.conn is None:
            if self.https:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                        timeout=self.timeout)
            else:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=raw, headers=hdrs)
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception:
            self.close()
            raise
        if resp.will_close:
            self.close()
        for sc in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = sc.partition("=")
            value = rest.split(";")[0]
            if value == "INVALID":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return Result(resp.status, resp.headers, data)

    def login(self, key=None, secret=None):
        return self.request("POST", "/api/session", {"template": {
            "href": "session-template/api-key",
            "key": key or ENV["NUVLA_TEST_API_KEY"],
            "secret": secret or ENV["NUVLA_TEST_API_SECRET"]}})


def device_gw(**kw):
    """A client holding the device's valid certificate, talking to the mTLS gateway."""
    return Http(ENV["NUVLA_GATEWAY_URL"], ENV["NUVLA_TEST_CLIENT_CERT"],
                ENV["NUVLA_TEST_CLIENT_KEY"], **kw)


def direct():
    return Http(ENV["NUVLA_STANDIN_URL"])


def ctl(method, path, body=None):
    """Calls the control API on the stand-in's own port."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(ENV["NUVLA_STANDIN_URL"] + "/_control/" + path, data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        raise AssertionError("control %s %s -> %d %s" % (method, path, e.code, e.read()[:300]))


def q(filter_text, **params):
    """A query string with a url-encoded CIMI filter."""
    params["filter"] = filter_text
    return "/api/event?" + urllib.parse.urlencode(params)


def event_body(**over):
    """A body that satisfies the strict wire format (DESIGN.md section 3)."""
    nb, owner = ENV["NUVLA_TEST_NUVLABOX_ID"], ENV["NUVLA_TEST_OWNER_ID"]
    dev = str(uuid.uuid4())
    body = {"name": "nuvlabox.reboot.completed", "description": "device rebooted",
            "timestamp": "2026-03-01T10:15:42.123Z", "category": "user", "severity": "medium",
            "success": True, "tags": ["device-event/" + dev],
            "content": {"resource": {"href": nb, "content": {"device-event-id": dev, "seq": 1}},
                        "linked-identifiers": ["job/" + str(uuid.uuid4()), nb, owner],
                        "state": "completed"},
            "acl": {"owners": [nb], "view-data": [owner]}}
    body.update(over)
    return body


def curl(*args):
    return subprocess.run([CURL, "-sS", "--max-time", "10"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Base(unittest.TestCase):
    def setUp(self):
        ctl("POST", "reset")
        self._clients = []

    def tearDown(self):
        for c in self._clients:
            c.close()

    def client(self, c):
        self._clients.append(c)
        return c

    def logged_in_device(self):
        c = self.client(device_gw())
        r = c.login()
        self.assertEqual(r.status, 201, r)
        return c

    def requests(self, path=None):
        return ctl("GET", "requests" + ("?path=" + path if path else ""))["requests"]

    def assert_nuvla_error(self, r, status, message=None):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.ctype.startswith("application/json"), r)
        doc = r.json
        self.assertIsInstance(doc, dict, r)
        self.assertEqual(doc["status"], status)
        if message is not None:
            self.assertEqual(doc["message"], message)
        return doc

    def assert_nginx_html(self, r, status, needle):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.ctype.startswith("text/html"), r)
        self.assertIsNone(r.json)
        self.assertIn(needle, r.body.decode())


# ------------------------------------------------------------------ the gateway

class GatewayTest(Base):
    def test_valid_client_logs_in_and_creates_event(self):
        c = self.client(device_gw())
        r = c.login()
        self.assertEqual(r.status, 201, r)
        self.assertIn(ENV["NUVLA_TEST_COOKIE_NAME"], c.cookies)
        self.assertRegex(r.headers["Set-Cookie"], r";Secure;Path=/;HttpOnly;Expires=")
        sent = event_body(category="alarm")
        r = c.request("POST", "/api/event", sent)
        self.assertEqual(r.status, 201, r)
        doc = r.json
        eid = doc["resource-id"]
        self.assertRegex(eid, r"^event/[0-9a-f-]{36}$")
        self.assertEqual(doc, {"status": 201, "message": eid + " created", "resource-id": eid})
        self.assertEqual(r.headers["Location"], eid)
        ev = c.request("GET", "/api/" + eid).json
        nb = ENV["NUVLA_TEST_NUVLABOX_ID"]
        self.assertEqual(ev["id"], eid)
        self.assertEqual(ev["category"], "user")            # forced for a device
        self.assertEqual(ev["created-by"], nb)
        self.assertEqual(ev["resource-type"], "event")
        self.assertTrue(schema.is_timestamp(ev["created"], strict=True))
        self.assertEqual(ev["acl"]["owners"], [nb])
        self.assertIn(ENV["NUVLA_TEST_OWNER_ID"], ev["acl"]["view-data"])
        self.assertEqual(ev["tags"], sent["tags"])
        stored = ctl("GET", "events?origin=api")["events"]
        self.assertEqual([e["id"] for e in stored], [eid])
        log = self.requests("/api/event")[0]
        self.assertEqual(log["gateway"], ENV["NUVLA_GATEWAY_PORT"])
        self.assertEqual(log["client_verify"], "SUCCESS")
        self.assertIn(nb, log["client_dn"])
        self.assertEqual(log["body"], sent)

    def _no_reach(self):
        self.assertEqual(self.requests(), [], "the request must not reach the stand-in")

    def test_no_client_certificate_is_nginx_400_html(self):
        r = self.client(Http(ENV["NUVLA_GATEWAY_URL"])).request("GET", "/api/event")
        self.assert_nginx_html(r, 400, "No required SSL certificate was sent")
        self._no_reach()

    def test_expired_client_certificate_is_nginx_400_html(self):
        c = self.client(Http(ENV["NUVLA_GATEWAY_URL"], ENV["NUVLA_TEST_CLIENT_EXPIRED_CERT"],
                             ENV["NUVLA_TEST_CLIENT_EXPIRED_KEY"]))
        self.assert_nginx_html(c.login(), 400, "The SSL certificate error")
        self._no_reach()

    def test_not_yet_valid_client_certificate_is_nginx_400_html(self):
        c = self.client(Http(ENV["NUVLA_GATEWAY_URL"], ENV["NUVLA_TEST_CLIENT_FUTURE_CERT"],
                             ENV["NUVLA_TEST_CLIENT_FUTURE_KEY"]))
        self.assert_nginx_html(c.login(), 400, "The SSL certificate error")

    def test_other_ca_client_certificate_is_nginx_400_html(self):
        c = self.client(Http(ENV["NUVLA_GATEWAY_URL"], ENV["NUVLA_TEST_CLIENT_OTHER_CA_CERT"],
                             ENV["NUVLA_TEST_CLIENT_OTHER_CA_KEY"]))
        self.assert_nginx_html(c.login(), 400, "The SSL certificate error")
        self._no_reach()

    @unittest.skipUnless(CURL, "curl CLI not installed")
    def test_http2_and_curl_view_of_the_gateway(self):
        url = ENV["NUVLA_GATEWAY_URL"] + "/api/cloud-entry-point"
        p = curl("--http2", "-i", "--cacert", ENV["NUVLA_TEST_CA"], url)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.startswith(b"HTTP/2 400"), p.stdout[:200])
        self.assertIn(b"No required SSL certificate was sent", p.stdout)
        p = curl("--http2", "-i", "--cacert", ENV["NUVLA_TEST_CA"], "--cert",
                 ENV["NUVLA_TEST_CLIENT_CERT"], "--key", ENV["NUVLA_TEST_CLIENT_KEY"], url)
        self.assertTrue(p.stdout.startswith(b"HTTP/2 200"), p.stdout[:200])

    def test_wrong_hostname_fails_verification(self):
        c = self.client(Http(ENV["NUVLA_GATEWAY_WRONGHOST_URL"], ENV["NUVLA_TEST_CLIENT_CERT"],
                             ENV["NUVLA_TEST_CLIENT_KEY"]))
        with self.assertRaises(ssl.SSLCertVerificationError) as cm:
            c.request("GET", "/api/cloud-entry-point")
        self.assertIn("Hostname mismatch", str(cm.exception))

    @unittest.skipUnless(CURL, "curl CLI not installed")
    def test_wrong_hostname_with_curl_only_the_name_is_wrong(self):
        port = ENV["NUVLA_GATEWAY_WRONGHOST_PORT"]
        args = ["--cacert", ENV["NUVLA_TEST_CA"], "--cert", ENV["NUVLA_TEST_CLIENT_CERT"],
                "--key", ENV["NUVLA_TEST_CLIENT_KEY"], "-o", "/dev/null", "-w", "%{http_code}"]
        p = curl(*args, "https://localhost:%s/api/cloud-entry-point" % port)
        self.assertEqual(p.returncode, 60, p.stderr)           # peer certificate rejected
        p = curl(*args, "--resolve", "wrong.example:%s:127.0.0.1" % port,
                 "https://wrong.example:%s/api/cloud-entry-point" % port)
        self.assertEqual((p.returncode, p.stdout), (0, b"200"), p.stderr)

    def test_tls_only_port_needs_no_client_certificate(self):
        c = self.client(Http(ENV["NUVLA_GATEWAY_NOMTLS_URL"]))
        r = c.request("GET", "/api/cloud-entry-point")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["base-uri"], "https://localhost:%s/api/"
                         % ENV["NUVLA_GATEWAY_NOMTLS_PORT"])
        self.assertEqual(self.requests()[0]["client_verify"], "NONE")

    def test_control_api_is_not_reachable_through_nginx(self):
        c = self.client(device_gw())
        for path in ("/_control/health", "/_control/events", "/_control"):
            self.assert_nginx_html(c.request("GET", path), 404, "404 Not Found")
        r = c.request("POST", "/_control/reset", {})
        self.assert_nginx_html(r, 404, "404 Not Found")
        self._no_reach()

    def test_authn_info_header_is_stripped_and_never_trusted(self):
        c = self.client(device_gw())
        hdr = {"nuvla-authn-info": "group/nuvla-admin group/nuvla-admin group/nuvla-admin"}
        r = c.request("POST", "/api/event", event_body(), headers=hdr)
        self.assert_nuvla_error(r, 403, "credentials required")
        log = self.requests()[0]
        self.assertFalse(log["authn_info_header"])       # nginx removed it
        self.assertTrue(log["gateway_saw_authn_info"])   # ...and reported that it was sent
        r = self.client(direct()).request("POST", "/api/event", event_body(), headers=hdr)
        self.assert_nuvla_error(r, 403, "credentials required")   # the stand-in ignores it
        self.assertTrue(self.requests()[-1]["authn_info_header"])

    def test_oversized_body_gets_nginx_413_html(self):
        c = self.logged_in_device()
        r = c.request("POST", "/api/event", raw=b"x" * (1024 * 1024 + 1),
                      headers={"Content-Type": "application/json"})
        self.assert_nginx_html(r, 413, "Request Entity Too Large")
        self.assertEqual(self.requests("/api/event"), [])

    def test_bench_endpoint_is_answered_by_nginx(self):
        c = self.client(device_gw())
        for _ in range(3):                                   # one keep-alive connection
            r = c.request("POST", "/bench/201", {"x": 1})
            self.assertEqual((r.status, r.json), (201, {"status": 201, "message": "bench"}))
        self.assertEqual(self.requests(), [])


# ------------------------------------------------------------------ auth/session

class AuthTest(Base):
    def test_no_session_is_403_not_401(self):
        c = self.client(device_gw())
        self.assert_nuvla_error(c.request("POST", "/api/event", event_body()), 403,
                                "credentials required")
        self.assert_nuvla_error(c.request("GET", "/api/event"), 403, "credentials required")
        nb = ENV["NUVLA_TEST_NUVLABOX_ID"]
        doc = self.assert_nuvla_error(c.request("GET", "/api/" + nb), 403)
        self.assertEqual(doc["resource-id"], nb)

    def test_bad_secret_is_403_naming_the_credential(self):
        c = self.client(device_gw())
        r = c.login(secret="wrong")
        key = ENV["NUVLA_TEST_API_KEY"]
        doc = self.assert_nuvla_error(r, 403, "invalid credentials for '%s'" % key)
        self.assertEqual(doc["resource-id"], key)
        self.assertEqual(c.cookies, {})
        self.assertEqual(self.requests()[0]["body"]["template"]["secret"], "<redacted>")

    def test_expired_sessions_get_403_and_relogin_works(self):
        c = self.logged_in_device()
        self.assertEqual(c.request("POST", "/api/event", event_body()).status, 201)
        self.assertEqual(ctl("POST", "sessions/expire")["expired"], 1)
        self.assert_nuvla_error(c.request("POST", "/api/event", event_body()), 403,
                                "credentials required")
        self.assertEqual(c.login().status, 201)
        self.assertEqual(c.request("POST", "/api/event", event_body()).status, 201)

    def test_session_lifetime(self):
        ctl("PUT", "config", {"session_lifetime": 0.5})
        c = self.logged_in_device()
        self.assertEqual(c.request("GET", "/api/event").status, 200)
        time.sleep(0.6)
        self.assert_nuvla_error(c.request("GET", "/api/event"), 403, "credentials required")

    def test_deleted_credential_refuses_login_but_cookie_lives_on(self):
        c = self.logged_in_device()
        ctl("DELETE", "credential/" + ENV["NUVLA_TEST_API_KEY"].split("/")[1])
        self.assertEqual(c.request("GET", "/api/event").status, 200)   # as on the real server
        self.assert_nuvla_error(self.client(device_gw()).login(), 403)

    def test_legacy_cookie_name(self):
        ctl("PUT", "config", {"cookie_name": "com.sixsq.nuvla.cookie"})
        c = self.logged_in_device()
        self.assertEqual(list(c.cookies), ["com.sixsq.nuvla.cookie"])
        self.assertEqual(c.request("GET", "/api/event").status, 200)
        value = c.cookies.pop("com.sixsq.nuvla.cookie")
        c.cookies["com.com.sixsq.nuvla.cookie"] = value               # the other name
        self.assertEqual(c.request("GET", "/api/event").status, 403)


# ---------------------------------------------------------------------- events

class EventTest(Base):
    def test_unknown_keys_are_400_nuvla_json(self):
        c = self.logged_in_device()
        for body, key in ((event_body(foo=1), "foo"),
                          (event_body(content={"resource": {"href": None}, "x": 1}), "content.x"),
                          (event_body(content={"resource": {"href": None, "y": 2}}),
                           "content.resource.y")):
            r = c.request("POST", "/api/event", body)
            doc = self.assert_nuvla_error(r, 400)
            self.assertRegex(doc["message"],
                             r"^resource event/[0-9a-f-]{36} does not satisfy defined schema:")
            self.assertIn(key, doc["message"])
        self.assertEqual(ctl("GET", "events")["count"], 0)

    def test_schema_errors_found_after_server_stamping(self):
        c = self.logged_in_device()
        # The server fills the timestamp and forces the category: these pass.
        body = event_body()
        del body["timestamp"]
        body["category"] = "nonsense"
        self.assertEqual(c.request("POST", "/api/event", body).status, 201)
        # ...but a bad timestamp, severity or parent does not.
        for over in ({"timestamp": "2026-03-01T10:15:42.1234Z"}, {"severity": "info"},
                     {"parent": "Event/x"}, {"tags": ["a", "a"]}, {"acl": {"owners": []}}):
            self.assert_nuvla_error(c.request("POST", "/api/event", event_body(**over)), 400)

    def test_refresh_delay_applies_to_search_not_to_get_by_id(self):
        ctl("PUT", "config", {"refresh_delay": 1.2})
        c = self.logged_in_device()
        body = event_body()
        tag = body["tags"][0]
        job = body["content"]["linked-identifiers"][0]
        eid = c.request("POST", "/api/event", body).json["resource-id"]
        self.assertEqual(c.request("GET", q("tags='%s'" % tag)).json["count"], 0)
        self.assertEqual(c.request("GET", "/api/" + eid).status, 200)   # at once
        time.sleep(1.3)
        r = c.request("GET", q("tags='%s'" % tag)).json
        self.assertEqual((r["count"], r["resources"][0]["id"]), (1, eid))
        self.assertEqual(r["resource-type"], "event-collection")
        r = c.request("GET", q("content/linked-identifiers='%s'" % job)).json
        self.assertEqual(r["count"], 1)

    def _three_events(self, c):
        ids = []
        for i, name in enumerate(("nuvlabox.reboot", "nuvlabox.reboot.completed", "agent.x")):
            body = event_body(name=name, timestamp="2026-03-01T10:00:0%d.000Z" % i,
                              tags=["t%d" % i, "common"])
            ids.append(c.request("POST", "/api/event", body).json["resource-id"])
        ctl("POST", "refresh")
        return ids

    def test_filters(self):
        c = self.logged_in_device()
        ids = self._three_events(c)

        def found(filter_text, **params):
            r = c.request("GET", q(filter_text, **params))
            self.assertEqual(r.status, 200, r)
            return [e["id"] for e in r.json["resources"]]
        self.assertEqual(found("tags='common'"), ids[::-1])          # default timestamp:desc
        self.assertEqual(found("name='agent.x'"), [ids[2]])
        self.assertEqual(found("name='nuvlabox.reboot' or name='agent.x'"), [ids[2], ids[0]])
        self.assertEqual(found("tags='common' and (tags='t0' or tags='t1')"), [ids[1], ids[0]])
        self.assertEqual(found("tags='common'", orderby="timestamp:asc", last="2"), ids[:2])
        # repeated filter parameters are ANDed
        path = "/api/event?" + urllib.parse.urlencode([("filter", "tags='common'"),
                                                       ("filter", "tags='t1'")])
        self.assertEqual([e["id"] for e in c.request("GET", path).json["resources"]], [ids[1]])
        # select keeps the id
        r = c.request("GET", q("tags='t0'", select="name")).json
        self.assertEqual(r["resources"], [{"name": "nuvlabox.reboot", "id": ids[0]}])
        # the same query as a form-encoded PUT
        form = urllib.parse.urlencode({"filter": "tags='t2'", "select": "id"}).encode()
        r = c.request("PUT", "/api/event", raw=form,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.json["resources"], [{"id": ids[2]}])
        # details under content.resource.content are stored but not indexed
        self.assertEqual(found("content/resource/content/seq=1"), [])

    def test_malformed_filter_is_400(self):
        c = self.logged_in_device()
        for f in ("tags='x", "tags=", "(tags='x'", "tags=['a'] and name='b'"):
            doc = self.assert_nuvla_error(c.request("GET", q(f)), 400)
            self.assertTrue(doc["message"].startswith("Invalid CIMI filter. "), doc)
        doc = self.assert_nuvla_error(c.request("GET", "/api/event?last=10001"), 500)
        self.assertIn("10'000", doc["message"])

    def test_put_is_405_delete_by_owner_and_visibility(self):
        c = self.logged_in_device()
        eid = c.request("POST", "/api/event", event_body()).json["resource-id"]
        hidden = c.request("POST", "/api/event",
                           event_body(acl=None)).json["resource-id"]    # default ACL
        doc = self.assert_nuvla_error(c.request("PUT", "/api/" + eid, {"name": "x"}), 405)
        self.assertEqual(doc["message"], "invalid method (put) for /api/" + eid)
        ctl("POST", "refresh")
        # the owner sees the event shared with view-data (without its ACL), not the other
        owner = self.client(direct())
        self.assertEqual(owner.login(ENV["NUVLA_TEST_OWNER_API_KEY"],
                                     ENV["NUVLA_TEST_OWNER_API_SECRET"]).status, 201)
        seen = owner.request("GET", "/api/event").json["resources"]
        self.assertEqual([e["id"] for e in seen if e.get("created-by") ==
                          ENV["NUVLA_TEST_NUVLABOX_ID"]], [eid])
        self.assertNotIn("acl", seen[0])
        self.assert_nuvla_error(owner.request("GET", "/api/" + hidden), 403)
        self.assert_nuvla_error(owner.request("DELETE", "/api/" + eid), 403)
        r = c.request("DELETE", "/api/" + eid)
        self.assertEqual(r.json, {"status": 200, "message": eid + " deleted", "resource-id": eid})
        self.assert_nuvla_error(c.request("GET", "/api/" + eid), 404, eid + " not found")

    def test_gzip_request_body(self):
        c = self.logged_in_device()
        raw = gzip.compress(json.dumps(event_body()).encode())
        r = c.request("POST", "/api/event", raw=raw, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"})
        self.assertEqual(r.status, 201, r)
        mine = [q for q in self.requests("/api/event") if q["method"] == "POST"]
        self.assertEqual(len(mine), 1, mine)
        self.assertEqual(mine[0]["content_encoding"], "gzip")
        self.assertTrue(mine[0]["body"]["tags"][0].startswith("device-event/"))
        r = c.request("POST", "/api/event", raw=b"not gzip", headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"})
        self.assertEqual(r.status, 500, r)

    def test_malformed_json_gets_ring_text_400_and_no_type_is_a_schema_400(self):
        c = self.logged_in_device()
        r = c.request("POST", "/api/event", raw=b"{bad", headers={"Content-Type": "application/json"})
        self.assertEqual((r.status, r.body), (400, b"Malformed JSON in request body."))
        self.assertTrue(r.ctype.startswith("text/plain"))
        r = c.request("POST", "/api/event", raw=json.dumps(event_body()).encode())
        self.assert_nuvla_error(r, 400)

    def test_unknown_paths_and_methods(self):
        c = self.logged_in_device()
        self.assert_nuvla_error(c.request("GET", "/nothing"), 404, "unknown resource")
        self.assert_nuvla_error(c.request("GET", "/api/nuvlabox-status"), 405)
        self.assert_nuvla_error(c.request("PATCH", "/api/event"), 405)
        doc = self.assert_nuvla_error(c.request("POST", "/api/event/x/y"), 404)
        self.assertTrue(doc["message"].startswith("undefined action (post,"), doc)


# ----------------------------------------------------------- nuvlabox and jobs

class LifecycleTest(Base):
    def test_activate_then_409(self):
        nb = ctl("POST", "nuvlabox", {"state": "NEW"})
        c = self.client(device_gw())
        r = c.request("POST", "/api/%s/activate" % nb["id"])          # no auth, no body
        self.assertEqual(r.status, 200, r)
        creds = r.json
        self.assertEqual(sorted(creds), ["api-key", "secret-key"])
        self.assertRegex(creds["api-key"], r"^credential/[0-9a-f-]{36}$")
        self.assertEqual(c.login(creds["api-key"], creds["secret-key"]).status, 201)
        doc = self.assert_nuvla_error(c.request("POST", "/api/%s/activate" % nb["id"]), 409)
        self.assertEqual(doc["message"], "operation 'activate' not allowed on %s" % nb["id"])
        self.assertEqual(c.request("GET", "/api/" + nb["id"]).json["state"], "ACTIVATED")
        # The server's own nuvlabox.activate events: the owner sees them, the device never.
        ctl("POST", "refresh")
        names = [e["name"] for e in c.request("GET", "/api/event").json["resources"]]
        self.assertEqual(names, [])
        server = ctl("GET", "events?origin=server")["events"]
        self.assertEqual(sorted((e["name"], e["success"]) for e in server),
                         [("nuvlabox.activate", False), ("nuvlabox.activate", True)])

    def test_commission_records_payload(self):
        nb_id = ENV["NUVLA_TEST_NUVLABOX_ID"]
        c = self.client(device_gw())
        self.assert_nuvla_error(c.request("POST", "/api/%s/commission" % nb_id, {}), 403)
        c.login()
        payload = {"tags": ["a"], "ssh-keys": ["credential/k1"]}
        r = c.request("POST", "/api/%s/commission" % nb_id, payload)
        self.assertEqual(r.json, {"status": 200, "message": "commission executed successfully"})
        got = ctl("GET", "nuvlabox/" + nb_id.split("/")[1])
        self.assertEqual(got["commissions"], [payload])
        self.assertEqual(got["nuvlabox"]["ssh-keys"], ["credential/k1"])
        mine = c.request("GET", "/api/" + nb_id).json
        self.assertEqual(mine["owner"], ENV["NUVLA_TEST_OWNER_ID"])
        self.assertNotIn("acl", mine)                                   # view-data only

    def test_heartbeat_lists_non_final_jobs(self):
        nb_id = ENV["NUVLA_TEST_NUVLABOX_ID"]
        job = ctl("POST", "job", {"action": "reboot_nuvlabox", "target": nb_id})
        done = ctl("POST", "job", {"action": "reboot_nuvlabox", "target": nb_id, "state": "SUCCESS"})
        c = self.logged_in_device()
        r = c.request("POST", "/api/%s/heartbeat" % nb_id)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["jobs"], [job["id"]])
        self.assertNotIn(done["id"], r.json["jobs"])
        self.assertIn("doc-last-updated", r.json)
        ctl("PUT", "nuvlabox/" + nb_id.split("/")[1], {"state": "ACTIVATED"})
        self.assert_nuvla_error(c.request("POST", "/api/%s/heartbeat" % nb_id), 409,
                                "operation 'heartbeat' not allowed on %s" % nb_id)

    def test_job_put_until_final_then_409(self):
        nb_id = ENV["NUVLA_TEST_NUVLABOX_ID"]
        job = ctl("POST", "job", {"action": "reboot_nuvlabox", "target": nb_id})
        c = self.logged_in_device()
        path = "/api/" + job["id"]
        r = c.request("PUT", path, {"state": "RUNNING"})
        self.assertEqual((r.status, r.json["state"]), (200, "RUNNING"), r)
        self.assertIn("started", r.json)
        self.assertEqual(c.request("PUT", path, {"progress": 50}).json["progress"], 50)
        self.assert_nuvla_error(c.request("PUT", path, {"progress": 101}), 400)
        self.assert_nuvla_error(c.request("PUT", path, {"status-message": ""}), 400)
        self.assert_nuvla_error(c.request("PUT", path, {"bogus": 1}), 400)
        r = c.request("PUT", path, {"state": "SUCCESS", "return-code": 0,
                                    "status-message": "rebooting"})
        self.assertEqual((r.status, r.json["progress"]), (200, 100), r)
        doc = self.assert_nuvla_error(c.request("PUT", path, {"progress": 100}), 409,
                                      "edit is not allowed in final state")
        self.assertEqual(doc["resource-id"], job["id"])
        # Job edits are not refreshed at once: the next heartbeat may list it again.
        hb = "/api/%s/heartbeat" % nb_id
        self.assertEqual(c.request("POST", hb).json["jobs"], [job["id"]])
        ctl("POST", "refresh")
        self.assertEqual(c.request("POST", hb).json["jobs"], [])

    def test_get_context_for_ssh_key_job(self):
        nb_id = ENV["NUVLA_TEST_NUVLABOX_ID"]
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq2 test@host"
        job = ctl("POST", "job", {"action": "nuvlabox_add_ssh_key", "target": nb_id,
                                  "public-key": key})
        c = self.logged_in_device()
        r = c.request("POST", "/api/%s/get-context" % job["id"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(list(r.json), [job["credential"]])
        self.assertEqual(r.json[job["credential"]]["public-key"], key)
        self.assertNotIn("acl", r.json[job["credential"]])
        owner = self.client(direct())
        owner.login(ENV["NUVLA_TEST_OWNER_API_KEY"], ENV["NUVLA_TEST_OWNER_API_SECRET"])
        self.assert_nuvla_error(owner.request("POST", "/api/%s/get-context" % job["id"]), 403)
        # the owner finds the server's request event by the job id
        ctl("POST", "refresh")
        found = owner.request("GET", q("content/linked-identifiers='%s'" % job["id"])).json
        self.assertEqual([e["name"] for e in found["resources"]], ["nuvlabox.add-ssh-key"])


# ---------------------------------------------------------------------- faults

class FaultTest(Base):
    def fault(self, **spec):
        return ctl("POST", "faults", spec)

    def test_status_with_retry_after_then_normal(self):
        c = self.logged_in_device()
        self.fault(kind="status", status=503, retry_after=7, path="/api/event", method="POST",
                   message="try later")
        self.assertEqual(c.request("GET", "/api/event").status, 200)      # not matched
        r = c.request("POST", "/api/event", event_body())
        self.assert_nuvla_error(r, 503, "try later")
        self.assertEqual(r.headers["Retry-After"], "7")
        self.assertEqual(c.request("POST", "/api/event", event_body()).status, 201)
        self.assertEqual(ctl("GET", "faults")["faults"], [])

    def test_status_with_html_body_and_count(self):
        c = self.logged_in_device()
        self.fault(kind="status", status=502, body="html", count=2, path_prefix="/api/event")
        for _ in range(2):
            self.assert_nginx_html(c.request("POST", "/api/event", event_body()), 502, "Bad Gateway")
        self.assertEqual(c.request("POST", "/api/event", event_body()).status, 201)

    def test_status_after_processing_puts_the_event_in_doubt(self):
        c = self.logged_in_device()
        self.fault(kind="status", status=504, body="html", process=True, path="/api/event")
        self.assertEqual(c.request("POST", "/api/event", event_body()).status, 504)
        self.assertEqual(ctl("GET", "events?origin=api")["count"], 1)
        self.assertEqual(self.requests("/api/event")[0]["processed_status"], 201)

    def test_delay(self):
        c = self.logged_in_device()
        self.fault(kind="delay", delay_ms=300, path="/api/event")
        t0 = time.monotonic()
        self.assertEqual(c.request("GET", "/api/event").status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)

    def test_close_before_answering(self):
        c = self.client(direct())
        c.login()
        self.fault(kind="close", path="/api/event")
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            c.request("POST", "/api/event", event_body())
        self.assertEqual(ctl("GET", "events")["count"], 0)
        # Through nginx the same fault is the gateway's 502.
        g = self.logged_in_device()
        self.fault(kind="close", path="/api/event")
        self.assert_nginx_html(g.request("POST", "/api/event", event_body()), 502, "Bad Gateway")

    def test_store_then_drop_connection(self):
        c = self.client(direct())
        c.login()
        self.fault(kind="store_then_close")
        body = event_body()
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            c.request("POST", "/api/event", body)
        stored = ctl("GET", "events?origin=api")["events"]
        self.assertEqual([e["tags"] for e in stored], [body["tags"]])
        log = self.requests("/api/event")[0]
        self.assertEqual((log["answered"], log["processed_status"], log["fault_kind"]),
                         (False, 201, "store_then_close"))

    def test_reset_connection(self):
        c = self.client(direct())
        self.fault(kind="close", rst=True)
        with self.assertRaises((ConnectionResetError, http.client.RemoteDisconnected)):
            c.request("GET", "/api/event")

    def test_garbage(self):
        c = self.client(direct())
        c.login()
        self.fault(kind="garbage", mode="non-json", path="/api/event")
        r = c.request("POST", "/api/event", event_body())
        self.assertEqual(r.status, 201)
        self.assertIsNone(r.json)
        self.fault(kind="garbage", mode="truncated-json", path="/api/event")
        r = c.request("POST", "/api/event", event_body())
        self.assertEqual(r.status, 201)
        self.assertIsNone(r.json)
        self.assertTrue(r.body.startswith(b"{"))
        self.fault(kind="garbage", mode="short-body", path="/api/event")
        with self.assertRaises(http.client.IncompleteRead):
            c.request("POST", "/api/event", event_body())
        self.assertEqual(ctl("GET", "events?origin=api")["count"], 3)    # all were stored

    def test_unlimited_fault_until_removed(self):
        c = self.client(direct())
        f = self.fault(kind="status", status=429, retry_after=1, count=None)
        for _ in range(3):
            self.assertEqual(c.request("GET", "/api/cloud-entry-point").status, 429)
        ctl("DELETE", "faults/" + f["id"])
        self.assertEqual(c.request("GET", "/api/cloud-entry-point").status, 200)

    def test_bad_fault_spec_is_refused(self):
        req = urllib.request.Request(ENV["NUVLA_STANDIN_URL"] + "/_control/faults",
                                     data=json.dumps({"kind": "status"}).encode(), method="POST")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(req, timeout=5)
        self.assertEqual(cm.exception.code, 400)


# ------------------------------------------------------------------- validator

class ValidatorTest(unittest.TestCase):
    def test_good_bodies(self):
        body = event_body()
        self.assertEqual(schema.validate_event(body), [])
        self.assertEqual(schema.validate_event(body, strict=True), [])
        loose = event_body(timestamp="2026-03-01T10:15:42.1+01:00", category="alarm")
        del loose["acl"]
        self.assertEqual(schema.validate_event(loose), [])
        minimal = {"category": "user", "severity": "low", "content": {"resource": {"href": None}}}
        self.assertEqual(schema.validate_event(minimal), [])

    def test_bad_bodies_name_the_key(self):
        cases = [
            (event_body(extra=1), "extra"),
            (event_body(timestamp="2026-03-01T10:15:42.1234Z"), "timestamp"),
            (event_body(timestamp="2026-03-01T10:15:42"), "timestamp"),       # no zone
            (event_body(timestamp="2026-02-30T10:15:42.000Z"), "timestamp"),
            (event_body(category="info"), "category"),
            (event_body(severity="warning"), "severity"),
            (event_body(name=" "), "name"),
            (event_body(tags=["x", "x"]), "tags[1]"),
            (event_body(tags="x"), "tags"),
            (event_body(parent="job/"), "parent"),
            (event_body(success="true"), "success"),
            (event_body(acl={"owners": ["Nuvlabox/1"]}), "acl.owners[0]"),
            (event_body(acl={"view-data": ["user/x"]}), "acl.owners"),
            (event_body(content={"resource": {}}), "content.resource.href"),
            (event_body(content={"resource": {"href": None, "content": []}}),
             "content.resource.content"),
            (event_body(content={"resource": {"href": None}, "linked-identifiers": [1]}),
             "content.linked-identifiers[0]"),
            (event_body(content={"resource": {"href": None}, "state": 3}), "content.state"),
            (event_body(**{"authn-info": {"user-id": "x", "foo": 1}}), "authn-info.foo"),
            ({"severity": "low", "content": {"resource": {"href": None}}}, "category"),
            ([], "(body)"),
        ]
        for body, key in cases:
            problems = schema.validate_event(body)
            self.assertTrue(problems, "accepted: %r" % (body,))
            self.assertTrue(any(p.startswith(key + ":") for p in problems), (key, problems))

    def test_strict_mode(self):
        for over, key in (({"timestamp": "2026-03-01T10:15:42.12Z"}, "timestamp"),
                          ({"timestamp": "2026-03-01T11:15:42.123+01:00"}, "timestamp"),
                          ({"category": "alarm"}, "category"),
                          ({"id": "event/x"}, "id"),
                          ({"created-by": "nuvlabox/x"}, "created-by"),
                          ({"authn-info": {}}, "authn-info")):
            body = event_body(**over)
            self.assertEqual(schema.validate_event(body), [], over)       # the server accepts
            problems = schema.validate_event(body, strict=True)
            self.assertTrue(any(p.startswith(key + ":") for p in problems), (over, problems))
        body = event_body()
        del body["timestamp"]
        self.assertEqual(schema.validate_event(body), [])
        self.assertIn("timestamp: missing required key", schema.validate_event(body, strict=True))

    def test_command_line(self):
        script = os.path.join(HERE, "schema.py")
        with tempfile.TemporaryDirectory() as d:
            good = os.path.join(d, "good.jsonl")
            with open(good, "w") as f:
                f.write(json.dumps(event_body()) + "\n\n" + json.dumps(event_body()) + "\n")
            bad = os.path.join(d, "bad.json")
            with open(bad, "w") as f:
                json.dump([event_body(), event_body(foo=1, severity="x")], f)
            p = subprocess.run([sys.executable, script, "--strict", good],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.assertEqual((p.returncode, p.stdout), (0, b""), p.stderr)
            p = subprocess.run([sys.executable, script, good, bad], stdout=subprocess.PIPE)
            self.assertEqual(p.returncode, 1)
            lines = p.stdout.decode().splitlines()
            self.assertEqual(lines, ["%s:[1]: foo: unknown key (closed map)" % bad,
                                     "%s:[1]: severity: must be one of critical high medium low"
                                     % bad])
            p = subprocess.run([sys.executable, script, "-"], input=b"{not json}\n",
                               stdout=subprocess.PIPE)
            self.assertEqual(p.returncode, 1)
            self.assertTrue(p.stdout.startswith(b"<stdin>:line 1: invalid JSON"), p.stdout)


# ------------------------------------------------------------------ harness CLI

class HarnessCliTest(unittest.TestCase):
    def test_run_exports_env_returns_status_and_stops(self):
        with tempfile.TemporaryDirectory() as d:
            probe = ("import os, urllib.request; urllib.request.urlopen("
                     "os.environ['NUVLA_STANDIN_URL'] + '/_control/health', timeout=5)")
            script = ('test -n "$NUVLA_GATEWAY_URL" && test -r "$NUVLA_TEST_CLIENT_KEY" && '
                      '"$0" -c "$1" && exit 7')
            p = subprocess.run([sys.executable, os.path.join(HERE, "harness.py"), "run",
                                "--dir", d, "--", "sh", "-c", script, sys.executable, probe],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            self.assertEqual(p.returncode, 7, p.stderr)
            with open(os.path.join(d, "env.json")) as f:
                procs = json.load(f)["processes"]
            self.assertEqual(oct(os.stat(os.path.join(d, "env.json")).st_mode & 0o777), "0o600")
            for info in procs.values():
                self.assertFalse(harness._alive(info["pid"], info["starttime"]), info)
            with open(os.path.join(d, "env.json")) as f:
                port = int(json.load(f)["env"]["NUVLA_GATEWAY_PORT"])
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
