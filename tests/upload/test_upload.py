#!/usr/bin/env python3
"""Upload integration tests: `nuvlabox-event flush` against Nuvla (issue 3).

The real CLI (`NBE_CLI`, set by ctest; else build/agent/nuvlabox-event of this
tree) uploads to the Nuvla stand-in behind the real nginx mTLS gateway of
tests/nuvla (harness.py, imported, never copied). One harness serves the whole
module; every test starts from `/_control/reset` and gets its own state
directory, config file and api-secret file. What is checked, and where the
contract says so:

  mTLS (DESIGN §5 "Only a Nuvla error document dead-letters", §7 exit codes)
    valid client uploads; no / expired / not-yet-valid / other-CA client
    certificate: nginx's HTML 400, exit 69, pending, `auth-failed` with the
    gateway's reason; wrong host name and a foreign `ca_file`: refused by the
    agent (69, `offline`, pending); nothing listening: 69 within the timeout.
  failure classes (DESIGN §5), one test each, with the stand-in's faults
    Nuvla 400 -> dead letter, later events delivered, retry-dead re-sends it;
    gateway 400/413 HTML -> pending, 69, auth-failed; 403 once -> exactly one
    re-login; 403 persisting -> 77; 404/405 -> 78; 429/503 Retry-After
    honoured; 500/502 -> retried without duplicates; timeouts -> in doubt ->
    look-up -> no duplicate; store-then-close and garbage answers.
  crashes: SIGKILL of the uploader at random moments of a flush of thousands of
    job-linked events with random server faults; at the end every event is on
    the server exactly once, with parents resolved, in order.
  session expiry in the middle of a flush: one re-login per expiry.
  every POST /api/event body the stand-in received, in every test, passes
    schema.validate_event(strict=True) (checked in tearDown).

Environment knobs:
  NBE_UPLOAD_KILLS         SIGKILLs in the big kill test (default 50)
  NBE_UPLOAD_KILL_EVENTS   events recorded for it (default 3000)
  NBE_UPLOAD_ORDER_KILLS   SIGKILLs in the max_in_flight = 1 order test (default 12)
  NBE_UPLOAD_ORDER_EVENTS  events for it (default 200)
  NBE_UPLOAD_SEED          PRNG seed (printed on failure) to replay a run
  NBE_UPLOAD_KEEP=1        keep the work directory (harness logs, buffers)
  NBE_TEST_WRAPPER         a command line put in front of the CLI where UploadCase.cli()
                           starts it (all but the session-expiry and kill tests; CI: valgrind)

Standard library only (Debian 12's python3). Run directly or through ctest:
    python3 tests/upload/test_upload.py [-v] [TestClass.test_name]
"""

import concurrent.futures
import datetime
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import uuid
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuvla"))
import harness  # noqa: E402  (the stand-in + nginx harness, and the tests' shared preamble)
from harness import CLI  # noqa: E402
import schema  # noqa: E402  (the closed-schema validator)

# sysexits.h
EX_OK, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 0, 69, 75, 77, 78

REFRESH_DELAY = 1.0   # the stand-in's search refresh delay (harness default)
NO_CERT = "No required SSL certificate was sent"
BAD_CERT = "The SSL certificate error"

SEED = int(os.environ.get("NBE_UPLOAD_SEED") or random.SystemRandom().randrange(1 << 30))
KEEP = os.environ.get("NBE_UPLOAD_KEEP") == "1"
WRAPPER = shlex.split(os.environ.get("NBE_TEST_WRAPPER", ""))

ENV = {}
_H = None
_DIR = None


