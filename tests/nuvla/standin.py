#!/usr/bin/env python3
"""Nuvla API stand-in for the agent's integration tests.

Plain HTTP/1.1 with keep-alive on a loopback port. In the tests it sits behind
nginx, which terminates (m)TLS; the control API under /_control/ is reached
directly on the stand-in's own port and never through nginx.

It reproduces what NUVLA-CONTRACT.md says about the real server, read against
the server's sources, and is never friendlier than the real thing:

* errors are Nuvla JSON documents {"status","message","resource-id"?}; there
  is no 401 (missing/expired credentials give 403); unknown resource types
  give 405 and unknown actions 404, as the real router does;
* POST /api/session (api-key template) -> 201 + Set-Cookie; the cookie is the
  only credential (the nuvla-authn-info header is recorded, never trusted);
* POST /api/event validates the closed schema (schema.py) after the server's
  own stamping (id, created, updated, created-by, category forced to "user"),
  stores the event, and makes it searchable only after the refresh delay; a
  GET by id sees it at once; PUT on an event is 405;
* queries: filter (CIMI grammar, see cimi.py), orderby, first/last, select,
  GET or form-encoded PUT, ACL-filtered, Elasticsearch-like semantics;
* nuvlabox activate / commission / heartbeat, job edit (409 when final) and
  get-context, with the server's state checks and messages;
* request bodies may be gzip (Content-Encoding: gzip exactly); JSON is parsed
  only with a JSON Content-Type, and malformed JSON gets ring-json's text/plain
  400, as on the real server.

Fault injection, state inspection and configuration: see README.md or
`Control` below. Standard library only (Debian 12 python3.11).
"""

import argparse
import collections
import datetime
import gzip
import hashlib
import http.server
import json
import os
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cimi  # noqa: E402
import schema  # noqa: E402

DEFAULT_COOKIE_NAME = "com.com.sixsq.nuvla.cookie"   # api-server master (authn_info.clj)
LEGACY_COOKIE_NAME = "com.sixsq.nuvla.cookie"        # older servers
ONE_WEEK = 7 * 24 * 3600
MAX_BODY = 16 * 1024 * 1024        # direct clients only; nginx caps at 1m first
MAX_REQUEST_LOG = 50000            # the request log keeps the newest entries

ADMIN, ANON, USER, NB_GROUP = ("group/nuvla-admin", "group/nuvla-anon",
                               "group/nuvla-user", "group/nuvla-nuvlabox")
TYPES = ("event", "nuvlabox", "job", "credential", "session")
COLLECTION_ACL = {
    "event": {"query": [USER], "add": [USER], "bulk-delete": [USER]},
    "nuvlabox": {"query": [USER], "add": [USER], "bulk-action": [USER]},
    "job": {"query": [USER], "add": [ADMIN], "bulk-delete": [ADMIN]},
    "credential": {"query": [USER], "add": [USER]},
    "session": {"query": [USER], "add": [ANON]},
}
NB_STATES = ("NEW", "ACTIVATED", "COMMISSIONED", "DECOMMISSIONING", "DECOMMISSIONED",
             "ERROR", "SUSPENDED")
JOB_STATES = ("QUEUED", "RUNNING", "SUCCESS", "FAILED", "CANCELED")
JOB_FINAL = ("SUCCESS", "FAILED", "CANCELED")
# job action -> nuvlabox operation, for the server's own request events.
JOB_ACTION_OP = {"reboot_nuvlabox": "reboot", "nuvlabox_add_ssh_key": "add-ssh-key",
                 "nuvlabox_revoke_ssh_key": "revoke-ssh-key",
                 "decommission_nuvlabox": "decommission", "nuvlabox_update": "update-nuvlabox"}
SSH_KEY_ACTIONS = ("nuvlabox_add_ssh_key", "nuvlabox_revoke_ssh_key")


# --------------------------------------------------------------------- helpers

def iso_now(t=None):
    """The server's timestamp format: UTC, exactly milliseconds, 'Z'."""
    dt = datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def rfc1123(t):
    """java.time RFC_1123_DATE_TIME, as the server writes cookie expiry dates."""
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return "%s, %d %s %d %s GMT" % (
        ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[dt.weekday()], dt.day,
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
         "Dec")[dt.month - 1], dt.year, dt.strftime("%H:%M:%S"))


def dumps(obj):
    """Pretty JSON with ASCII escapes, as the server's wrap-json-response writes."""
    return (json.dumps(obj, indent=2, separators=(",", " : "), ensure_ascii=True) + "\n").encode()


def norm_id(value, rtype):
    """'<uuid>' or '<rtype>/<uuid>' -> '<rtype>/<uuid>' (None stays None)."""
    if value is None:
        return None
    value = str(value)
    return value if value.startswith(rtype + "/") else "%s/%s" % (rtype, value)


def new_id(rtype):
    return "%s/%s" % (rtype, uuid.uuid4())