def _int_env(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def setUpModule():
    global _H, _DIR
    if not os.access(CLI, os.X_OK):
        raise unittest.SkipTest("no CLI at %s (build first, or set NBE_CLI)" % CLI)
    _DIR, _H = harness.start_for_tests("nbe-upload-test-", refresh_delay=REFRESH_DELAY)
    unittest.addModuleCleanup(harness.stop_for_tests, _DIR, _H, KEEP)
    ENV.update(_H.env)


# ----------------------------------------------------------------- helpers

def ctl(method, what, body=None, **query):
    """The stand-in's control API (never through nginx)."""
    return harness.control(ENV, method, what, body, **query)


def parse_time(iso):
    """The stand-in's log/server time (UTC, milliseconds, Z) as epoch seconds."""
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def device_id_of(doc):
    """The device event id from the device-event/<id> tag of a body or a stored event."""
    ids = [t[len("device-event/"):] for t in (doc.get("tags") or [])
           if isinstance(t, str) and t.startswith("device-event/")]
    return ids[0] if len(ids) == 1 else None


def new_job():
    return "job/" + str(uuid.uuid4())


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class UploadCase(unittest.TestCase):
    """A reset stand-in, a state directory, a config and a secret file per test."""

    #: config keys of this class (value None leaves the key out)
    config = {}

    def setUp(self):
        ctl("POST", "reset", {"seed": True})
        self.tmp = Path(tempfile.mkdtemp(prefix=self._testMethodName[:40] + "-", dir=_DIR))
        if not KEEP:
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.state = self.tmp / "state"
        (self.tmp / "nuvlaedge").mkdir()
        (self.tmp / "run").mkdir()
        self.secret = harness.write_secret(self.tmp / "api-secret", ENV)
        self.env = harness.agent_env()
        self.conf = self.write_config()
        self.children = []
        self.addCleanup(self._reap_children)

    def tearDown(self):
        # Every body the stand-in received for POST /api/event, in this test,
        # is what our wire format allows (DESIGN §3, strict validator).
        bad = []
        for r in self.requests("/api/event"):
            if r["method"] != "POST":
                continue
            problems = schema.validate_event(r["body"], strict=True)
            if problems:
                bad.append("request %s: %s\n  %s" % (r["seq"], "; ".join(problems),
                                                     json.dumps(r["body"])[:600]))
        self.assertEqual(bad, [], "bodies the server received violate the wire schema:\n" +
                         "\n".join(bad[:10]))

    def _reap_children(self):
        for p in self.children:
            if p.poll() is None:
                p.kill()
                p.wait()

    # ---- config and CLI -----------------------------------------------------

    def write_config(self, name="agent.conf", **over):
        keys = harness.device_config(ENV, self.secret, state_dir=self.state,
                                     nuvlaedge_dir=self.tmp / "nuvlaedge",
                                     runtime_dir=self.tmp / "run", request_timeout="10s")
        keys.update(self.config)
        keys.update(over)
        return harness.write_config(self.tmp / name, keys)

    def cli(self, *args, conf=None, timeout=120):
        cmd = WRAPPER + [CLI, "--config", str(conf or self.conf)] + list(args)
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                              timeout=timeout, universal_newlines=True)

    @staticmethod
    def describe(p):
        return "exit %s\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout[-2000:],
                                                     p.stderr[-2000:])

    def ok(self, *args, **kw):
        p = self.cli(*args, **kw)
        self.assertEqual(p.returncode, 0, self.describe(p))
        return p

    def record(self, name, *opts, conf=None):
        p = self.ok("record", name, *opts, conf=conf)
        return p.stdout.strip()

    def record_many(self, n, name="test.tick", conf=None):
        return [self.record(name, "--detail", "n=%d" % i, conf=conf) for i in range(n)]

    def flush(self, timeout=20, conf=None):
        """Runs flush; returns (CompletedProcess, elapsed seconds)."""
        t0 = time.monotonic()
        p = self.cli("flush", "--timeout", str(timeout), conf=conf, timeout=timeout + 60)
        return p, time.monotonic() - t0

    def flush_ok(self, timeout=30, conf=None):
        p, _ = self.flush(timeout, conf)
        self.assertEqual(p.returncode, EX_OK, self.describe(p))
        return p

    def status(self, conf=None):
        return json.loads(self.ok("status", "--json", conf=conf).stdout)

    def list_json(self, state="all", conf=None):
        return json.loads(self.ok("list", "--state", state, "--json", conf=conf).stdout)

    def show(self, ref, conf=None):
        return json.loads(self.ok("show", ref, "--json", conf=conf).stdout)

    # ---- the stand-in ---------------------------------------------------------

    def fault(self, **spec):
        return ctl("POST", "faults", spec)

    def requests(self, path=None, since=0):
        q = {"since": since}
        if path:
            q["path"] = path
        return ctl("GET", "requests", **q)["requests"]

    def last_request_seq(self):
        return ctl("GET", "requests", since=1 << 60)["last_seq"]

    def server_events(self):
        """Events posted through the API, in store order."""
        return ctl("GET", "events", origin="api")["events"]

    def by_tag(self, docs=None):
        out = {}
        for d in self.server_events() if docs is None else docs:
            out.setdefault(device_id_of(d), []).append(d)
        return out

    def posts_of(self, device_id, since=0):
        return [r for r in self.requests("/api/event", since)
                if r["method"] == "POST" and isinstance(r["body"], dict)
                and device_id_of(r["body"]) == device_id]

    def lookups_of(self, device_id, since=0):
        tag = "tags='device-event/%s'" % device_id
        return [r for r in self.requests("/api/event", since)
                if r["method"] == "GET" and tag in urllib.parse.unquote_plus(r["query"] or "")]

    def timeline(self, device_id, limit=12):
        """What the stand-in saw of one event: its POSTs and the look-ups
        naming it, for failure messages."""
        tag = "device-event/%s" % device_id
        out = []
        for r in self.requests("/api/event"):
            if r["method"] == "POST" and isinstance(r["body"], dict) \
                    and device_id_of(r["body"]) == device_id:
                what = "POST"
            elif r["method"] == "GET" and tag in urllib.parse.unquote_plus(r["query"] or ""):
                what = "GET look-up"
            else:
                continue
            out.append("  #%s %s %s -> %s (processed %s, fault %s, %s ms)" % (
                r["seq"], r["time"], what, r["status"], r["processed_status"],
                r["fault_kind"], r["duration_ms"]))
        return "%s:\n%s" % (device_id, "\n".join(out[:limit]))

    def sessions_posted(self, since=0):
        return [r for r in self.requests("/api/session", since) if r["method"] == "POST"]

    def assert_delivered_once(self, ids, exact=True):
        """Each device event id is on the server exactly once; with exact,
        nothing else was posted."""
        tags = self.by_tag()
        problems = ["%s: %d copies" % (i, len(tags.get(i, []))) for i in ids
                    if len(tags.get(i, [])) != 1]
        self.assertEqual(problems, [], "events not on the server exactly once")
        if exact:
            self.assertEqual(sorted(k for k in tags if k is not None), sorted(set(ids)),
                             "the server holds events that were not recorded here")
        return {i: tags[i][0] for i in ids}

    def assert_pending(self, ids, status=None):
        st = status or self.status()
        self.assertEqual(st["pending"], len(ids), st)
        self.assertEqual(st["dead"], 0, st)
        states = {e["id"]: e["state"] for e in self.list_json()}
        self.assertEqual({i: states.get(i) for i in ids}, {i: "pending" for i in ids})
        return st

    def assert_idle(self):
        st = self.status()
        self.assertEqual(st["pending"], 0, st)
        self.assertEqual(st["upload_state"], "idle", st)
        return st


# =====================================================================  mTLS

class TestMtls(UploadCase):
    """The gateway demands a client certificate; the agent checks the server."""

    def test_valid_client_uploads(self):
        job = new_job()
        start = self.record("nuvlabox.reboot", "--job", job, "--message", "reboot asked")
        other = self.record("custom.thing", "--severity", "high", "--details-json",
                            '{"n": 1, "nested": {"a": [1, 2]}}')
        done = self.record("nuvlabox.reboot.completed", "--job", job, "--detail", "downtime=12s")
        self.flush_ok(20)
        docs = self.assert_delivered_once([start, other, done])
        # the gateway verified our certificate and the stand-in saw it
        for r in self.requests("/api/event"):
            self.assertEqual(r["client_verify"], "SUCCESS", r)
            self.assertIn(ENV["NUVLA_TEST_NUVLABOX_ID"], r["client_dn"] or "", r)
        # linkage (DESIGN §4)
        self.assertEqual(docs[start]["parent"], job)
        self.assertEqual(docs[done]["parent"], docs[start]["id"])
        for i in (start, done):
            self.assertIn(job, docs[i]["content"]["linked-identifiers"])
        # status after success (DESIGN §7)
        st = self.assert_idle()
        self.assertEqual(st["sent"], 3, st)
        self.assertEqual(st["dead"], 0, st)
        # show: state sent, the server's id, and the exact body received
        received = {device_id_of(r["body"]): r["body"] for r in self.requests("/api/event")
                    if r["method"] == "POST" and r["status"] == 201}
        for i in (start, other, done):
            obj = self.show(i)
            self.assertEqual(obj["state"], "sent", obj)
            self.assertEqual(obj["server_id"], docs[i]["id"], obj)
            self.assertEqual(obj["wire"], received[i],
                             "show --json wire differs from what the server received")

    def _refused_by_gateway(self, cert, key, reason):
        over = {"client_cert": cert, "client_key": key}
        conf = self.write_config("refused.conf", **over)
        ids = [self.record("test.tick", "--detail", "n=%d" % i, conf=conf) for i in range(2)]
        access = Path(ENV["NUVLA_TEST_DIR"]) / "nginx" / "access.log"
        before = access.stat().st_size
        p, elapsed = self.flush(15, conf=conf)
        self.assertEqual(p.returncode, EX_UNAVAILABLE, self.describe(p))
        self.assertLess(elapsed, 15, "a refused client certificate is not worth retrying")
        st = self.assert_pending(ids, self.status(conf=conf))
        self.assertEqual(st["upload_state"], "auth-failed", st)
        self.assertIn(reason, st["last_error"] or "", st)
        # nothing reached Nuvla, and the attempt was really made (never skipped)
        self.assertEqual(self.requests(), [], "the gateway let a request through")
        self.assertEqual(self.server_events(), [])
        with open(access) as f:
            f.seek(before)
            lines = [ln for ln in f if "port=%s " % ENV["NUVLA_GATEWAY_PORT"] in ln]
        self.assertTrue(any('" 400 ' in ln for ln in lines),
                        "no refused request in nginx's access log: %r" % lines)
        # a working certificate afterwards delivers everything, once
        self.flush_ok(20)
        self.assert_delivered_once(ids)

    def test_no_client_certificate(self):
        self._refused_by_gateway(None, None, NO_CERT)

    def test_expired_client_certificate(self):
        self._refused_by_gateway(ENV["NUVLA_TEST_CLIENT_EXPIRED_CERT"],
                                 ENV["NUVLA_TEST_CLIENT_EXPIRED_KEY"], BAD_CERT)

    def test_not_yet_valid_client_certificate(self):
        self._refused_by_gateway(ENV["NUVLA_TEST_CLIENT_FUTURE_CERT"],
                                 ENV["NUVLA_TEST_CLIENT_FUTURE_KEY"], BAD_CERT)

    def test_other_ca_client_certificate(self):
        self._refused_by_gateway(ENV["NUVLA_TEST_CLIENT_OTHER_CA_CERT"],
                                 ENV["NUVLA_TEST_CLIENT_OTHER_CA_KEY"], BAD_CERT)

    def _refused_by_agent(self, timeout=4, **over):
        conf = self.write_config("refused.conf", **over)
        ids = [self.record("test.tick", "--detail", "n=%d" % i, conf=conf) for i in range(2)]
        p, elapsed = self.flush(timeout, conf=conf)
        self.assertEqual(p.returncode, EX_UNAVAILABLE, self.describe(p))
        self.assertLess(elapsed, timeout + 3, "flush overran its --timeout")
        st = self.assert_pending(ids, self.status(conf=conf))
        self.assertEqual(st["upload_state"], "offline", st)
        self.assertTrue(st["last_error"], st)
        # a killed flush of an earlier test may still have a (delayed) request
        # at the stand-in: only this test's own requests count
        mine = {"device-event/" + i for i in ids}

        def ours(r):
            b = r.get("body")
            if r["method"] == "POST" and r["path"] == "/api/event":
                return isinstance(b, dict) and bool(mine & set(b.get("tags", [])))
            return r["path"] != "/api/event"
        self.assertEqual([r for r in self.requests() if ours(r)], [], "a request got through")
        self.assertEqual([e for e in self.server_events() if mine & set(e.get("tags", []))], [])
        return st

    def test_wrong_host_name_refused(self):
        self._refused_by_agent(endpoint=ENV["NUVLA_GATEWAY_WRONGHOST_URL"])

    def test_other_ca_file_refused(self):
        self._refused_by_agent(ca_file=ENV["NUVLA_TEST_OTHER_CA"])

    def test_endpoint_down(self):
        self._refused_by_agent(timeout=4, endpoint="https://localhost:%d" % free_port())