def _digest(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def _first_long(values):
    """cimi-params first-valid-long: the first value that parses as a Java long."""
    for v in values or ():
        s = v.strip() if isinstance(v, str) else str(v)
        if s and (s.isdigit() or (s[0] in "+-" and s[1:].isdigit())):
            n = int(s)
            if -2 ** 63 <= n < 2 ** 63:
                return n
    return None


def _comma_split(values):
    out = []
    for v in values or ():
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


# ------------------------------------------------------------------ ACL model

# auth/acl_resource.clj rights hierarchy: right -> rights it implies.
_IMPLIES = {"edit-acl": ("edit-data", "delete", "manage", "view-acl"),
            "edit-data": ("edit-meta", "view-data"), "edit-meta": ("view-meta",),
            "delete": ("view-meta",), "view-acl": ("view-data",), "view-data": ("view-meta",)}
ALL_RIGHTS = frozenset(("edit-acl", "edit-data", "edit-meta", "delete", "manage", "view-acl",
                        "view-data", "view-meta", "query", "add", "bulk-delete", "bulk-action"))
VIEW_RIGHTS = ("view-meta", "view-data", "view-acl")
EDIT_RIGHTS = ("edit-meta", "edit-data", "edit-acl")
METADATA_KEYS = frozenset(("id", "resource-type", "created", "updated", "name", "description",
                           "tags", "subtype", "parent", "resource-metadata", "operations"))


def _closure(right):
    out, todo = set(), [right]
    while todo:
        r = todo.pop()
        for s in _IMPLIES.get(r, ()):
            if s not in out:
                out.add(s)
                todo.append(s)
    return out


def normalize_acl(acl):
    """What the database stores: admin gets edit-acl, every right is listed
    explicitly with the rights it implies, owners are not repeated."""
    acl = {k: list(v) for k, v in acl.items()}
    acl["edit-acl"] = sorted(set(acl.get("edit-acl", [])) | {ADMIN})
    owners = set(acl.get("owners", []))
    out = {}
    for right, principals in acl.items():
        if right == "owners":
            continue
        p = set(principals) - owners
        if not p:
            continue
        for r in {right} | _closure(right):
            out.setdefault(r, set()).update(p)
    out["owners"] = owners
    return {k: sorted(v) for k, v in sorted(out.items())}


class Identity:
    """The caller as the server sees it: a user id and a set of claims."""

    def __init__(self, user_id=None, claims=(), session=None):
        self.user_id = user_id
        self.claims = frozenset(claims) | {ANON}
        self.session = session

    @property
    def active_claim(self):
        return self.user_id

    @property
    def is_admin(self):
        return ADMIN in self.claims


ANONYMOUS = Identity()


def extract_rights(ident, acl):
    if ident.claims & set(acl.get("owners", ())) or ident.is_admin:
        return ALL_RIGHTS
    rights = set()
    for right, principals in acl.items():
        if right != "owners" and ident.claims & (set(principals) | {ADMIN}):
            rights.add(right)
    return rights


def has_rights(ident, acl, required):
    return bool(set(required) & extract_rights(ident, acl))


def query_visible(ident, acl):
    """The database-level filter of a query: acl.owners or acl.view-meta."""
    return bool(ident.claims & (set(acl.get("owners", ())) | set(acl.get("view-meta", ()))))


def select_viewable(doc, ident):
    """acl_resource select-viewable-keys: full, without acl, metadata, or None."""
    rights = extract_rights(ident, doc.get("acl", {}))
    if "view-acl" in rights:
        return dict(doc)
    if "view-data" in rights:
        return {k: v for k, v in doc.items() if k != "acl"}
    if "view-meta" in rights:
        return {k: v for k, v in doc.items() if k in METADATA_KEYS}
    return None


# ------------------------------------------------------------- responses/errors

class Response:
    """A complete HTTP answer. truncate_to/close are for fault injection."""

    def __init__(self, status, body=b"", content_type=None, headers=None, close=False):
        self.status = status
        self.body = body
        self.headers = list(headers or [])
        if content_type:
            self.headers.insert(0, ("Content-Type", content_type))
        self.close = close
        self.truncate_to = None

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


JSON_TYPE = "application/json; charset=utf-8"


def json_response(status, obj, headers=None):
    return Response(status, dumps(obj), JSON_TYPE, headers)


def text_response(status, text, ctype="text/plain"):
    return Response(status, text.encode(), ctype)


class ApiError(Exception):
    """A Nuvla error document (util/response.clj map-response)."""

    def __init__(self, status, message, resource_id=None):
        super().__init__(message)
        self.status, self.message, self.resource_id = status, message, resource_id

    def response(self):
        body = {"status": self.status, "message": self.message}
        if self.resource_id is not None:
            body["resource-id"] = self.resource_id
        return json_response(self.status, body)


def unauthorized(rid=None):
    return ApiError(403, "invalid credentials for '%s'" % rid if rid else "credentials required", rid)


def not_found(rid):
    return ApiError(404, "%s not found" % rid, rid)


def bad_method(method, uri):
    return ApiError(405, "invalid method (%s) for %s" % (method.lower(), uri), uri)


def bad_action(method, uri, rtype, action):
    return ApiError(404, 'undefined action (%s, ["%s" "%s"]) for %s'
                    % (method.lower(), rtype, action, uri), uri)


def action_conflict(rid, action):
    return ApiError(409, "operation '%s' not allowed on %s" % (action, rid), rid)


def schema_error(rid, problems):
    return ApiError(400, "resource %sdoes not satisfy defined schema:\n%s"
                    % (rid + " " if rid else "", "\n".join(problems)))


def bad_request(msg):
    return ApiError(400, msg)


_NGINX_REASON = {502: "Bad Gateway", 503: "Service Temporarily Unavailable",
                 504: "Gateway Time-out", 413: "Request Entity Too Large"}


def html_error_page(status):
    """An error page shaped like nginx's own, for 'gateway' faults."""
    try:
        reason = _NGINX_REASON.get(status) or http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    title = "%d %s" % (status, reason)
    return ("<html>\r\n<head><title>%s</title></head>\r\n<body>\r\n<center><h1>%s</h1></center>"
            "\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n" % (title, title)).encode()


# -------------------------------------------------------------- the job schema

_JOB_KEYS = frozenset(("id", "resource-type", "created", "updated", "acl", "name", "description",
                       "tags", "parent", "resource-metadata", "operations", "created-by",
                       "updated-by", "state", "action", "progress", "execution-mode", "version",
                       "target-resource", "affected-resources", "return-code", "status-message",
                       "time-of-status-change", "parent-job", "nested-jobs", "priority",
                       "started", "duration", "expiry", "output", "payload"))


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate_job(doc):
    """spec/job.cljc, closed: returns a list of problems."""
    errs = ["%s: unknown key (closed map)" % k for k in sorted(set(doc) - _JOB_KEYS)]
    for k in ("state", "action", "progress", "execution-mode", "version"):
        if k not in doc:
            errs.append("%s: missing required key" % k)
    if "state" in doc and doc["state"] not in JOB_STATES:
        errs.append("state: must be one of %s" % " ".join(JOB_STATES))
    if "progress" in doc and not (_int(doc["progress"]) and 0 <= doc["progress"] <= 100):
        errs.append("progress: must be an integer in 0..100")
    for k in ("return-code", "duration", "version"):
        if k in doc and not (_int(doc[k]) and doc[k] >= 0):
            errs.append("%s: must be a non-negative integer" % k)
    if "priority" in doc and not (_int(doc["priority"]) and 0 <= doc["priority"] <= 999):
        errs.append("priority: must be an integer in 0..999")
    for k in ("status-message", "output", "payload", "action"):
        if k in doc and not (isinstance(doc[k], str) and doc[k].strip()):
            errs.append("%s: must be a non-blank string" % k)
    if "execution-mode" in doc and doc["execution-mode"] not in ("pull", "push", "mixed"):
        errs.append("execution-mode: must be one of pull push mixed")
    for k in ("time-of-status-change", "started", "expiry", "created", "updated"):
        if k in doc and not schema.is_timestamp(doc[k]):
            errs.append("%s: must be a timestamp" % k)
    tr = doc.get("target-resource")
    if "target-resource" in doc and not (isinstance(tr, dict) and isinstance(tr.get("href"), str)
                                         and schema.RESOURCE_HREF_RE.fullmatch(tr["href"])):
        errs.append("target-resource: must be {\"href\": <resource href>}")
    ar = doc.get("affected-resources")
    if "affected-resources" in doc and not (isinstance(ar, list) and ar and all(
            isinstance(x, dict) and isinstance(x.get("href"), str) for x in ar)):
        errs.append("affected-resources: must be a non-empty array of {\"href\"}")
    return errs


# ------------------------------------------------------------------- requests

class ApiRequest:
    """One /api request as the handlers see it (parsed once, logged afterwards)."""

    def __init__(self, method, path, query, headers, raw):
        self.method, self.path, self.query, self.headers, self.raw = method, path, query, headers, raw
        self.params = urllib.parse.parse_qs(query, keep_blank_values=True)
        self.json = None            # parsed JSON body (None if none / not JSON)
        self.body_note = None       # why the body was not parsed, for the log
        self.identity = ANONYMOUS
        self.filter = None          # parsed CIMI filter AST

    def header(self, name):
        return self.headers.get(name)

    def log_body(self):
        """The parsed body for the request log, with the login secret masked."""
        body = self.json
        if isinstance(body, dict) and isinstance(body.get("template"), dict) \
                and "secret" in body["template"]:
            body = dict(body, template=dict(body["template"], secret="<redacted>"))
        return body


class Fault:
    """One fault-injection rule; `count` None means until removed."""

    KINDS = ("status", "delay", "close", "store_then_close", "garbage")
    GARBAGE = ("non-json", "truncated-json", "short-body")
    KEYS = frozenset(("kind", "count", "method", "path", "path_prefix", "process", "rst",
                      "status", "retry_after", "body", "message", "delay_ms", "when", "mode"))

    def __init__(self, fid, spec):
        kind = spec.get("kind")
        if kind not in self.KINDS:
            raise ValueError("kind must be one of %s" % ", ".join(self.KINDS))
        unknown = sorted(set(spec) - self.KEYS)
        if unknown:
            raise ValueError("unknown fault keys: %s" % ", ".join(unknown))
        self.id, self.kind = fid, kind
        count = spec.get("count", 1)
        if count is not None and (not _int(count) or count < 1):
            raise ValueError("count must be a positive integer or null (unlimited)")
        self.count = count
        self.method = spec.get("method", "POST" if kind == "store_then_close" else None)
        self.method = self.method.upper() if self.method else None
        self.path = spec.get("path", "/api/event" if kind == "store_then_close" else None)
        self.path_prefix = spec.get("path_prefix")
        self.process = bool(spec.get("process", kind in ("store_then_close", "garbage")))
        self.rst = bool(spec.get("rst", False))
        self.status = spec.get("status")
        self.retry_after = spec.get("retry_after")
        self.body = spec.get("body", "nuvla")
        self.message = spec.get("message")
        self.delay_ms = spec.get("delay_ms", 0)
        self.when = spec.get("when", "after")
        self.mode = spec.get("mode", "non-json")
        if kind == "status" and not (_int(self.status) and 100 <= self.status <= 599):
            raise ValueError("status fault needs an HTTP status 100..599")
        if kind == "status" and self.body not in ("nuvla", "html", "text", "empty"):
            raise ValueError("body must be nuvla, html, text or empty")
        if kind == "delay" and not (isinstance(self.delay_ms, (int, float)) and self.delay_ms >= 0):
            raise ValueError("delay needs delay_ms >= 0")
        if kind == "delay" and self.when not in ("before", "after"):
            raise ValueError("when must be before or after")
        if kind == "garbage" and self.mode not in self.GARBAGE:
            raise ValueError("mode must be one of %s" % ", ".join(self.GARBAGE))
        if kind == "store_then_close":
            self.process = True

    def matches(self, method, path):
        return ((self.method is None or self.method == method)
                and (self.path is None or self.path == path)
                and (self.path_prefix is None or path.startswith(self.path_prefix)))

    def describe(self):
        d = {"id": self.id, "kind": self.kind, "remaining": self.count, "method": self.method,
             "path": self.path, "path_prefix": self.path_prefix}
        extra = {"status": ("status", "retry_after", "body", "message", "process"),
                 "delay": ("delay_ms", "when"), "close": ("process", "rst"),
                 "store_then_close": ("rst",), "garbage": ("mode", "status", "process")}[self.kind]
        for k in extra:
            d[k] = getattr(self, k)
        return d

    def apply(self, resp):
        """Turns the real response (None if not processed) into the faulty one;
        None means: close the connection without answering."""
        if self.kind in ("close", "store_then_close"):
            return None
        if self.kind == "status":
            headers = []
            if self.retry_after is not None:
                headers.append(("Retry-After", str(self.retry_after)))
            if self.body == "nuvla":
                r = ApiError(self.status, self.message or "injected failure").response()
                r.headers += headers
                return r
            if self.body == "html":
                return Response(self.status, html_error_page(self.status), "text/html", headers)
            if self.body == "text":
                return Response(self.status, (self.message or "injected failure").encode(),
                                "text/plain", headers)
            return Response(self.status, b"", None, headers)
        # garbage
        status = self.status or (resp.status if resp is not None else 200)
        real = resp.body if resp is not None and resp.body else dumps(
            {"status": status, "message": "injected garbage"})
        if self.mode == "non-json":
            return Response(status, b"<<garbage>> this is not JSON \x00\xff", JSON_TYPE)
        if self.mode == "truncated-json":
            return Response(status, real[:max(1, len(real) // 2)], JSON_TYPE)
        r = Response(status, real, JSON_TYPE, close=True)       # short-body
        r.truncate_to = max(0, len(real) // 2)
        return r


# ------------------------------------------------------------------- the server

class Standin:
    """All state and behaviour; one re-entrant lock makes it thread-safe."""

    def __init__(self, config, seed=None, log=None):
        self.lock = threading.RLock()
        self.defaults = dict(config)
        self.seed = seed
        self.log = log or (lambda line: None)
        self.reset(apply_seed=True)

    # ---------------------------------------------------------------- state
    def reset(self, apply_seed=True):
        with self.lock:
            self.config = dict(self.defaults)
            self.docs = {t: {} for t in TYPES}     # type -> id -> public document
            self.meta = {}                         # id -> private bookkeeping
            self.tokens = {}                       # cookie value -> session id
            self.faults = []
            self.fault_seq = 0
            self.requests = collections.deque(maxlen=MAX_REQUEST_LOG)
            self.request_seq = 0
            self.doc_seq = 0
            if apply_seed and self.seed:
                self.apply_seed(self.seed)

    def apply_seed(self, seed):
        for nb in seed.get("nuvlaboxes", ()):
            self.create_nuvlabox(nb)
        for cred in seed.get("credentials", ()):
            self.create_credential(cred)
        for job in seed.get("jobs", ()):
            self.create_job(job)

    def _put(self, doc, **meta):
        """Stores a document; searchable_at is when a query may first see it."""
        self.doc_seq += 1
        rtype = doc["resource-type"]
        self.docs[rtype][doc["id"]] = doc
        m = self.meta.setdefault(doc["id"], {})
        m.setdefault("seq", self.doc_seq)
        m.setdefault("searchable_at", 0.0)
        m.update(meta)

    def _get(self, rid):
        rtype = rid.split("/", 1)[0]
        return self.docs.get(rtype, {}).get(rid)

    def _indexed(self, doc, now):
        """What a search sees of doc: None before its first refresh, and the
        version of the last refresh while an edit made with {:refresh false}
        (job edits) is not yet refreshed. GET by id always sees doc itself."""
        m = self.meta[doc["id"]]
        if m["searchable_at"] > now:
            return None
        if m.get("stale_until", 0.0) > now:
            return m["stale_doc"]
        return doc

    def _edited_unrefreshed(self, old):
        """Records an edit the index will only see at the next refresh."""
        m = self.meta[old["id"]]
        now = time.monotonic()
        if m.get("stale_until", 0.0) <= now:        # else: the older view stays
            m["stale_doc"] = old
            m["stale_until"] = now + float(self.config["refresh_delay"])

    # ------------------------------------------------------------- identity
    def identity_for(self, cookie_header):
        """The session behind the configured cookie, if valid and not expired."""
        token = None
        for part in (cookie_header or "").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == self.config["cookie_name"]:
                token = urllib.parse.unquote(value.strip().strip('"'))
                break
        sid = self.tokens.get(token) if token else None
        m = self.meta.get(sid) if sid else None
        if not m or m["expires"] <= time.time():
            return ANONYMOUS
        return Identity(m["identity"], m["claims"], sid)

    # ------------------------------------------------------- control: create
    def create_nuvlabox(self, spec):
        u = spec.get("uuid") or spec.get("id") or str(uuid.uuid4())
        nid = norm_id(u, "nuvlabox")
        if not schema.RESOURCE_HREF_RE.fullmatch(nid):
            raise ValueError("bad nuvlabox id %r" % nid)
        if nid in self.docs["nuvlabox"]:
            raise ValueError("%s already exists" % nid)
        owner = spec.get("owner") or new_id("user")
        state = spec.get("state", "NEW")
        if state not in NB_STATES:
            raise ValueError("state must be one of %s" % " ".join(NB_STATES))
        now = iso_now()
        doc = {"id": nid, "resource-type": "nuvlabox", "created": now, "updated": now,
               "created-by": owner, "state": state, "owner": owner, "version": 2,
               "refresh-interval": 60, "heartbeat-interval": 20,
               "acl": normalize_acl({"owners": [ADMIN], "manage": [nid], "view-data": [nid],
                                     "edit-acl": [owner]})}
        for k in ("name", "description", "tags", "capabilities", "ssh-keys", "online"):
            if k in spec:
                doc[k] = spec[k]
        if state != "NEW":
            doc["nuvlabox-status"] = new_id("nuvlabox-status")
        self._put(doc, commissions=[], heartbeats=0)
        out = {"id": nid, "uuid": nid.split("/", 1)[1], "owner": owner, "state": state,
               "nuvlabox": doc}
        if spec.get("credential"):
            out["credential"] = self.create_credential({"nuvlabox": nid})
        return out

    def create_credential(self, spec):
        """An api-key credential for a nuvlabox (device claims) or any identity."""
        nb = norm_id(spec.get("nuvlabox"), "nuvlabox")
        identity = spec.get("identity")
        if nb:
            if nb not in self.docs["nuvlabox"]:
                raise ValueError("%s does not exist" % nb)
            identity = nb
            roles = [nb, USER, ANON, NB_GROUP]
        elif identity:
            roles = [identity, USER, ANON]
        else:
            raise ValueError("give nuvlabox or identity")
        roles = list(spec.get("claims") or roles)
        cid = norm_id(spec.get("key") or str(uuid.uuid4()), "credential")
        if cid in self.docs["credential"]:
            raise ValueError("%s already exists" % cid)
        secret = spec.get("secret") or secrets.token_urlsafe(32)
        now = iso_now()
        owner = self.docs["nuvlabox"][nb]["owner"] if nb else identity
        doc = {"id": cid, "resource-type": "credential", "subtype": "api-key",
               "method": "generate-api-key", "created": now, "updated": now,
               "claims": {"identity": identity, "roles": sorted(set(roles))},
               "acl": normalize_acl({"owners": [ADMIN], "view-acl": [owner],
                                     "delete": [owner], "view-meta": [identity]})}
        if nb:
            doc["parent"] = nb
        if spec.get("expiry"):
            doc["expiry"] = spec["expiry"]
        self._put(doc, digest=_digest(secret))
        return {"api-key": cid, "secret-key": secret, "identity": identity,
                "claims": doc["claims"]["roles"]}

    def create_job(self, spec):
        action = spec.get("action")
        target = norm_id(spec.get("target") or spec.get("target-resource"), "nuvlabox")
        if not action or not target:
            raise ValueError("a job needs action and target")
        nb = self.docs["nuvlabox"].get(target)
        if nb is None:
            raise ValueError("%s does not exist" % target)
        jid = norm_id(spec.get("uuid") or str(uuid.uuid4()), "job")
        now = iso_now()
        created_by = spec.get("created-by") or nb["owner"]
        payload = spec.get("payload")
        if payload is not None and not isinstance(payload, str):
            payload = json.dumps(payload)
        affected = [{"href": target}]
        out_extra = {}
        if spec.get("public-key"):
            # An ssh-key credential for get-context to return, as add-ssh-key does.
            cred_id = new_id("credential")
            self._put({"id": cred_id, "resource-type": "credential", "subtype": "ssh-key",
                       "method": "generate-ssh-key", "public-key": spec["public-key"],
                       "created": now, "updated": now,
                       "acl": normalize_acl({"owners": [ADMIN], "edit-acl": [nb["owner"]]})})
            affected.append({"href": cred_id})
            out_extra["credential"] = cred_id
        if spec.get("credential"):
            affected.append({"href": norm_id(spec["credential"], "credential")})
        acl = spec.get("acl")
        if acl is None:
            acl = {"owners": [ADMIN], "view-data": [target], "edit-acl": [nb["owner"]],
                   "manage": [target]}
            if spec.get("device_can_edit", True):
                acl["edit-data"] = [target]
        doc = {"id": jid, "resource-type": "job", "action": action,
               "state": spec.get("state", "QUEUED"), "progress": spec.get("progress", 0),
               "execution-mode": spec.get("execution-mode", "pull"), "version": 2,
               "target-resource": {"href": target}, "affected-resources": affected,
               "created": now, "updated": now, "created-by": created_by, "priority": 50,
               "acl": normalize_acl(acl)}
        if payload is not None:
            doc["payload"] = payload
        for k in ("status-message", "return-code", "parent-job"):
            if k in spec:
                doc[k] = spec[k]
        errs = validate_job(doc)
        if errs:
            raise ValueError("; ".join(errs))
        self._put(doc, context=spec.get("context"))
        op = JOB_ACTION_OP.get(action)
        if op and spec.get("server_event", True):
            self._server_event(op, nb, True, [jid], created_by)
        return dict(doc, **out_extra)

    def _server_event(self, op, nb, success, linked, actor):
        """The server's own lifecycle event (middleware eventer.clj): owned by
        the nuvlabox's owner and admin; the device cannot see it."""
        if not self.config["server_events"]:
            return
        now = iso_now()
        eid = new_id("event")
        doc = {"id": eid, "resource-type": "event", "name": "nuvlabox.%s" % op,
               "description": "%s %s %s" % (actor, op, nb["id"]), "timestamp": now,
               "category": "action", "severity": "medium", "success": success,
               "content": {"resource": {"href": nb["id"]}, "linked-identifiers": list(linked)},
               "created": now, "updated": now, "created-by": actor,
               "acl": normalize_acl({"owners": [nb["owner"], ADMIN]})}
        self._put(doc, origin="server",
                  searchable_at=time.monotonic() + self.config["refresh_delay"])

    # ------------------------------------------------------------- the API
    def handle_api(self, req):
        """Answers one /api request; never raises."""
        try:
            pre = self.prepare(req)
            if pre is not None:
                return pre
            with self.lock:
                req.identity = self.identity_for(req.header("Cookie"))
                return self._route(req)
        except ApiError as e:
            return e.response()
        except Exception as e:  # the server's wrap-exceptions
            self.log("ERROR %s %s: %s" % (req.method, req.path, traceback.format_exc()))
            return ApiError(500, "Unexpected exception thrown: %s" % e).response()

    def prepare(self, req):
        """Middleware in the server's order: gunzip, JSON body, form params,
        CIMI params. Returns a Response to stop early, else None."""
        raw = req.raw
        if req.header("Content-Encoding") == "gzip":       # exact match, as gzip.clj
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                req.body_note = "bad gzip body"
                # Outside the server's exception handler: a bare 500.
                return text_response(500, "Internal Server Error")
        ctype = (req.header("Content-Type") or "").strip().lower()
        if ctype.startswith("application/") and ctype.split(";")[0].endswith("json"):
            if raw:
                try:
                    req.json = schema.loads_strict(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    req.body_note = "malformed JSON"
                    return text_response(400, "Malformed JSON in request body.")
        elif ctype.startswith("application/x-www-form-urlencoded") and raw:
            form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
            for k, v in form.items():
                req.params.setdefault(k, []).extend(v)
            req.json = {k: v if len(v) > 1 else v[0] for k, v in form.items()}
        elif raw:
            req.body_note = "body ignored (Content-Type %r)" % ctype
        try:
            req.filter = cimi.parse_params(req.params.get("filter"))
        except cimi.FilterError as e:
            return ApiError(400, "Invalid CIMI filter. " + e.message()).response()
        return None

    def _route(self, req):
        path, m = req.path, req.method
        if not path.startswith("/api/"):
            raise ApiError(404, "unknown resource", path)
        parts = path[len("/api/"):].split("/")
        if len(parts) > 3 or any(p == "" for p in parts):
            raise ApiError(404, "unknown resource", path)
        if m == "OPTIONS":
            return Response(204)
        rtype = parts[0]
        if rtype == "cloud-entry-point" and len(parts) == 1:
            if m != "GET":
                raise bad_method(m, path)
            return self._cloud_entry_point(req)
        if len(parts) == 1:
            return self._collection(req, rtype)
        rid = "%s/%s" % (rtype, parts[1])
        if len(parts) == 2:
            return self._resource(req, rtype, rid)
        return self._action(req, rtype, rid, parts[2])

    def _collection(self, req, rtype):
        m = req.method
        if rtype not in TYPES:
            raise bad_method(m, req.path)
        if m in ("GET", "PUT"):
            return self._query(req, rtype)
        if m == "POST" and rtype == "event":
            return self._add_event(req)
        if m == "POST" and rtype == "session":
            return self._login(req)
        if m == "POST" and rtype == "job":
            self._require(req.identity, COLLECTION_ACL["job"], "add")
        if m == "DELETE" and rtype == "event":
            return self._bulk_delete_events(req)
        raise bad_method(m, req.path)

    def _resource(self, req, rtype, rid):
        m = req.method
        if rtype not in TYPES:
            raise bad_method(m, req.path)
        if m == "GET":
            return self._retrieve(req, rid)
        if m == "PUT" and rtype == "job":
            return self._edit_job(req, rid)
        if m == "DELETE" and rtype in ("event", "session"):
            return self._delete(req, rid)
        raise bad_method(m, req.path)

    def _action(self, req, rtype, rid, action):
        handlers = {("nuvlabox", "activate"): self._activate,
                    ("nuvlabox", "commission"): self._commission,
                    ("nuvlabox", "heartbeat"): self._heartbeat,
                    ("job", "get-context"): self._get_context}
        h = handlers.get((rtype, action))
        if h is None:
            raise bad_action(req.method, req.path, rtype, action)
        return h(req, rid)          # actions accept any method, as the router does

    def _require(self, ident, collection_acl, right):
        if right not in extract_rights(ident, collection_acl):
            raise unauthorized()

    def _fetch(self, rid):
        doc = self._get(rid)
        if doc is None:
            raise not_found(rid)
        return doc

    def _with_operations(self, doc, ident):
        """crud/set-operations: what the caller may do with the document."""
        rid, acl, rtype = doc["id"], doc.get("acl", {}), doc.get("resource-type")
        ops = []
        if rtype == "event":
            if has_rights(ident, acl, EDIT_RIGHTS):
                ops.append({"rel": "delete", "href": rid})
        else:
            if has_rights(ident, acl, EDIT_RIGHTS):
                ops.append({"rel": "edit", "href": rid})
            if has_rights(ident, acl, ("delete",)):
                ops.append({"rel": "delete", "href": rid})
            if rtype == "job" and has_rights(ident, acl, ("manage",)):
                if doc.get("state") in ("QUEUED", "RUNNING"):
                    ops.append({"rel": "cancel", "href": rid + "/cancel"})
                if (ident.active_claim or "").startswith("nuvlabox/") or ident.is_admin:
                    ops.append({"rel": "get-context", "href": rid + "/get-context"})
            if rtype == "nuvlabox" and has_rights(ident, acl, ("manage",)):
                st = doc.get("state")
                allowed = {"activate": st == "NEW",
                           "commission": st in ("ACTIVATED", "COMMISSIONED"),
                           "decommission": st not in ("NEW", "DECOMMISSIONED"),
                           "heartbeat": st == "COMMISSIONED", "reboot": st == "COMMISSIONED",
                           "add-ssh-key": st == "COMMISSIONED",
                           "revoke-ssh-key": st == "COMMISSIONED"}
                ops += [{"rel": a, "href": "%s/%s" % (rid, a)} for a, ok in allowed.items() if ok]
        out = dict(doc)
        if ops:
            out["operations"] = ops
        else:
            out.pop("operations", None)
        return out

    def _select(self, doc, req):
        sel = self._select_set(req)
        if sel is None:
            return doc
        return {k: v for k, v in doc.items() if k in sel or k == "id"}

    def _select_set(self, req):
        sel = _comma_split(req.params.get("select"))
        if not sel or "*" in sel:
            return None
        return set(sel)

    # ------------------------------------------------------- generic CRUD
    def _retrieve(self, req, rid):
        doc = self._fetch(rid)
        if not has_rights(req.identity, doc.get("acl", {}), VIEW_RIGHTS):
            raise unauthorized(rid)
        doc = self._with_operations(doc, req.identity)
        return json_response(200, self._select(select_viewable(doc, req.identity), req))

    def _delete(self, req, rid):
        doc = self._fetch(rid)
        if not has_rights(req.identity, doc.get("acl", {}), ("delete",)):
            raise unauthorized(rid)
        del self.docs[doc["resource-type"]][rid]
        m = self.meta.pop(rid, {})
        headers = []
        if doc["resource-type"] == "session":
            self.tokens.pop(m.get("token"), None)
            headers.append(("Set-Cookie", "%s=INVALID;Path=/;Max-Age=0;Expires=%s"
                            % (self.config["cookie_name"], rfc1123(time.time()))))
        return json_response(200, {"status": 200, "message": "%s deleted" % rid,
                                   "resource-id": rid}, headers)

    def _query(self, req, rtype):
        ident = req.identity
        cacl = COLLECTION_ACL[rtype]
        self._require(ident, cacl, "query")
        first = max(1, _first_long(req.params.get("first")) or 1)
        last = _first_long(req.params.get("last"))
        frm = first - 1
        if last is None:
            size = 10000 - frm
        elif last == 0 or last < first:
            size = 0
        else:
            size = last - first + 1
        if frm + size > 10000:
            raise ApiError(500, "unexpected exception querying: java.lang.IllegalArgumentException: "
                                "First and last must be less than or equal to 10'000. Use filter "
                                "to limit the number of returned resources.")
        orderby = []
        for clause in _comma_split(req.params.get("orderby")):
            attr, _, direction = clause.rpartition(":")
            if direction not in ("asc", "desc"):
                attr, direction = clause, "asc"
            attr = attr.strip()
            if attr:
                orderby.append((tuple(attr.split("/")), direction))
        if not orderby and rtype == "event":
            orderby = [(("timestamp",), "desc")]       # event.clj default
        now = time.monotonic()
        hits = []
        for doc in self.docs[rtype].values():
            doc = self._indexed(doc, now)
            if doc is None:
                continue                                # not refreshed yet
            if not query_visible(ident, doc.get("acl", {})):
                continue
            try:
                if cimi.matches(req.filter, doc):
                    hits.append(doc)
            except cimi.QueryError as e:
                raise ApiError(500, "unexpected exception querying: %s" % e)
        hits = cimi.sort_docs(hits, orderby)
        page = hits[frm:frm + max(0, size)]
        sel = self._select_set(req)
        resources = []
        for doc in page:
            d = select_viewable(doc, ident)
            if d is None:
                continue
            if sel is None or "operations" in sel:
                d = self._with_operations(d, ident)
            resources.append(self._select(d, req))
        body = {"count": len(hits), "acl": cacl, "resource-type": "%s-collection" % rtype,
                "id": rtype, "resources": resources}
        ops = []
        if "add" in extract_rights(ident, cacl):
            ops.append({"rel": "add", "href": rtype})
        if "bulk-delete" in extract_rights(ident, cacl):
            ops.append({"rel": "bulk-delete", "href": rtype})
        if ops:
            body["operations"] = ops
        return json_response(200, body)

    def _cloud_entry_point(self, req):
        proto = req.header("X-Forwarded-Proto") or "http"
        host = req.header("Host") or "localhost"
        now = iso_now()
        return json_response(200, {
            "id": "cloud-entry-point", "resource-type": "cloud-entry-point",
            "base-uri": "%s://%s/api/" % (proto, host), "created": now, "updated": now,
            "collections": {t: {"href": t} for t in TYPES},
            "acl": {"owners": [ADMIN], "view-meta": [ANON]}})

    # -------------------------------------------------------------- session
    def _login(self, req):
        body = req.json if isinstance(req.json, dict) else {}
        tpl = body.get("template")
        if not isinstance(tpl, dict):
            raise schema_error(None, ["template: missing required key"])
        href = tpl.get("href")
        if href != "session-template/api-key":
            raise bad_request("requested href not found: %s" % href)
        key, secret = tpl.get("key"), tpl.get("secret")
        problems = ["template.%s: must be a non-blank string" % k
                    for k, v in (("key", key), ("secret", secret))
                    if not (isinstance(v, str) and v.strip())]
        if problems:
            raise schema_error(None, problems)
        cid = norm_id(key, "credential")
        cred = self.docs["credential"].get(cid)
        m = self.meta.get(cid, {})
        expiry = schema.parse_timestamp(cred.get("expiry")) if cred and cred.get("expiry") else None
        if (cred is None or cred.get("subtype") != "api-key" or "digest" not in m
                or (expiry is not None and expiry < time.time())
                or not secrets.compare_digest(m["digest"], _digest(secret))):
            raise unauthorized(cid)
        identity = cred["claims"]["identity"]
        sid = new_id("session")
        token = "%s.%s" % (secrets.token_urlsafe(24), secrets.token_urlsafe(32))
        expires = time.time() + float(self.config["session_lifetime"])
        now = iso_now()
        claims = set(cred["claims"]["roles"]) | {sid}
        doc = {"id": sid, "resource-type": "session", "method": "api-key",
               "identifier": identity, "template": {"href": href}, "expiry": iso_now(expires),
               "roles": " ".join(sorted(claims)), "created": now, "updated": now,
               "created-by": ANON,
               "acl": normalize_acl({"owners": [ADMIN], "delete": [identity],
                                     "view-data": [identity]})}
        self._put(doc, token=token, expires=expires, identity=identity, claims=sorted(claims),
                  credential=cid)
        self.tokens[token] = sid
        # ring's cookie writer: ;Attr[=value] with no spaces, in the order of
        # cookies.clj create-cookie (secure, path, http-only, expires).
        cookie = "%s=%s%s;Path=/;HttpOnly;Expires=%s" % (
            self.config["cookie_name"], urllib.parse.quote(token, safe="-_.*"),
            ";Secure" if self.config["cookie_secure"] else "", rfc1123(expires))
        return json_response(201, {"status": 201, "message": "%s created" % sid,
                                   "resource-id": sid},
                             [("Location", sid), ("Set-Cookie", cookie)])

    # ---------------------------------------------------------------- event
    def _add_event(self, req):
        ident = req.identity
        self._require(ident, COLLECTION_ACL["event"], "add")
        body = req.json if req.json is not None else {}
        if not isinstance(body, dict):
            raise schema_error(None, ["(body): must be a JSON object"])
        doc = dict(body)
        if doc.get("timestamp") is None:
            doc["timestamp"] = iso_now()
        if not ident.is_admin:
            doc["category"] = "user"                     # forced for non-admins
        # event.clj can-view-resource? reads body.resource.href (not
        # content.resource.href, a server quirk): an unknown one is a 404.
        top_res = doc.get("resource")
        if isinstance(top_res, dict) and top_res.get("href") is not None:
            href = str(top_res["href"])
            target = self._get(href)
            if target is None:
                raise not_found(href)
            if not has_rights(ident, target.get("acl", {}), VIEW_RIGHTS):
                raise unauthorized(href)
        for k in ("id", "created", "updated", "resource-type", "operations"):
            doc.pop(k, None)                              # strip-service-attrs
        eid = new_id("event")
        now = iso_now()
        doc.update({"id": eid, "resource-type": "event", "created": now, "updated": now,
                    "created-by": ident.user_id or ANON})
        if doc.get("acl") is None or doc.get("acl") is False:
            doc["acl"] = {"owners": [ident.active_claim]}
        problems = schema.validate_event(doc)
        if problems:
            raise schema_error(eid, problems)
        doc["acl"] = normalize_acl(doc["acl"])
        self._put(doc, origin="api",
                  searchable_at=time.monotonic() + float(self.config["refresh_delay"]))
        return json_response(201, {"status": 201, "message": "%s created" % eid,
                                   "resource-id": eid}, [("Location", eid)])

    def _bulk_delete_events(self, req):
        ident = req.identity
        if req.header("bulk") is None:
            raise bad_request("Bulk request should contain bulk http header.")
        if req.filter is None:
            raise bad_request("Bulk request should contain a non empty cimi filter.")
        self._require(ident, COLLECTION_ACL["event"], "bulk-delete")
        now = time.monotonic()
        doomed = [d["id"] for d in self.docs["event"].values()
                  if self.meta[d["id"]]["searchable_at"] <= now
                  and ident.claims & (set(d["acl"].get("owners", ())) | set(d["acl"].get("delete", ())))
                  and cimi.matches(req.filter, d)]
        for rid in doomed:
            del self.docs["event"][rid]
            self.meta.pop(rid, None)
        return json_response(200, {"total": len(doomed), "deleted": len(doomed), "failures": []})

    # ------------------------------------------------------------- nuvlabox
    def _activate(self, req, rid):
        nb = self._fetch(rid)
        if nb["state"] != "NEW":
            self._server_event("activate", nb, False, [], req.identity.user_id or ANON)
            raise action_conflict(rid, "activate")
        cred = self.create_credential({"nuvlabox": rid})
        now = iso_now()
        nb.update({"state": "ACTIVATED", "updated": now, "credential-api-key": cred["api-key"],
                   "nuvlabox-status": new_id("nuvlabox-status"),
                   "infrastructure-service-group": new_id("infrastructure-service-group")})
        self._server_event("activate", nb, True, [], req.identity.user_id or ANON)
        return json_response(200, {"api-key": cred["api-key"], "secret-key": cred["secret-key"]})

    def _commission(self, req, rid):
        nb = self._fetch(rid)
        if not has_rights(req.identity, nb["acl"], ("manage",)):
            raise unauthorized(rid)
        actor = req.identity.user_id
        if nb["state"] not in ("ACTIVATED", "COMMISSIONED"):
            self._server_event("commission", nb, False, [], actor)
            raise action_conflict(rid, "commission")
        body = req.json if req.json is not None else {}
        if not isinstance(body, dict):
            raise bad_request("commission body must be a JSON object")
        self.meta[rid]["commissions"].append(body)
        for k in ("capabilities", "ssh-keys", "tags"):    # replace, as the server does
            if k in body:
                nb[k] = body[k]
        nb.update({"state": "COMMISSIONED", "updated": iso_now()})
        self._server_event("commission", nb, True, [], actor)
        return json_response(200, {"status": 200, "message": "commission executed successfully"})

    def _heartbeat(self, req, rid):
        nb = self._fetch(rid)
        if not has_rights(req.identity, nb["acl"], ("manage",)):
            raise unauthorized(rid)
        if nb["state"] != "COMMISSIONED":
            raise action_conflict(rid, "heartbeat")
        nb["online"] = True
        self.meta[rid]["heartbeats"] += 1
        # utils/get-jobs: pull-mode, non-final jobs the nuvlabox can see, oldest first.
        who = Identity(rid, [rid, USER, ANON])
        now = time.monotonic()
        jobs = [j for j in (self._indexed(d, now) for d in self.docs["job"].values())
                if j is not None and j.get("execution-mode") == "pull"
                and j.get("state") not in JOB_FINAL and query_visible(who, j.get("acl", {}))]
        jobs = cimi.sort_docs(jobs, [(("created",), "asc")])
        return json_response(200, {"doc-last-updated": nb["updated"],
                                   "jobs": [j["id"] for j in jobs]})

    # ------------------------------------------------------------------ job
    def _edit_job(self, req, rid):
        job = self._fetch(rid)
        ident = req.identity
        rights = extract_rights(ident, job.get("acl", {}))
        if not rights & set(EDIT_RIGHTS):
            raise unauthorized(rid)
        if job["state"] in JOB_FINAL:
            raise ApiError(409, "edit is not allowed in final state", rid)
        body = req.json if isinstance(req.json, dict) else {}
        if "edit-acl" in rights:
            editable = set(body)
        elif "edit-data" in rights:
            editable = set(body) - {"acl"}
        else:
            editable = set(body) & METADATA_KEYS
        if not ident.is_admin:
            editable -= {"target-resource", "action"}          # immutable keys
        editable -= {"id", "resource-type", "created", "updated", "operations"}
        new = dict(job)
        new.update({k: body[k] for k in editable})
        now = iso_now()
        new.update({"updated": now, "updated-by": ident.user_id or ANON})
        new.pop("priority", None)                              # job-cond->edition
        if not new.get("started") and new.get("state") == "RUNNING":
            new["started"] = now
        if new.get("status-message"):
            new["time-of-status-change"] = now
            if isinstance(new["status-message"], str):
                new["status-message"] = new["status-message"][:100000]
        if new.get("state") in JOB_FINAL:
            new["progress"] = 100
            if new.get("started"):
                new["duration"] = max(0, int(time.time() - schema.parse_timestamp(new["started"])))
        problems = validate_job(new)
        if problems:
            raise schema_error(rid, problems)
        if "acl" in body and "acl" in editable:
            new["acl"] = normalize_acl(new["acl"])
        self._edited_unrefreshed(job)                  # job.clj edits with {:refresh false}
        self.docs["job"][rid] = new
        self.meta[rid].setdefault("edits", []).append(body)
        return json_response(200, new)

    def _get_context(self, req, rid):
        job = self._fetch(rid)
        ident = req.identity
        ok = ident.is_admin or (has_rights(ident, job.get("acl", {}), ("manage",))
                                and (ident.active_claim or "").startswith("nuvlabox/"))
        if not ok:
            raise unauthorized(rid)
        ctx = self.meta[rid].get("context")
        if ctx is not None:
            return json_response(200, ctx)
        out = {}
        if job.get("action") in SSH_KEY_ACTIONS:
            for ref in job.get("affected-resources", ()):
                href = ref.get("href", "")
                if href.startswith("credential/") and href in self.docs["credential"]:
                    c = {k: v for k, v in self.docs["credential"][href].items()
                         if k not in ("acl", "operations")}
                    out[href] = c
                    break
        return json_response(200, out)

    # ------------------------------------------------------------ faults/log
    def pick_faults(self, method, path):
        """Consumes the matching rules: every delay rule, plus the first other."""
        with self.lock:
            delays, action = [], None
            for f in list(self.faults):
                if not f.matches(method, path):
                    continue
                if f.kind == "delay":
                    delays.append(f)
                elif action is None:
                    action = f
                else:
                    continue
                if f.count is not None:
                    f.count -= 1
                    if f.count <= 0:
                        self.faults.remove(f)
            return delays, action

    def record(self, entry):
        with self.lock:
            self.request_seq += 1
            entry["seq"] = self.request_seq
            self.requests.append(entry)


# ------------------------------------------------------------------ control API

class Control:
    """The /_control/ API: JSON in, JSON out, never behind the gateway.

    GET    /_control/health                  -> {"ok": true}
    POST   /_control/reset      {"seed": true}   all state, faults, logs, config
    GET    /_control/state                   -> everything (secrets excluded)
    GET|PUT /_control/config    {"refresh_delay": s, "session_lifetime": s,
                                 "cookie_name": ..., "cookie_secure": bool,
                                 "server_events": bool}
    POST   /_control/refresh                 -> every stored event searchable now
    GET    /_control/sessions ; POST /_control/sessions/expire
    POST   /_control/nuvlabox   {"uuid"?, "owner"?, "state"?, "name"?, "credential"?: bool}
    GET|PUT|DELETE /_control/nuvlabox/<uuid>
    POST   /_control/credential {"nuvlabox": id | "identity": "user/..", "key"?, "secret"?}
    DELETE /_control/credential/<uuid>[?revoke_sessions=1]
    POST   /_control/job        {"action", "target", "state"?, "payload"?, "context"?,
                                 "public-key"?, "execution-mode"?, "acl"?, ...}
    GET|PUT /_control/job/<uuid> ; GET /_control/jobs
    GET|DELETE /_control/events [?origin=api|server] [?created_by=..]
    GET|DELETE /_control/requests [?since=N] [?path=..]
    POST|GET|DELETE /_control/faults ; DELETE /_control/faults/<id>
    """

    def __init__(self, app):
        self.app = app

    def handle(self, method, path, query, raw):
        params = urllib.parse.parse_qs(query)
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError) as e:
            return self._err(400, "body is not JSON: %s" % e)
        if not isinstance(body, dict):
            return self._err(400, "body must be a JSON object")
        parts = [p for p in path[len("/_control/"):].split("/") if p]
        key = (method, parts[0] if parts else "")
        arg = "/".join(parts[1:]) or None
        try:
            with self.app.lock:
                return self._dispatch(key, arg, params, body)
        except ValueError as e:
            return self._err(400, str(e))
        except KeyError as e:
            return self._err(404, "not found: %s" % e)
        except Exception as e:      # a bad control body must not kill the connection
            self.app.log("ERROR control %s %s: %s" % (method, path, traceback.format_exc()))
            return self._err(500, "%s: %s" % (type(e).__name__, e))

    @staticmethod
    def _err(status, msg):
        return json_response(status, {"error": msg})

    @staticmethod
    def _flag(params, body, name):
        v = body.get(name, (params.get(name) or [None])[0])
        return v in (True, 1, "1", "true", "yes")

    def _dispatch(self, key, arg, params, body):
        app = self.app
        method, what = key
        if key == ("GET", "health"):
            return json_response(200, {"ok": True})
        if key == ("POST", "reset"):
            app.reset(apply_seed=body.get("seed", True))
            return json_response(200, {"reset": True})
        if key == ("GET", "state"):
            return json_response(200, self._state())
        if what == "config" and method in ("GET", "PUT"):
            if method == "PUT":
                self._set_config(body)
            return json_response(200, app.config)
        if key == ("POST", "refresh"):
            for m in app.meta.values():
                m["searchable_at"] = 0.0
                m["stale_until"] = 0.0
            return json_response(200, {"refreshed": len(app.meta)})
        if what == "sessions":
            if method == "POST" and arg == "expire":
                n = 0
                for sid in app.docs["session"]:
                    if app.meta[sid]["expires"] > time.time():
                        n += 1
                    app.meta[sid]["expires"] = 0.0
                return json_response(200, {"expired": n})
            if method == "GET" and not arg:
                return json_response(200, {"sessions": self._sessions()})
        if what == "nuvlabox":
            return self._nuvlabox(method, arg, body)
        if what == "credential":
            if method == "POST" and not arg:
                return json_response(201, app.create_credential(body))
            if method == "DELETE" and arg:
                cid = norm_id(arg, "credential")
                if cid not in app.docs["credential"]:
                    raise KeyError(cid)
                cred = app.docs["credential"].pop(cid)
                app.meta.pop(cid, None)
                revoked = 0
                if self._flag(params, body, "revoke_sessions"):
                    for sid in app.docs["session"]:
                        m = app.meta[sid]
                        if m.get("credential") == cid and m["expires"] > time.time():
                            m["expires"] = 0.0
                            revoked += 1
                return json_response(200, {"deleted": cred["id"], "sessions_revoked": revoked})
        if what == "job":
            return self._job(method, arg, body)
        if key == ("GET", "jobs"):
            return json_response(200, {"jobs": list(app.docs["job"].values())})
        if what == "events" and not arg:
            return self._events(method, params)
        if what == "requests" and not arg:
            return self._requests(method, params)
        if what == "faults":
            return self._faults(method, arg, body)
        return self._err(404, "no such control endpoint: %s /_control/%s%s"
                         % (method, what, "/" + arg if arg else ""))

    def _set_config(self, body):
        cfg = self.app.config
        for k, v in body.items():
            if k not in cfg:
                raise ValueError("unknown config key %r (known: %s)" % (k, ", ".join(sorted(cfg))))
            if k in ("refresh_delay", "session_lifetime"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise ValueError("%s must be a number of seconds >= 0" % k)
                v = float(v)
            elif k in ("cookie_secure", "server_events"):
                if not isinstance(v, bool):
                    raise ValueError("%s must be a boolean" % k)
            elif k == "cookie_name":
                if not isinstance(v, str) or not v or any(c in v for c in " ;=,"):
                    raise ValueError("cookie_name must be a cookie token")
            cfg[k] = v

    def _sessions(self):
        now = time.time()
        out = []
        for sid in self.app.docs["session"]:
            m = self.app.meta[sid]
            out.append({"id": sid, "identity": m["identity"], "credential": m.get("credential"),
                        "expires": iso_now(m["expires"]) if m["expires"] else None,
                        "expired": m["expires"] <= now})
        return out

    def _state(self):
        app = self.app
        return {"config": app.config,
                "nuvlaboxes": [dict(d, **{"_commissions": app.meta[i]["commissions"],
                                          "_heartbeats": app.meta[i]["heartbeats"]})
                               for i, d in app.docs["nuvlabox"].items()],
                "credentials": list(app.docs["credential"].values()),
                "jobs": list(app.docs["job"].values()),
                "sessions": self._sessions(),
                "faults": [f.describe() for f in app.faults],
                "counts": {t: len(app.docs[t]) for t in TYPES},
                "requests": app.request_seq}

    def _nuvlabox(self, method, arg, body):
        app = self.app
        if method == "POST" and not arg:
            return json_response(201, app.create_nuvlabox(body))
        nid = norm_id(arg, "nuvlabox")
        nb = app.docs["nuvlabox"].get(nid)
        if nb is None or not arg:
            raise KeyError(nid)
        if method == "GET":
            m = app.meta[nid]
            return json_response(200, {"nuvlabox": nb, "commissions": m["commissions"],
                                       "heartbeats": m["heartbeats"]})
        if method == "PUT":
            if "state" in body and body["state"] not in NB_STATES:
                raise ValueError("state must be one of %s" % " ".join(NB_STATES))
            for k, v in body.items():
                if k in ("id", "resource-type", "acl"):
                    raise ValueError("%s cannot be changed" % k)
                nb[k] = v
            if "owner" in body:
                nb["acl"] = normalize_acl({"owners": [ADMIN], "manage": [nid],
                                           "view-data": [nid], "edit-acl": [body["owner"]]})
            nb["updated"] = iso_now()
            return json_response(200, nb)
        if method == "DELETE":
            del app.docs["nuvlabox"][nid]
            app.meta.pop(nid, None)
            return json_response(200, {"deleted": nid})
        return self._err(405, "method not allowed")

    def _job(self, method, arg, body):
        app = self.app
        if method == "POST" and not arg:
            return json_response(201, app.create_job(body))
        jid = norm_id(arg, "job")
        job = app.docs["job"].get(jid)
        if job is None or not arg:
            raise KeyError(jid)
        if method == "GET":
            return json_response(200, dict(job, _edits=app.meta[jid].get("edits", [])))
        if method == "PUT":
            for k, v in body.items():
                job[k] = v
            job["updated"] = iso_now()
            return json_response(200, job)
        return self._err(405, "method not allowed")

    def _events(self, method, params):
        app = self.app
        if method == "DELETE":
            n = len(app.docs["event"])
            for rid in list(app.docs["event"]):
                app.meta.pop(rid, None)
            app.docs["event"].clear()
            return json_response(200, {"deleted": n})
        if method != "GET":
            return self._err(405, "method not allowed")
        origin = (params.get("origin") or [None])[0]
        created_by = (params.get("created_by") or [None])[0]
        with_meta = (params.get("meta") or ["0"])[0] in ("1", "true")
        now = time.monotonic()
        out = []
        for rid, doc in app.docs["event"].items():
            m = app.meta[rid]
            if origin and m.get("origin") != origin:
                continue
            if created_by and doc.get("created-by") != created_by:
                continue
            out.append({"event": doc, "origin": m.get("origin"),
                        "searchable": m["searchable_at"] <= now} if with_meta else doc)
        return json_response(200, {"count": len(out), "events": out})

    def _requests(self, method, params):
        app = self.app
        if method == "DELETE":
            app.requests.clear()
            return json_response(200, {"cleared": True})
        since = _first_long(params.get("since")) or 0
        path = (params.get("path") or [None])[0]
        out = [r for r in app.requests if r["seq"] > since and (path is None or r["path"] == path)]
        return json_response(200, {"count": len(out), "last_seq": app.request_seq, "requests": out})

    def _faults(self, method, arg, body):
        app = self.app
        if method == "POST" and not arg:
            app.fault_seq += 1
            f = Fault("fault-%d" % app.fault_seq, body)
            app.faults.append(f)
            return json_response(201, f.describe())
        if method == "GET" and not arg:
            return json_response(200, {"faults": [f.describe() for f in app.faults]})
        if method == "DELETE" and not arg:
            n = len(app.faults)
            app.faults.clear()
            return json_response(200, {"deleted": n})
        if method == "DELETE" and arg:
            for f in app.faults:
                if f.id == arg:
                    app.faults.remove(f)
                    return json_response(200, {"deleted": arg})
            raise KeyError(arg)
        return self._err(405, "method not allowed")


# ------------------------------------------------------------------ HTTP layer

class _BodyError(Exception):
    def __init__(self, status, msg):
        super().__init__(msg)
        self.status = status


class Handler(http.server.BaseHTTPRequestHandler):
    """Thin HTTP/1.1 keep-alive layer: reads the body, applies faults, writes
    a complete answer (always with Content-Length) or drops the connection."""

    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle
    # and the peer's delayed ACK add ~40 ms to every answer on a reused
    # connection (the real server does not do that to a device).
    disable_nagle_algorithm = True

    protocol_version = "HTTP/1.1"
    server_version = "nuvla-standin/1"
    sys_version = ""
    timeout = 120           # idle keep-alive; longer than nginx's upstream keepalive_timeout

    def log_message(self, fmt, *args):      # only protocol errors get here
        self.server.app.log("%s %s" % (self.address_string(), fmt % args))

    def log_request(self, code="-", size="-"):
        pass                                # _log_line writes our own line

    def version_string(self):
        return self.server_version

    def do_GET(self):
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _BodyError(400, "bad chunk size")
                if size == 0:
                    while self.rfile.readline(1024).strip():    # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise _BodyError(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise _BodyError(400, "bad Content-Length")
        if n < 0:
            raise _BodyError(400, "bad Content-Length")
        if n > MAX_BODY:
            raise _BodyError(413, "request body too large")
        return self.rfile.read(n)

    def _serve(self):
        app = self.server.app
        t0 = time.monotonic()
        method = "GET" if self.command == "HEAD" else self.command
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        try:
            raw = self._read_body()
        except _BodyError as e:
            r = text_response(e.status, str(e))
            r.close = True
            self._send(r)
            self._log_line(path, split.query, r.status, t0, None, None)
            return
        if path == "/_control" or path.startswith("/_control/"):
            if self.headers.get("X-Nuvla-Gateway"):
                # Belt and braces: nginx never proxies /_control/; refuse if it did.
                r = text_response(404, "not found")
            else:
                r = app.control.handle(method, path, split.query, raw)
            self._send(r)
            self._log_line(path, split.query, r.status, t0, None, None)
            return
        self._api(method, path, split.query, raw, t0)

    def _api(self, method, path, query, raw, t0):
        app = self.server.app
        req = ApiRequest(method, path, query, self.headers, raw)
        delays, fault = app.pick_faults(method, path)
        before = sum(d.delay_ms for d in delays if d.when == "before")
        after = sum(d.delay_ms for d in delays if d.when == "after")
        if before:
            time.sleep(before / 1000.0)
        resp = None
        if fault is None or fault.process:
            resp = app.handle_api(req)
        else:
            app.prepare(req)                # only to log the body and the caller
            with app.lock:
                req.identity = app.identity_for(req.header("Cookie"))
        real_status = resp.status if resp is not None else None
        if fault is not None:
            resp = fault.apply(resp)
        if after:
            time.sleep(after / 1000.0)
        # Recorded before the answer goes out: a client that has its response
        # finds the request in the log, and a late entry can never land after
        # the next test's reset. "answered" is corrected if the write fails.
        entry = {
            "time": iso_now(), "peer": "%s:%d" % tuple(self.client_address[:2]),
            "method": method, "path": path, "query": query,
            "status": resp.status if resp is not None else None, "answered": resp is not None,
            "processed_status": real_status,
            "identity": req.identity.user_id, "body": req.log_body(),
            "body_note": req.body_note, "body_bytes": len(raw),
            "content_type": req.header("Content-Type"),
            "content_encoding": req.header("Content-Encoding"),
            "cookie": bool(req.header("Cookie")),
            "user_agent": req.header("User-Agent"),
            "authn_info_header": req.header("nuvla-authn-info") is not None,
            "gateway": req.header("X-Nuvla-Gateway"),
            "gateway_saw_authn_info": bool(req.header("X-Gateway-Saw-Authn-Info")),
            "client_verify": req.header("X-SSL-Client-Verify"),
            "client_dn": req.header("X-SSL-Client-S-DN"),
            "fault": fault.id if fault else None,
            "fault_kind": fault.kind if fault else None,
            "delay_ms": before + after,
            "duration_ms": round((time.monotonic() - t0) * 1000, 1),
        }
        app.record(entry)
        sent = False
        try:
            if resp is None:
                self._drop(fault.rst)
            else:
                self._send(resp)
                sent = True
        except OSError:
            self.close_connection = True
        if not sent and resp is not None:
            entry["answered"] = False
        self._log_line(path, query, entry["status"], t0, req.identity.user_id, fault)

    def _send(self, resp):
        self.send_response(resp.status)
        for k, v in resp.headers:
            self.send_header(k, v)
        body = b"" if resp.status in (204, 304) else resp.body
        self.send_header("Content-Length", str(len(body)))
        if resp.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            if resp.truncate_to is not None:
                self.wfile.write(body[:resp.truncate_to])
                self.close_connection = True
            else:
                self.wfile.write(body)
        self.wfile.flush()

    def _drop(self, rst):
        """Closes the connection without answering (FIN, or RST if asked)."""
        self.close_connection = True
        if rst:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _log_line(self, path, query, status, t0, who, fault):
        q = ("?" + query[:200]) if query else ""
        self.server.app.log("%s %s %s%s %s %.1fms%s%s" % (
            self.client_address[0], self.command, path, q, status if status is not None else "-",
            (time.monotonic() - t0) * 1000, " as=" + who if who else "",
            " fault=%s(%s)" % (fault.id, fault.kind) if fault else ""))


class StandinServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, app):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__(addr, Handler)


class _Log:
    """One line per request, to stderr or a file; thread-safe; never secrets."""

    def __init__(self, path=None):
        self.lock = threading.Lock()
        self.stream = open(path, "a", buffering=1) if path else sys.stderr

    def __call__(self, line):
        with self.lock:
            self.stream.write("%s %s\n" % (iso_now(), line))
            self.stream.flush()


def make_app(refresh_delay=1.0, session_lifetime=ONE_WEEK, cookie_name=DEFAULT_COOKIE_NAME,
             cookie_secure=True, server_events=True, seed=None, log=None):
    app = Standin({"refresh_delay": float(refresh_delay),
                   "session_lifetime": float(session_lifetime), "cookie_name": cookie_name,
                   "cookie_secure": cookie_secure, "server_events": server_events},
                  seed=seed, log=log)
    app.control = Control(app)
    return app


def main(argv=None):
    ap = argparse.ArgumentParser(description="Nuvla API stand-in (HTTP/1.1, loopback).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file", help="write the chosen port here (atomically)")
    ap.add_argument("--log", help="request log file (default stderr)")
    ap.add_argument("--seed", help="JSON file {nuvlaboxes, credentials, jobs} applied at start "
                                   "and on every reset")
    ap.add_argument("--refresh-delay", type=float, default=1.0,
                    help="seconds before a new event is searchable (default 1.0)")
    ap.add_argument("--session-lifetime", type=float, default=ONE_WEEK,
                    help="session/cookie lifetime in seconds (default one week)")
    ap.add_argument("--cookie-name", default=DEFAULT_COOKIE_NAME)
    ap.add_argument("--legacy-cookie", action="store_true",
                    help="use the older cookie name %s" % LEGACY_COOKIE_NAME)
    ap.add_argument("--no-cookie-secure", action="store_true",
                    help="omit the Secure cookie attribute (for plain-HTTP clients)")
    ap.add_argument("--no-server-events", action="store_true",
                    help="do not store the server's own lifecycle events")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("the stand-in binds to loopback only")
    seed = None
    if args.seed:
        with open(args.seed) as f:
            seed = json.load(f)
    log = _Log(args.log)
    app = make_app(args.refresh_delay, args.session_lifetime,
                   LEGACY_COOKIE_NAME if args.legacy_cookie else args.cookie_name,
                   not args.no_cookie_secure, not args.no_server_events, seed, log)
    server = StandinServer((args.host, args.port), app)
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    log("stand-in listening on http://%s:%d (pid %d)" % (args.host, port, os.getpid()))

    def _stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
        log("stand-in stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