# ======================================================= failure classes

class TestFailureClasses(UploadCase):
    """DESIGN §5 failure classes, one at a time (max_in_flight = 1: the first
    POST is the one that meets the fault)."""

    config = {"max_in_flight": 1}

    def test_nuvla_400_dead_letter(self):
        msg = "resource event/0 does not satisfy defined schema:\nfoo: disallowed key"
        self.fault(kind="status", status=400, message=msg, method="POST", path="/api/event")
        ids = self.record_many(4)
        self.flush_ok(20)       # nothing pending: dead letters are not pending
        dead = self.list_json("dead")
        self.assertEqual([e["id"] for e in dead], [ids[0]], dead)
        self.assertIn("does not satisfy defined schema", dead[0]["last_error"] or "", dead[0])
        self.assertIsNone(dead[0]["server_id"])
        st = self.status()
        self.assertEqual((st["pending"], st["dead"], st["sent"]), (0, 1, 3), st)
        # later events were delivered, the dead one not
        tags = self.by_tag()
        self.assertNotIn(ids[0], tags)
        self.assert_delivered_once(ids[1:])
        # retry-dead re-queues it; flush sends it
        self.ok("retry-dead")
        self.assertEqual(self.list_json("dead"), [])
        self.assertEqual(self.status()["pending"], 1)
        self.flush_ok(20)
        self.assert_delivered_once(ids)
        self.assert_idle()
        self.assertEqual(self.show(ids[0])["state"], "sent")

    def _gateway_html(self, status):
        self.fault(kind="status", status=status, body="html", method="POST", path="/api/event",
                   count=None)
        ids = self.record_many(3)
        p, elapsed = self.flush(15)
        self.assertEqual(p.returncode, EX_UNAVAILABLE, self.describe(p))
        self.assertLess(elapsed, 10, "a gateway's refusal is not retried within one flush")
        self.assertEqual(self.list_json("dead"), [], "a gateway's HTML refusal dead-lettered")
        st = self.assert_pending(ids)
        self.assertEqual(st["upload_state"], "auth-failed", st)
        self.assertIn("%d" % status, st["last_error"] or "", st)
        self.assertEqual(len([r for r in self.requests("/api/event") if r["method"] == "POST"]),
                         1, "kept uploading after the gateway refused")
        ctl("DELETE", "faults")
        self.flush_ok(20)
        self.assert_delivered_once(ids)
        self.assert_idle()

    def test_gateway_400_html_not_dead(self):
        self._gateway_html(400)

    def test_gateway_413_html_not_dead(self):
        self._gateway_html(413)

    def test_403_once_one_relogin(self):
        self.record("test.first")
        self.flush_ok(20)                       # a session exists now
        seq0 = self.last_request_seq()
        self.fault(kind="status", status=403, message="invalid credentials for 'x'",
                   method="POST", path="/api/event")
        ids = self.record_many(4)
        self.flush_ok(30)
        self.assertEqual(len(self.sessions_posted(seq0)), 1,
                         "expected exactly one re-login after one 403")
        self.assertEqual([r["status"] for r in self.sessions_posted(seq0)], [201])
        self.assertEqual(
            len([r for r in self.requests("/api/event", seq0) if r["status"] == 403]), 1)
        tags = self.by_tag()
        self.assertEqual(len(tags), 5)
        self.assert_delivered_once(ids, exact=False)
        self.assert_idle()

    def test_403_persisting_auth_failed(self):
        self.record("test.first")
        self.flush_ok(20)                       # a session exists now
        ids = self.record_many(3)
        key = ENV["NUVLA_TEST_API_KEY"]
        ctl("DELETE", key, revoke_sessions=1)
        ctl("POST", "sessions/expire")
        seq0 = self.last_request_seq()
        p, elapsed = self.flush(20)
        self.assertEqual(p.returncode, EX_NOPERM, self.describe(p))
        self.assertLess(elapsed, 15, "a persisting 403 is not retried within one flush")
        st = self.assert_pending(ids)
        self.assertEqual(st["upload_state"], "auth-failed", st)
        self.assertTrue(st["last_error"], st)
        self.assertEqual(len(self.sessions_posted(seq0)), 1, "expected exactly one re-login")
        # the credential comes back: everything was kept
        ctl("POST", "credential", {"nuvlabox": ENV["NUVLA_TEST_NUVLABOX_ID"], "key": key,
                                   "secret": ENV["NUVLA_TEST_API_SECRET"]})
        self.flush_ok(20)
        self.assert_delivered_once(ids, exact=False)
        self.assert_idle()

    def _wrong_endpoint(self, status):
        self.fault(kind="status", status=status, method="POST", path="/api/event", count=None,
                   message="unknown resource" if status == 404 else
                   "invalid method (post) for /api/event")
        ids = self.record_many(3)
        p, elapsed = self.flush(15)
        self.assertEqual(p.returncode, EX_CONFIG, self.describe(p))
        self.assertLess(elapsed, 10, "a wrong endpoint is not retried within one flush")
        st = self.assert_pending(ids)
        self.assertNotEqual(st["upload_state"], "idle", st)
        self.assertIn(str(status), st["last_error"] or "", st)
        self.assertEqual(self.list_json("dead"), [])
        ctl("DELETE", "faults")
        self.flush_ok(20)
        self.assert_delivered_once(ids)

    def test_404_on_event_endpoint(self):
        self._wrong_endpoint(404)

    def test_405_on_event_endpoint(self):
        self._wrong_endpoint(405)

    def _retry_after(self, status, seconds):
        self.fault(kind="status", status=status, retry_after=seconds, method="POST",
                   path="/api/event")
        ids = self.record_many(2)
        self.flush_ok(30)
        posts = [r for r in self.requests("/api/event") if r["method"] == "POST"]
        self.assertEqual([r["status"] for r in posts], [status, 201, 201], posts)
        gap = parse_time(posts[1]["time"]) - parse_time(posts[0]["time"])
        self.assertGreaterEqual(gap, seconds - 0.05,
                                "Retry-After: %d not honoured (retried after %.3f s)"
                                % (seconds, gap))
        self.assert_delivered_once(ids)
        self.assert_idle()

    def test_429_retry_after(self):
        self._retry_after(429, 1)

    def test_503_retry_after(self):
        self._retry_after(503, 2)

    def test_500_answer_lost_no_duplicate(self):
        # the server stored the event, then answered 500: in doubt
        self.fault(kind="status", status=500, process=True, method="POST", path="/api/event")
        ids = self.record_many(3)
        self.flush_ok(30)
        self.assert_delivered_once(ids)
        self.assertEqual(len(self.posts_of(ids[0])), 1, "re-sent although it was stored")
        self.assertGreaterEqual(len(self.lookups_of(ids[0])), 1, "never looked up")
        self.assert_idle()

    def test_502_retried_no_duplicate(self):
        # a gateway's 502 twice, nothing stored: looked up, not found, re-sent
        self.fault(kind="status", status=502, body="html", method="POST", path="/api/event",
                   count=2)
        ids = self.record_many(3)
        self.flush_ok(40)
        self.assert_delivered_once(ids)
        self.assertEqual(len(self.posts_of(ids[0])), 3)
        self.assert_idle()

    def test_502_after_store_no_duplicate(self):
        # stored, then nginx's 502 (the upstream closed): in doubt, found by look-up
        self.fault(kind="status", status=502, body="html", process=True, method="POST",
                   path="/api/event")
        ids = self.record_many(3)
        self.flush_ok(30)
        self.assert_delivered_once(ids)
        self.assertEqual(len(self.posts_of(ids[0])), 1, "re-sent although it was stored")
        self.assert_idle()

    def test_timeout_in_doubt_no_duplicate(self):
        conf = self.write_config("timeout.conf", request_timeout="1s")
        self.fault(kind="delay", delay_ms=2500, when="after", method="POST", path="/api/event")
        ids = self.record_many(3, conf=conf)
        self.flush_ok(30, conf=conf)
        self.assert_delivered_once(ids)
        self.assertEqual(len(self.posts_of(ids[0])), 1, "re-sent although it was stored")
        self.assertGreaterEqual(len(self.lookups_of(ids[0])), 1, "never looked up")
        self.assertEqual(self.status(conf=conf)["pending"], 0)

    def test_store_then_close_looked_up(self):
        self.fault(kind="store_then_close")
        ids = self.record_many(3)
        self.flush_ok(30)
        docs = self.assert_delivered_once(ids)
        posts = self.posts_of(ids[0])
        self.assertEqual(len(posts), 1, "re-sent although it was stored")
        self.assertEqual(posts[0]["status"], None, posts[0])     # the connection was dropped
        looks = self.lookups_of(ids[0])
        self.assertGreaterEqual(len(looks), 1, "never looked up by its device-event tag")
        # the look-up waited for the refresh delay, so the search can see it
        wait = parse_time(looks[0]["time"]) - parse_time(posts[0]["time"])
        self.assertGreaterEqual(wait, REFRESH_DELAY - 0.05,
                                "looked up %.3f s after the post, before the refresh delay"
                                % wait)
        obj = self.show(ids[0])
        self.assertEqual(obj["state"], "sent")
        self.assertEqual(obj["server_id"], docs[ids[0]]["id"])
        self.assertEqual(obj["wire"], posts[0]["body"],
                         "show --json wire differs from what the server received")
        self.assert_idle()

    def test_in_doubt_head_waits_its_own_refresh_delay(self):
        # DESIGN §5: "Before sending an in-doubt event again the uploader waits
        # for the server's refresh delay and searches". Here the event at the
        # head of the queue has just become in doubt while the in-doubt events
        # behind it are old: each one still needs its own wait.
        conf = self.write_config("eight.conf", max_in_flight=8, retry_base="100ms",
                                 retry_cap="200ms")
        head = self.record("test.head", conf=conf)
        self.fault(kind="status", status=400, message="refused once", method="POST",
                   path="/api/event")
        self.flush_ok(20, conf=conf)                          # head: dead letter
        self.assertEqual([e["id"] for e in self.list_json("dead", conf=conf)], [head])
        behind = self.record_many(4, conf=conf)
        self.fault(kind="store_then_close", count=4)
        p, _ = self.flush(1, conf=conf)                       # all 4 in doubt, no time left
        self.assertEqual(p.returncode, EX_TEMPFAIL, self.describe(p))
        self.assertEqual({e["id"]: e["in_doubt"] for e in self.list_json("pending", conf=conf)},
                         {i: True for i in behind})
        time.sleep(2.5)                                       # their refresh delay is over
        self.ok("retry-dead", conf=conf)
        self.fault(kind="status", status=500, process=True, method="POST", path="/api/event")
        seq0 = self.last_request_seq()
        self.flush_ok(30, conf=conf)                          # head: stored, answered 500
        self.assertEqual(len(self.by_tag().get(head, [])), 1,
                         "the head event was stored twice:\n" + self.timeline(head))
        looks = self.lookups_of(head, seq0)
        post = self.posts_of(head, seq0)[0]
        self.assertTrue(looks, "never looked up")
        wait = parse_time(looks[0]["time"]) - parse_time(post["time"])
        self.assertGreaterEqual(wait, REFRESH_DELAY - 0.05,
                                "looked up %.3f s after its post, before the refresh delay"
                                % wait)
        self.assert_delivered_once([head] + behind)
        self.assertEqual(self.status(conf=conf)["pending"], 0)

    def test_garbage_answers(self):
        for mode in ("non-json", "truncated-json", "short-body"):
            self.fault(kind="garbage", mode=mode, method="POST", path="/api/event")
        ids = self.record_many(5)
        self.flush_ok(60)
        self.assert_delivered_once(ids)
        for i in ids[:3]:
            posts, looks = self.posts_of(i), self.lookups_of(i)
            self.assertEqual(len(posts), 1, "re-sent although it was stored:\n" +
                             self.timeline(i))
            self.assertTrue(looks, "never looked up:\n" + self.timeline(i))
            wait = parse_time(looks[0]["time"]) - parse_time(posts[0]["time"])
            self.assertGreaterEqual(wait, REFRESH_DELAY - 0.05,
                                    "looked up %.3f s after the post, before the refresh "
                                    "delay" % wait)
        self.assert_idle()

    def test_show_wire_is_what_was_posted(self):
        # The owner is not readable the first time (events go without it);
        # a later flush learns it. `show` of the first event must still give
        # the body that was posted (DESIGN §7: "the exact body that ... was
        # posted"), not one rebuilt with today's owner.
        self.fault(kind="status", status=404, message="not found", method="GET",
                   path="/api/" + ENV["NUVLA_TEST_NUVLABOX_ID"])
        first = self.record("test.first")
        self.flush_ok(20)
        second = self.record("test.second")
        self.flush_ok(20)
        docs = self.assert_delivered_once([first, second])
        received = {device_id_of(r["body"]): r["body"] for r in self.requests("/api/event")
                    if r["method"] == "POST" and r["status"] == 201}
        self.assertNotIn(ENV["NUVLA_TEST_OWNER_ID"],
                         received[first]["content"]["linked-identifiers"])
        self.assertIn(ENV["NUVLA_TEST_OWNER_ID"],
                      received[second]["content"]["linked-identifiers"])
        for i in (first, second):
            obj = self.show(i)
            self.assertEqual(obj["server_id"], docs[i]["id"])
            self.assertEqual(obj["wire"], received[i],
                             "show --json wire of %s differs from the body the server "
                             "received" % i)


# ======================================================== reused handles

class TestReusedHandles(UploadCase):
    """The client keeps a finished request's libcurl handle for the next one
    (common/nuvla.c): no request may carry the method, body, headers, session
    or outcome of the one before it on the same handle."""

    config = {"max_in_flight": 4, "retry_base": "100ms", "retry_cap": "200ms"}

    def test_requests_carry_nothing_from_the_last(self):
        first = self.record("test.first")
        self.flush_ok(20)                       # a session exists now
        seq0 = self.last_request_seq()
        # a 403 (a new login: another path, another body), a 429 with
        # Retry-After and a 500 after storing (kept handles: HTTP answers),
        # the look-up that follows (a GET on a handle that posted)
        self.fault(kind="status", status=403, message="invalid credentials for 'x'",
                   method="POST", path="/api/event")
        self.fault(kind="status", status=429, retry_after=1, method="POST", path="/api/event")
        self.fault(kind="status", status=500, process=True, method="POST", path="/api/event")
        # long and short bodies in turn: a short one after a long one on the
        # same handle must go out alone
        ids = []
        for i in range(18):
            if i % 3 == 0:
                ids.append(self.record("test.long", "--message", "%d" % i + "x" * 3000))
            else:
                ids.append(self.record("test.tick", "--detail", "n=%d" % i))
        self.flush_ok(60)
        self.assert_delivered_once([first] + ids)
        self.assertEqual(len(self.sessions_posted(seq0)), 1, "expected one new login")
        seen = self.requests(since=seq0)
        statuses = [r["status"] for r in seen if r["path"] == "/api/event"
                    and r["method"] == "POST"]
        for st in (403, 429, 500):
            self.assertIn(st, statuses, "the %d was never answered" % st)
        self.assertTrue(any(r["method"] == "GET" and r["path"] == "/api/event" for r in seen),
                        "the event answered 500 was never looked up")
        received = {}
        for r in seen:
            what = "#%s %s %s%s" % (r["seq"], r["method"], r["path"],
                                   "?" + r["query"] if r["query"] else "")
            if r["method"] == "GET":
                self.assertEqual(r["body_bytes"], 0, what + ": a GET with a body")
                self.assertIsNone(r["content_type"], what + ": a GET with a Content-Type")
            else:
                self.assertEqual(r["method"], "POST", what)
                self.assertEqual(r["content_type"], "application/json", what)
                self.assertIsNone(r["body_note"], what + ": body not JSON")
                self.assertIsInstance(r["body"], dict, what)
            if r["path"] == "/api/session":
                self.assertEqual(r["body"]["template"]["href"], "session-template/api-key",
                                 what)
                self.assertFalse(r["cookie"], what + ": the old session sent to log in")
                continue
            self.assertTrue(r["cookie"], what + ": no session cookie")
            if r["path"] == "/api/event" and r["method"] == "POST":
                self.assertNotIn("template", r["body"], what + ": the login body")
                if r["status"] in (201, 500):
                    self.assertIsNotNone(r["identity"], what + ": not the device's session")
                # the last post of an event is the one stored (201, or 500
                # after storing it)
                received[device_id_of(r["body"])] = r["body"]
        for i in ids:
            self.assertEqual(self.show(i)["wire"], received[i],
                             "the body the server received for %s is not its own" % i)
        self.assert_idle()


# ======================================================== session expiry

class TestSessionExpiry(UploadCase):

    config = {"request_timeout": "5s"}

    def test_session_expiry_mid_flush(self):
        self.record("test.first")
        self.flush_ok(20)                       # session and owner known
        ids = record_parallel(self, [[("test.tick", ["--detail", "n=%d" % i])]
                                     for i in range(400)])
        ids = [i for chain in ids for i in chain]
        # slow the server a little so that the flush lasts a few seconds
        self.fault(kind="delay", delay_ms=60, method="POST", path="/api/event", count=None)
        seq0 = self.last_request_seq()
        log = open(self.tmp / "flush.err", "w")
        p = subprocess.Popen([CLI, "--config", str(self.conf), "flush", "--timeout", "120"],
                             stdout=subprocess.DEVNULL, stderr=log, env=self.env)
        self.children.append(p)
        expiries = []
        since = seq0
        ok_since_expiry = 0
        deadline = time.monotonic() + 90
        while p.poll() is None and len(expiries) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            new = self.requests(since=since)
            if new:
                since = new[-1]["seq"]
            ok_since_expiry += sum(1 for r in new if r["path"] == "/api/event"
                                   and r["method"] == "POST" and r["status"] == 201)
            if ok_since_expiry >= 80:
                expiries.append(ctl("GET", "requests", since=1 << 60)["last_seq"])
                ctl("POST", "sessions/expire")
                ok_since_expiry = 0
        rc = p.wait(timeout=120)
        log.close()
        self.assertEqual(len(expiries), 2, "the flush ended before two expiries (too fast?)")
        self.assertEqual(rc, EX_OK, "flush after session expiries: exit %s: %s"
                         % (rc, (self.tmp / "flush.err").read_text()[-1500:]))
        logins = self.sessions_posted(seq0)
        self.assertEqual(len(logins), 2, "expected one re-login per expiry, got %d" % len(logins))
        self.assertTrue(all(r["status"] == 201 for r in logins), logins)
        # one login after each expiry, none before the first
        self.assertGreater(logins[0]["seq"], expiries[0])
        self.assertGreater(logins[1]["seq"], expiries[1])
        self.assertLess(logins[0]["seq"], expiries[1])
        refused = [r for r in self.requests("/api/event", seq0) if r["status"] == 403]
        self.assertGreaterEqual(len(refused), 2, "the expiries were not noticed")
        self.assert_delivered_once(ids, exact=False)
        self.assertEqual(len(self.server_events()), len(ids) + 1)
        self.assert_idle()


# ================================================================= kills

def record_parallel(case, chains, conf=None, workers=4):
    """Records chains of (name, opts) in parallel; each chain in order.
    Returns the device ids, chain by chain."""
    def run(chain):
        out = []
        for name, opts, *_ in chain:
            p = subprocess.run([CLI, "--config", str(conf or case.conf), "record", name] + opts,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=case.env,
                               timeout=60, universal_newlines=True)
            if p.returncode != 0:
                raise AssertionError("record %s: exit %d: %s" % (name, p.returncode, p.stderr))
            out.append(p.stdout.strip())
        return out
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(run, chains))


OPS = ("reboot", "add-ssh-key", "revoke-ssh-key", "decommission")
SEVERITIES = ("low", "medium", "medium", "high", "critical")


def plan_chains(rng, n):
    """About n events in chains: job operations (start, maybe unrelated
    events, then .completed or .failed) and single events. Each item:
    (name, opts, info) with info {"job", "start": index in chain or None}."""
    chains, total = [], 0
    while total < n:
        if rng.random() < 0.5:
            op, job = rng.choice(OPS), new_job()
            end = ".failed" if rng.random() < 0.2 else ".completed"
            chain = [("nuvlabox." + op, ["--job", job], {"job": job, "start": None})]
            for _ in range(rng.randrange(3)):
                chain.append(("test.between", ["--severity", rng.choice(SEVERITIES)],
                              {"job": None, "start": None}))
            chain.append(("nuvlabox." + op + end, ["--job", job, "--detail", "rc=0"],
                          {"job": job, "start": 0}))
        else:
            chain = [("test.tick", ["--severity", rng.choice(SEVERITIES), "--detail",
                                    "n=%d" % total], {"job": None, "start": None})]
        chains.append(chain)
        total += len(chain)
    return chains


def random_fault(rng):
    post = {"method": "POST", "path": "/api/event"}
    choices = [
        dict(kind="status", status=503, **post),                     # Nuvla: retry
        dict(kind="status", status=503, body="html", **post),        # gateway: in doubt
        dict(kind="close", **post),                                  # nginx 502, not stored
        dict(kind="store_then_close"),                               # stored, answer lost
        dict(kind="delay", delay_ms=rng.randrange(50, 400), **post),  # slow
        dict(kind="delay", delay_ms=2600, **post),                   # > request_timeout
        dict(kind="garbage", mode="truncated-json", **post),         # stored, bad answer
        dict(kind="status", status=500, process=True, **post),       # stored, 500
    ]
    return rng.choice(choices)


class TestKills(UploadCase):
    """SIGKILL the uploader at random moments of a large flush (DESIGN §5:
    at-least-once transport, no duplicates, order, parent linkage)."""

    config = {"request_timeout": "2s", "retry_base": "100ms", "retry_cap": "1s",
              "keep_sent": "1000000"}

    def kill_loop(self, conf, n_events, kills, rng, longest=2.5):
        chains = plan_chains(rng, n_events)
        t0 = time.monotonic()
        ids = record_parallel(self, chains, conf)
        t_record = time.monotonic() - t0
        pending = self.status(conf=conf)["pending"]
        self.assertEqual(pending, sum(len(c) for c in chains))
        landed, cycles, exits = 0, 0, {}
        errlog = self.tmp / "flush.err"
        t1 = time.monotonic()
        while landed < kills:
            cycles += 1
            if rng.random() < 0.5:
                self.fault(**random_fault(rng))
            with open(errlog, "w") as log:
                p = subprocess.Popen([CLI, "--config", str(conf), "flush", "--timeout", "60"],
                                     stdout=subprocess.DEVNULL, stderr=log, env=self.env)
                self.children.append(p)
                # a restart that finds events in flight waits a refresh delay
                # before it looks them up: kills up to `longest` s cover
                # start-up, recovery, the wait, the look-ups and the sending
                try:
                    p.wait(timeout=rng.uniform(0.02, longest))
                    exits[p.returncode] = exits.get(p.returncode, 0) + 1
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    landed += 1
                self.children.remove(p)
            if p.returncode == 0 or self.status(conf=conf)["pending"] == 0:
                # all sent before the kills were done: give it more to do
                more = plan_chains(rng, max(50, n_events // 10))
                chains += more
                ids += record_parallel(self, more, conf)
        t_kills = time.monotonic() - t1
        left = self.status(conf=conf)["pending"]
        ctl("DELETE", "faults")
        t2 = time.monotonic()
        p, _ = self.flush(180, conf=conf)
        self.assertEqual(p.returncode, EX_OK, self.describe(p))
        t_final = time.monotonic() - t2
        sys.stderr.write("\n  [%s: %d events recorded in %.1fs, %d kills in %d cycles "
                         "(%.1fs, self-exits %r), %d left for the final flush (%.1fs), "
                         "seed %d] " % (self._testMethodName, sum(len(c) for c in chains),
                                        t_record, landed, cycles, t_kills, exits, left,
                                        t_final, SEED))
        return chains, ids

    def check_server(self, chains, ids, conf, ordered):
        all_ids = [i for chain in ids for i in chain]
        st = self.status(conf=conf)
        self.assertEqual((st["pending"], st["dead"]), (0, 0), st)
        stored = self.server_events()
        tags = self.by_tag(stored)
        dups = {k: len(v) for k, v in tags.items() if len(v) != 1}
        missing = [i for i in all_ids if i not in tags]
        self.assertEqual((dups, missing[:10], len(missing)), ({}, [], 0),
                         "duplicates or missing events on the server (seed %d); what the "
                         "server saw:\n%s" % (SEED, "\n".join(
                             self.timeline(i) for i in (list(dups) + missing)[:5])))
        self.assertEqual(set(tags), set(all_ids), "unknown events on the server")
        # the buffer's server ids are the server's
        local = {e["id"]: e for e in self.list_json(conf=conf)}
        wrong = [i for i in all_ids if local[i]["server_id"] != tags[i][0]["id"]]
        self.assertEqual(wrong[:10], [], "server_id in the buffer differs from the server's")
        position = {device_id_of(d): n for n, d in enumerate(stored)}
        problems = []
        for chain, chain_ids in zip(chains, ids):
            for (name, opts, info), i in zip(chain, chain_ids):
                doc = tags[i][0]
                links = doc["content"]["linked-identifiers"]
                if info["job"] and info["job"] not in links:
                    problems.append("%s %s: job not linked" % (name, i))
                if ENV["NUVLA_TEST_OWNER_ID"] not in links:
                    problems.append("%s %s: owner not linked" % (name, i))
                if info["start"] is not None:
                    parent = chain_ids[info["start"]]
                    if doc.get("parent") != tags[parent][0]["id"]:
                        problems.append("%s %s: parent %s, expected %s" % (
                            name, i, doc.get("parent"), tags[parent][0]["id"]))
                    if position[i] < position[parent]:
                        problems.append("%s %s: stored before its parent" % (name, i))
                elif info["job"] and doc.get("parent") != info["job"]:
                    problems.append("%s %s: parent %s, expected the job" % (
                        name, i, doc.get("parent")))
        self.assertEqual(problems[:20], [], "linkage problems (seed %d)" % SEED)
        if ordered:
            seqs = [local[device_id_of(d)]["seq"] for d in stored]
            inversions = [(a, b) for a, b in zip(seqs, seqs[1:]) if b < a]
            self.assertEqual(inversions[:10], [],
                             "with max_in_flight = 1 the server stored events out of "
                             "capture order (seq pairs; seed %d)" % SEED)

    def test_sigkill_during_flush(self):
        rng = random.Random(SEED)
        chains, ids = self.kill_loop(self.conf, _int_env("NBE_UPLOAD_KILL_EVENTS", 3000),
                                     _int_env("NBE_UPLOAD_KILLS", 50), rng)
        self.check_server(chains, ids, self.conf, ordered=False)

    def test_sigkill_during_flush_in_order(self):
        rng = random.Random(SEED + 1)
        conf = self.write_config("one.conf", max_in_flight=1)
        # one request at a time is slow (about 45 ms each through the
        # gateway): longer runs between kills, so that sending is hit too
        chains, ids = self.kill_loop(conf, _int_env("NBE_UPLOAD_ORDER_EVENTS", 200),
                                     _int_env("NBE_UPLOAD_ORDER_KILLS", 12), rng, longest=4.5)
        self.check_server(chains, ids, conf, ordered=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
