#!/usr/bin/env python3
"""Integration tests of the `nuvlabox-event` command line (DESIGN.md section 7).

Drives the real CLI binary: `NBE_CLI` from the environment (set by ctest through
NBE_TEST_ENV), else `build/agent/nuvlabox-event` of this source tree. Every test
gets its own temporary state directory (`--state-dir`), its own `--config` file
and its own boot id file (`boot_id_file`), so tests never share a buffer and
never read the host's configuration.

The wire bodies are checked with the closed-schema validator of
`tests/nuvla/schema.py` (strict mode: what our agent may send).

Standard library only (Debian 12's python3.11). Run directly or through ctest:
    python3 tests/cli/test_cli.py [-v] [TestClass.test_name]
"""

import calendar
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

SOURCE_DIR = Path(os.environ.get("NBE_SOURCE_DIR") or Path(__file__).resolve().parents[2])
CLI = os.environ.get("NBE_CLI") or str(SOURCE_DIR / "build" / "agent" / "nuvlabox-event")

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(SOURCE_DIR / "tests" / "nuvla"))
from schema import validate_event  # noqa: E402  (the project's closed-schema validator)

try:
    import sqlite3
except ImportError:  # python3 without the sqlite3 module: the salvage probe is skipped
    sqlite3 = None

# sysexits.h
EX_OK, EX_USAGE, EX_DATAERR, EX_IOERR, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 74, 75, 78

UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
RECORD_STDOUT_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\n")
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

LIFECYCLE_OPS = ("activate", "commission", "decommission", "reboot", "add-ssh-key",
                 "revoke-ssh-key")
EVENT_KEYS = ("id", "seq", "name", "severity", "phase", "timestamp", "state", "server_id",
              "parent", "job", "details", "attempts", "last_error")
STATUS_KEYS = ("pending", "sent", "dead", "dropped", "oldest_pending_age_s", "buffer_bytes",
               "upload_state", "last_error", "next_attempt_in_s")
UPLOAD_STATES = ("idle", "uploading", "backoff", "offline", "auth-failed")

# Environment variables the CLI reads (DESIGN section 8): never inherited.
AGENT_ENV = ("NUVLA_ENDPOINT", "NUVLA_ENDPOINT_INSECURE", "NUVLAEDGE_UUID", "NUVLABOX_UUID",
             "NUVLAEDGE_API_KEY", "NUVLAEDGE_API_SECRET", "HOST_HOME", "RUNTIME_DIRECTORY")

NB_UUID = "1c56a2f0-3b7d-4e21-9c4a-7d2e5f8a9b01"
NB_ID = "nuvlabox/" + NB_UUID
BOOT_ID = "0a1b2c3d-1111-4222-8333-444455556666"


def project_version():
    text = (SOURCE_DIR / "CMakeLists.txt").read_text()
    m = re.search(r"project\([^)]*VERSION\s+([0-9][0-9.]*)", text)
    return m.group(1) if m else None


def new_job():
    return "job/" + str(uuid.uuid4())


class CliCase(unittest.TestCase):
    """A temporary state directory, config file and boot id file per test."""

    #: extra `key = value` lines for the config file of the test
    config_extra = ""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="nbe-cli-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.state = self.tmp / "state"
        self.boot_file = self.tmp / "boot_id"
        self.boot_file.write_text(BOOT_ID + "\n")
        self.nuvlaedge_dir = self.tmp / "nuvlaedge"
        self.nuvlaedge_dir.mkdir()
        self.config = self.write_config("nuvlabox_id = %s\n%s" % (NB_ID, self.config_extra))
        self.env = {k: v for k, v in os.environ.items() if k not in AGENT_ENV}

    # ---- helpers -------------------------------------------------------------

    def write_config(self, body, name="agent.conf", boot=True):
        """Writes a config file; boot_id_file and nuvlaedge_dir point into tmp."""
        text = ""
        if boot:
            text += "boot_id_file = %s\nnuvlaedge_dir = %s\n" % (self.boot_file,
                                                                self.nuvlaedge_dir)
        text += body
        path = self.tmp / name
        path.write_text(text)
        return path

    def run_cli(self, *args, config=None, state=None, env=None, extra_env=None, prefix=(),
                timeout=30):
        """Runs the CLI with --config/--state-dir before the subcommand.

        config/state False: leave that option out. Returns CompletedProcess
        (bytes stdout/stderr)."""
        cmd = list(prefix) + [CLI]
        if config is not False:
            cmd += ["--config", str(config or self.config)]
        if state is not False:
            cmd += ["--state-dir", str(state or self.state)]
        cmd += list(args)
        e = dict(env if env is not None else self.env)
        if extra_env:
            e.update(extra_env)
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                              timeout=timeout)

    def describe(self, p):
        return "exit %d\nstdout: %r\nstderr: %r" % (p.returncode, p.stdout[:2000],
                                                    p.stderr[:2000])

    def ok(self, *args, **kw):
        p = self.run_cli(*args, **kw)
        self.assertEqual(p.returncode, 0, self.describe(p))
        return p

    def record(self, name, *opts, **kw):
        """Records one event; checks the exact stdout; returns the device event id."""
        p = self.ok("record", name, *opts, **kw)
        self.assertIsNotNone(RECORD_STDOUT_RE.fullmatch(p.stdout), self.describe(p))
        self.assertEqual(p.stderr, b"", self.describe(p))
        return p.stdout.decode().strip()

    def list_json(self, *opts, **kw):
        p = self.ok("list", "--json", *opts, **kw)
        events = json.loads(p.stdout)
        self.assertIsInstance(events, list)
        return events

    def show_json(self, ref, **kw):
        p = self.ok("show", ref, "--json", **kw)
        obj = json.loads(p.stdout)
        self.assertIsInstance(obj, dict)
        return obj

    def status_json(self, **kw):
        p = self.ok("status", "--json", **kw)
        return json.loads(p.stdout)

    def assert_one_line_error(self, p, code, *substrings):
        """Failure contract: the exit code, nothing on stdout, one line on stderr."""
        self.assertEqual(p.returncode, code, self.describe(p))
        self.assertEqual(p.stdout, b"", self.describe(p))
        err = p.stderr.decode("utf-8", "replace")
        self.assertTrue(err.endswith("\n") and err.count("\n") == 1 and err.strip(),
                        "expected exactly one line on stderr, got %r" % err)
        for s in substrings:
            self.assertIn(s, err)
        return err

    def fails(self, code, *args, contains=(), **kw):
        p = self.run_cli(*args, **kw)
        return self.assert_one_line_error(p, code, *contains)

    def seed(self):
        """A few varied events; returns the list --json snapshot."""
        job = new_job()
        first = self.record("nuvlabox.reboot", "--job", job, "--message", "reboot asked")
        self.record("nuvlabox.reboot.completed", "--job", job, "--detail", "downtime=12s")
        self.record("custom.thing", "--severity", "high", "--details-json",
                    '{"n": 1, "nested": {"a": [1, 2]}}', "--parent", first)
        self.record("nuvlabox.add-ssh-key", "--severity", "critical",
                    "--parent", "credential/" + str(uuid.uuid4()))
        events = self.list_json()
        self.assertEqual(len(events), 4)
        return events

    def check_wire(self, obj, nuvlabox_id=NB_ID):
        """The show --json wire body against the closed schema and DESIGN section 3."""
        w = obj.get("wire")
        self.assertIsInstance(w, dict, "no wire body: %r" % obj.get("wire_note"))
        self.assertEqual(validate_event(w, strict=True), [], json.dumps(w, indent=1))
        self.assertEqual(w["category"], "user")
        self.assertEqual(w["name"], obj["name"])
        self.assertEqual(w["severity"], obj["severity"])
        self.assertEqual(w["tags"], ["device-event/" + obj["id"]])
        self.assertEqual(w["acl"]["owners"], [nuvlabox_id])
        self.assertEqual(w["content"]["resource"]["href"], nuvlabox_id)
        rc = w["content"]["resource"]["content"]
        self.assertEqual(rc["device-event-id"], obj["id"])
        self.assertEqual(rc["seq"], obj["seq"])
        for k, v in obj["details"].items():
            self.assertEqual(rc.get(k), v, "detail %s not in content.resource.content" % k)
        links = w["content"]["linked-identifiers"]
        self.assertIn(nuvlabox_id, links)
        if obj["job"]:
            self.assertIn(obj["job"], links)
        if obj["phase"]:
            self.assertEqual(w["content"]["state"], obj["phase"])
        self.assertEqual(w["timestamp"], obj["timestamp"])
        self.assertIsInstance(w.get("description"), str)
        size = len(json.dumps(w, separators=(",", ":"), ensure_ascii=False).encode())
        self.assertLessEqual(size, 32768)
        return w


# =============================================================================
class TestGeneral(CliCase):

    def test_version(self):
        p = self.run_cli("--version", config=False, state=False)
        self.assertEqual(p.returncode, 0, self.describe(p))
        self.assertRegex(p.stdout.decode(), r"^nuvlabox-event \d+\.\d+\.\d+\S*\n$")
        version = project_version()
        if version:
            self.assertEqual(p.stdout.decode().split()[1], version)
        self.assertEqual(p.stderr, b"")
        # also after global options
        p2 = self.ok("--version")
        self.assertEqual(p2.stdout, p.stdout)

    def test_help(self):
        p = self.run_cli("--help", config=False, state=False)
        self.assertEqual(p.returncode, 0, self.describe(p))
        out = p.stdout.decode()
        for cmd in ("record", "list", "show", "status", "export", "purge"):
            self.assertRegex(out, r"(?m)^\s*%s\b" % cmd)
        self.assertIn("--config", out)
        self.assertIn("--state-dir", out)
        p = self.run_cli("-h", config=False, state=False)
        self.assertEqual(p.returncode, 0)

    def test_command_help(self):
        for cmd, words in (("record", ("NAME", "--severity", "--job", "--parent", "--message",
                                       "--detail", "--details-json")),
                           ("list", ("--state", "--limit", "--json")),
                           ("show", ("ID", "--json")),
                           ("status", ("--json",)),
                           ("export", ("--state",)),
                           ("purge", ("--include-pending",))):
            with self.subTest(cmd=cmd):
                p = self.ok(cmd, "--help")
                out = p.stdout.decode()
                self.assertIn(cmd, out)
                for w in words:
                    self.assertIn(w, out)
        self.assertFalse(self.state.exists() and (self.state / "events.db").exists(),
                         "--help must not create a buffer")

    def test_usage_errors(self):
        cases = [
            (("frob",), "frob"),
            ((), "command"),
            (("record",), "NAME"),
            (("record", "a.b", "c.d"), "c.d"),
            (("record", "a.b", "--bogus"), "--bogus"),
            (("record", "-reboot"), "-r"),
            (("record", "a.b", "-x"), "-x"),
            (("record", "a.b", "--severity"), "--severity"),
            (("list", "--state", "lost"), "lost"),
            (("list", "--limit", "many"), "many"),
            (("list", "extra"), "extra"),
            (("show",), "ID"),
            (("show", "not-an-id"), "not-an-id"),
            (("status", "--verbose"), "--verbose"),
            (("purge", "--everything"), "--everything"),
        ]
        for args, word in cases:
            with self.subTest(args=args):
                p = self.run_cli(*args)
                self.assertEqual(p.returncode, EX_USAGE, self.describe(p))
                self.assertEqual(p.stdout, b"")
                lines = p.stderr.decode().splitlines()
                self.assertTrue(lines and word in lines[0], self.describe(p))
                # the first line says what; at most a usage synopsis follows it
                self.assertLessEqual(len(lines), 2, self.describe(p))
                if len(lines) == 2:
                    self.assertTrue(lines[1].startswith("usage:"), self.describe(p))

    def test_global_options_before_and_after_the_command(self):
        cfg, sd = str(self.config), str(self.state)
        ids = []
        for args in (["--config", cfg, "--state-dir", sd, "record", "a.one"],
                     ["record", "a.two", "--config", cfg, "--state-dir", sd],
                     ["--config", cfg, "record", "a.three", "--state-dir", sd],
                     ["--state-dir", sd, "record", "--config", cfg, "a.four"],
                     ["--state-dir=" + sd, "record", "a.five", "--config=" + cfg]):
            with self.subTest(args=args):
                p = self.run_cli(*args, config=False, state=False)
                self.assertEqual(p.returncode, 0, self.describe(p))
                self.assertIsNotNone(RECORD_STDOUT_RE.fullmatch(p.stdout))
                ids.append(p.stdout.decode().strip())
        for args in (["list", "--json", "--config", cfg, "--state-dir", sd],
                     ["--config", cfg, "list", "--state-dir", sd, "--json"],
                     ["--state-dir", sd, "--config", cfg, "list", "--json"]):
            with self.subTest(args=args):
                p = self.run_cli(*args, config=False, state=False)
                self.assertEqual(p.returncode, 0, self.describe(p))
                events = json.loads(p.stdout)
                self.assertEqual([e["id"] for e in events], ids)
                self.assertEqual([e["name"] for e in events],
                                 ["a.one", "a.two", "a.three", "a.four", "a.five"])
        for cmd in (["status", "--json"], ["export"], ["show", ids[0], "--json"], ["purge"]):
            with self.subTest(cmd=cmd):
                self.ok(*cmd, "--state-dir", sd, "--config", cfg, config=False, state=False)


# =============================================================================
class TestRecord(CliCase):

    def test_record_prints_only_the_id_and_stores_the_event(self):
        t0 = time.time()
        p = self.ok("record", "nuvlabox.reboot")
        self.assertIsNotNone(RECORD_STDOUT_RE.fullmatch(p.stdout), self.describe(p))
        self.assertEqual(p.stderr, b"")
        eid = p.stdout.decode().strip()
        events = self.list_json()
        self.assertEqual(len(events), 1)
        ev = events[0]
        for k in EVENT_KEYS:
            self.assertIn(k, ev)
        self.assertEqual(ev["id"], eid)
        self.assertIsInstance(ev["seq"], int)
        self.assertGreater(ev["seq"], 0)
        self.assertEqual(ev["name"], "nuvlabox.reboot")
        self.assertEqual(ev["severity"], "medium")
        self.assertEqual(ev["phase"], "started")
        self.assertEqual(ev["state"], "pending")
        self.assertIsNone(ev["server_id"])
        self.assertIsNone(ev["parent"])
        self.assertIsNone(ev["job"])
        self.assertEqual(ev["details"], {})
        self.assertEqual(ev["attempts"], 0)
        self.assertIsNone(ev["last_error"])
        self.assertRegex(ev["timestamp"], TIMESTAMP_RE)
        ts = calendar.timegm(time.strptime(ev["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
        self.assertLess(abs(ts - t0), 120, "timestamp far from now")

    def test_record_fields_round_trip(self):
        job = new_job()
        eid = self.record("my-app.step_1.done", "--severity", "high", "--job", job,
                          "--message", "h\u00e9llo \u2713 \"quoted\"\nsecond line",
                          "--detail", "a=1", "--detail", "b=x=y", "--detail", "empty=",
                          "--details-json", '{"n": 2, "o": {"k": [true, null]}, "u": "\u00fc"}')
        ev = self.show_json(eid)
        self.assertEqual(ev["name"], "my-app.step_1.done")
        self.assertEqual(ev["severity"], "high")
        self.assertIsNone(ev["phase"])
        self.assertEqual(ev["job"], job)
        self.assertEqual(ev["details"], {"n": 2, "o": {"k": [True, None]}, "u": "\u00fc",
                                         "a": "1", "b": "x=y", "empty": ""})
        w = self.check_wire(ev)
        self.assertEqual(w["description"], "h\u00e9llo \u2713 \"quoted\"\nsecond line")
        self.assertEqual(w["parent"], job)
        self.assertNotIn("state", w["content"])
        self.assertNotIn("success", w)

    def test_severities_and_phases(self):
        for sev in ("low", "medium", "high", "critical"):
            with self.subTest(severity=sev):
                eid = self.record("sev.test", "--severity", sev)
                ev = self.show_json(eid)
                self.assertEqual(ev["severity"], sev)
                self.assertEqual(self.check_wire(ev)["severity"], sev)
        for name, phase in (("x.y.completed", "completed"), ("x.y.failed", "failed"),
                            ("nuvlabox.reboot", "started"), ("nuvlabox.reboot.unplanned", None),
                            ("nuvlabox.other", None), ("plain", None)):
            with self.subTest(name=name):
                ev = self.show_json(self.record(name))
                self.assertEqual(ev["phase"], phase)
                self.check_wire(ev)

    def test_limits_at_the_boundary_are_accepted(self):
        name = "a" * 128
        msg = "m" * 4096
        # canonical details text of exactly 16384 bytes: {"a":"..."} is 8 + n
        details = json.dumps({"a": "d" * (16384 - 8)}, separators=(",", ":"))
        self.assertEqual(len(details), 16384)
        eid = self.record(name, "--message", msg, "--details-json", details)
        ev = self.show_json(eid)
        self.assertEqual(ev["name"], name)
        self.assertEqual(len(ev["details"]["a"]), 16376)
        self.check_wire(ev)
        self.record("b" * 10, "--message", "\u00e9" * 2048)  # 4096 bytes of UTF-8

    def test_many_events_stay_in_order(self):
        ids = [self.record("order.n", "--detail", "i=%d" % i) for i in range(25)]
        events = self.list_json()
        self.assertEqual([e["id"] for e in events], ids)
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(ids)), 25)

    def test_details_stored_faithfully_or_refused(self):
        # Details JSON is kept as given or refused (65), never silently altered.
        # cJSON cannot hold a NUL inside a string and turns 1e400 into null.
        for text in ('{"a": "x\\u0000y"}', '{"a\\u0000b": 1}', '{"n": 1e400}',
                     '{"n": -1e400}'):
            with self.subTest(details=text):
                p = self.run_cli("record", "edge.ev", "--details-json", text)
                if p.returncode == 0:
                    stored = self.show_json(p.stdout.decode().strip())["details"]
                    self.assertEqual(stored, json.loads(text),
                                     "details %s silently stored as %s" % (text, stored))
                else:
                    self.assert_one_line_error(p, EX_DATAERR)

    def test_concurrent_records(self):
        # Producers running at the same time each get a durable, distinct event.
        procs = [subprocess.Popen(
            ["sh", "-c", 'for i in 1 2 3 4 5 6 7 8; do "$0" "$@" || exit $?; done', CLI,
             "--config", str(self.config), "--state-dir", str(self.state), "record",
             "par.ev", "--detail", "worker=%d" % w],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env) for w in range(8)]
        ids = []
        for w, pr in enumerate(procs):
            out, err = pr.communicate(timeout=60)
            self.assertEqual(pr.returncode, 0, "worker %d: %r" % (w, err))
            self.assertEqual(err, b"")
            lines = out.decode().splitlines()
            self.assertEqual(len(lines), 8)
            ids += lines
        events = self.list_json()
        self.assertEqual(sorted(e["id"] for e in events), sorted(ids))
        self.assertEqual(len({e["seq"] for e in events}), 64)
        self.assertEqual(self.status_json()["pending"], 64)

    def test_wire_body_never_exceeds_32k(self):
        # DESIGN section 7: a whole wire body <= 32 KiB; over is a clear error (65)
        # at capture, never an event that can never be uploaded. Control characters
        # in the message grow sixfold when JSON-escaped (\u0001).
        before = self.seed()
        msg = "\x01" * 4096
        details = json.dumps({"a": "x" * 16370})
        p = self.run_cli("record", "big.one", "--message", msg, "--details-json", details)
        if p.returncode == 0:
            eid = p.stdout.decode().strip()
            ev = self.show_json(eid)
            self.fail("record accepted an event whose wire body cannot be sent: wire=%s note=%r"
                      % ("null" if ev.get("wire") is None else "present", ev.get("wire_note")))
        self.assert_one_line_error(p, EX_DATAERR)
        self.assertEqual(self.list_json(), before)


# =============================================================================
def _bad_input_cases():
    """(test name, record arguments, exit code, words the error must contain)."""
    big_details = json.dumps({"a": "x" * 16400})
    return [
        ("name_uppercase", ["Nuvlabox.reboot"], EX_DATAERR, ["Nuvlabox.reboot"]),
        ("name_leading_dot", [".reboot"], EX_DATAERR, [".reboot"]),
        ("name_slash", ["nuvlabox/reboot"], EX_DATAERR, []),
        ("name_space", ["nuvlabox reboot"], EX_DATAERR, []),
        ("name_129_chars", ["a" * 129], EX_DATAERR, ["128"]),
        ("name_empty", [""], EX_DATAERR, []),
        ("name_invalid_utf8", [b"ev\xff"], EX_DATAERR, []),
        ("message_4097_bytes", ["ok.name", "--message", "m" * 4097], EX_DATAERR, ["4096"]),
        ("message_invalid_utf8", ["ok.name", "--message", b"ab\xffcd"], EX_DATAERR,
         ["UTF-8"]),
        ("message_truncated_utf8", ["ok.name", "--message", b"ab\xc3"], EX_DATAERR, ["UTF-8"]),
        ("details_over_16k", ["ok.name", "--details-json", big_details], EX_DATAERR,
         ["16384"]),
        ("details_pairs_over_16k", ["ok.name", "--detail", "a=" + "x" * 9000, "--detail",
                                    "b=" + "y" * 9000], EX_DATAERR, ["16384"]),
        ("details_array", ["ok.name", "--details-json", "[1, 2]"], EX_DATAERR, ["object"]),
        ("details_string", ["ok.name", "--details-json", '"text"'], EX_DATAERR, ["object"]),
        ("details_number", ["ok.name", "--details-json", "42"], EX_DATAERR, ["object"]),
        ("details_invalid_json", ["ok.name", "--details-json", '{"a": 1,'], EX_DATAERR,
         ["JSON"]),
        ("details_trailing_garbage", ["ok.name", "--details-json", '{"a": 1} x'], EX_DATAERR,
         ["JSON"]),
        ("details_json_invalid_utf8", ["ok.name", "--details-json", b'{"a": "\xff"}'],
         EX_DATAERR, ["UTF-8"]),
        ("detail_invalid_utf8", ["ok.name", "--detail", b"k=v\xfe"], EX_DATAERR, ["UTF-8"]),
        ("detail_reserved_seq", ["ok.name", "--detail", "seq=5"], EX_DATAERR, ["seq"]),
        ("detail_reserved_device_event_id", ["ok.name", "--detail", "device-event-id=x"],
         EX_DATAERR, ["device-event-id"]),
        ("details_json_reserved_seq", ["ok.name", "--details-json", '{"seq": 1}'], EX_DATAERR,
         ["seq"]),
        ("details_json_reserved_device_event_id",
         ["ok.name", "--details-json", '{"device-event-id": "x"}'], EX_DATAERR,
         ["device-event-id"]),
        ("detail_duplicate_key", ["ok.name", "--detail", "k=1", "--detail", "k=2"], EX_DATAERR,
         ["k"]),
        ("details_json_duplicate_key", ["ok.name", "--details-json", '{"k": 1, "k": 2}'],
         EX_DATAERR, ["k"]),
        ("detail_and_json_duplicate_key", ["ok.name", "--details-json", '{"k": 1}',
                                           "--detail", "k=2"], EX_DATAERR, ["k"]),
        ("detail_without_equals", ["ok.name", "--detail", "novalue"], EX_DATAERR, ["novalue"]),
        ("detail_bad_key", ["ok.name", "--detail", "bad key=1"], EX_DATAERR, []),
        ("severity_unknown", ["ok.name", "--severity", "urgent"], EX_DATAERR, ["urgent"]),
        ("severity_uppercase", ["ok.name", "--severity", "HIGH"], EX_DATAERR, ["HIGH"]),
        ("job_without_prefix", ["ok.name", "--job", "9f0c1234"], EX_DATAERR, ["9f0c1234"]),
        ("job_wrong_type", ["ok.name", "--job", "event/9f0c1234"], EX_DATAERR, []),
        ("job_empty_id", ["ok.name", "--job", "job/"], EX_DATAERR, []),
        ("job_bad_chars", ["ok.name", "--job", "job/a b"], EX_DATAERR, []),
        ("parent_unknown_device_id", ["ok.name", "--parent", str(uuid.UUID(int=0x4242, version=4))],
         EX_DATAERR, []),
        ("parent_not_an_href", ["ok.name", "--parent", "Not/An-Href!"], EX_DATAERR, []),
    ]


class TestBadInput(CliCase):
    """Each bad input: the documented code, one line on stderr, nothing stored."""


def _make_bad_input_test(args, code, words):
    def test(self):
        before = self.seed()
        err = self.fails(code, "record", *args)
        for w in words:
            self.assertIn(w, err)
        self.assertEqual(self.list_json(), before, "stored events changed")
    return test


for _name, _args, _code, _words in _bad_input_cases():
    _t = _make_bad_input_test(_args, _code, _words)
    _t.__name__ = "test_bad_" + _name
    setattr(TestBadInput, _t.__name__, _t)
del _name, _args, _code, _words, _t


# =============================================================================
class TestConfig(CliCase):

    def assert_config_error(self, body, *words, line=None, cmds=(("record", "cfg.ev"),
                                                                  ("status",)), before=None):
        if before is None:
            before = self.seed()
        bad = self.write_config("nuvlabox_id = %s\n%s" % (NB_ID, body), name="bad.conf")
        for cmd in cmds:
            with self.subTest(cmd=cmd):
                err = self.fails(EX_CONFIG, *cmd, config=bad)
                for w in words:
                    self.assertIn(w, err)
                if line is not None:
                    # boot_id_file, nuvlaedge_dir and nuvlabox_id come first
                    self.assertIn("%s:%d" % (bad, line + 3), err)
        self.assertEqual(self.list_json(), before)

    def test_unknown_key_names_file_and_line(self):
        self.assert_config_error("# a comment\n\nno_such_key = 1\n", "no_such_key", line=3)

    def test_bad_values(self):
        before = self.seed()
        for body, word in (("max_events = lots\n", "max_events"),
                           ("max_events = 5\n", "max_events"),
                           ("max_buffer_bytes = 12Q\n", "max_buffer_bytes"),
                           ("retry_base = 5 parsecs\n", "retry_base"),
                           ("insecure = maybe\n", "insecure"),
                           ("log_level = loud\n", "log_level"),
                           ("endpoint = ftp://example.org\n", "endpoint"),
                           ("api_key = secret/1\n", "api_key")):
            with self.subTest(body=body):
                self.assert_config_error(body, word, line=1, cmds=(("record", "cfg.ev"),),
                                         before=before)

    def test_bad_nuvlabox_id(self):
        bad = self.write_config("nuvlabox_id = nuvlabox/not-a-uuid\n", name="bad.conf")
        self.fails(EX_CONFIG, "record", "cfg.ev", config=bad, contains=("nuvlabox_id",))

    def test_duplicate_key(self):
        self.assert_config_error("max_events = 100\n# again\nmax_events = 200\n",
                                 "max_events", line=3)

    def test_line_without_equals(self):
        self.assert_config_error("just some words\n", line=1)

    def test_relative_state_dir(self):
        bad = self.write_config("nuvlabox_id = %s\nstate_dir = relative/dir\n" % NB_ID,
                                name="bad.conf")
        self.fails(EX_CONFIG, "record", "cfg.ev", config=bad, state=False,
                   contains=("state_dir",))
        self.fails(EX_CONFIG, "record", "cfg.ev", state="relative/dir")

    def test_missing_config_file(self):
        before = self.seed()
        missing = self.tmp / "does-not-exist.conf"
        for cmd in (("record", "cfg.ev"), ("list",), ("status",)):
            with self.subTest(cmd=cmd):
                self.fails(EX_CONFIG, *cmd, config=missing, contains=(str(missing),))
        self.assertEqual(self.list_json(), before)

    def test_config_is_a_directory(self):
        d = self.tmp / "conf.d"
        d.mkdir()
        self.fails(EX_CONFIG, "status", config=d, contains=(str(d),))

    def test_comments_quotes_and_units(self):
        cfg = self.write_config(
            "# comment line\n"
            "   nuvlabox_id = \"%s\"   # trailing comment\n"
            "endpoint = nuvla.example.org:8443/   \n"
            "max_buffer_bytes = 512K\n"
            "max_events = 1000\n"
            "retry_base = 500ms\n"
            "retry_cap = 1h\n"
            "insecure = false\n" % NB_UUID.upper(), name="good.conf")
        st = self.status_json(config=cfg)
        self.assertEqual(st["endpoint"], "https://nuvla.example.org:8443")
        self.assertEqual(st.get("nuvlabox_id"), NB_ID)
        if "max_buffer_bytes" in st:
            self.assertEqual(st["max_buffer_bytes"], 512 * 1024)
        if "max_events" in st:
            self.assertEqual(st["max_events"], 1000)

    def test_precedence_defaults_file_env_flags(self):
        plain = self.write_config("", name="plain.conf")
        st = self.status_json(config=plain)
        self.assertEqual(st["endpoint"], "https://nuvla.io")  # default
        self.assertIsNone(st.get("nuvlabox_id"))
        other_uuid = str(uuid.uuid4())
        filecfg = self.write_config("endpoint = https://file.example.org\n"
                                    "nuvlabox_id = nuvlabox/%s\n"
                                    "state_dir = %s\n" % (other_uuid, self.tmp / "file-state"),
                                    name="file.conf")
        # file over defaults; state_dir from the file when no flag
        st = self.status_json(config=filecfg, state=False)
        self.assertEqual(st["endpoint"], "https://file.example.org")
        self.assertEqual(st["nuvlabox_id"], "nuvlabox/" + other_uuid)
        self.assertEqual(st["state_dir"], str(self.tmp / "file-state"))
        # env over file
        st = self.status_json(config=filecfg, state=False,
                              extra_env={"NUVLA_ENDPOINT": "https://env.example.org",
                                         "NUVLAEDGE_UUID": NB_UUID})
        self.assertEqual(st["endpoint"], "https://env.example.org")
        self.assertEqual(st["nuvlabox_id"], NB_ID)
        # flags over file: --state-dir beats state_dir
        flag_state = self.tmp / "flag-state"
        eid = self.record("prec.ev", config=filecfg, state=flag_state)
        self.assertTrue((flag_state / "events.db").exists())
        self.assertEqual(self.list_json(config=filecfg, state=False), [])
        self.assertEqual([e["id"] for e in self.list_json(config=filecfg, state=flag_state)],
                         [eid])
        st = self.status_json(config=filecfg, state=flag_state)
        self.assertEqual(st["state_dir"], str(flag_state))
        self.assertEqual(st["pending"], 1)
        self.assertEqual(self.show_json(eid, config=filecfg, state=flag_state)["id"], eid)

    def test_env_nuvlabox_uuid(self):
        plain = self.write_config("", name="plain.conf")
        u1, u2 = str(uuid.uuid4()), str(uuid.uuid4())
        for env, expect in (({"NUVLABOX_UUID": u1}, "nuvlabox/" + u1),
                            ({"NUVLAEDGE_UUID": u2}, "nuvlabox/" + u2),
                            ({"NUVLAEDGE_UUID": "nuvlabox/" + u2}, "nuvlabox/" + u2),
                            ({"NUVLAEDGE_UUID": u2.upper()}, "nuvlabox/" + u2),
                            ({"NUVLABOX_UUID": u1, "NUVLAEDGE_UUID": u2}, "nuvlabox/" + u2),
                            ({"NUVLABOX_UUID": u1, "NUVLAEDGE_UUID": ""}, "nuvlabox/" + u1)):
            with self.subTest(env=env):
                st = self.status_json(config=plain, extra_env=env)
                self.assertEqual(st["nuvlabox_id"], expect)
        # the wire body uses it
        eid = self.record("env.ev", config=plain, extra_env={"NUVLABOX_UUID": u1})
        ev = self.show_json(eid, config=plain, extra_env={"NUVLABOX_UUID": u1})
        self.check_wire(ev, nuvlabox_id="nuvlabox/" + u1)

    def test_env_endpoint_gets_https(self):
        for value, expect in (("nuvla.example.org", "https://nuvla.example.org"),
                              ("nuvla.example.org:8443/", "https://nuvla.example.org:8443"),
                              ("http://local.test:8200", "http://local.test:8200"),
                              ("https://nuvla.io/", "https://nuvla.io")):
            with self.subTest(value=value):
                st = self.status_json(extra_env={"NUVLA_ENDPOINT": value})
                self.assertEqual(st["endpoint"], expect)

    def test_bad_env_values(self):
        before = self.seed()
        for env, word in (({"NUVLAEDGE_UUID": "garbage"}, "NUVLAEDGE_UUID"),
                          ({"NUVLABOX_UUID": "nuvlabox/xyz"}, "NUVLABOX_UUID"),
                          ({"NUVLA_ENDPOINT": "ftp://x.org"}, "NUVLA_ENDPOINT"),
                          ({"NUVLA_ENDPOINT_INSECURE": "perhaps"}, "NUVLA_ENDPOINT_INSECURE")):
            with self.subTest(env=env):
                self.fails(EX_CONFIG, "record", "env.ev", extra_env=env, contains=(word,))
        self.assertEqual(self.list_json(), before)

    def test_without_nuvlabox_id_record_works_and_wire_waits(self):
        # Before activation the id is unknown: capture works, the wire says why it
        # is missing.
        plain = self.write_config("", name="plain.conf")
        eid = self.record("early.ev", config=plain)
        ev = self.show_json(eid, config=plain)
        self.assertIsNone(ev["wire"])
        self.assertIn("nuvlabox", ev.get("wire_note", ""))
        st = self.status_json(config=plain)
        self.assertIsNone(st["nuvlabox_id"])
        # once the id is known, the same event has a valid body
        self.check_wire(self.show_json(eid, config=plain,
                                       extra_env={"NUVLAEDGE_UUID": NB_UUID}))

    @unittest.skip("issue 5 (identity from NuvlaEdge's files) is not built yet")
    def test_nuvlabox_id_from_nuvlaedge_session_file(self):
        # DESIGN section 8: nuvlabox_id defaults to NuvlaEdge's session file.
        (self.nuvlaedge_dir / "nuvlaedge_session.json").write_text(json.dumps({
            "endpoint": "https://nuvla.io", "insecure": False,
            "nuvlaedge-uuid": NB_ID, "irs2": ""}))
        plain = self.write_config("", name="plain.conf")
        st = self.status_json(config=plain)
        self.assertEqual(st["nuvlabox_id"], NB_ID)


# =============================================================================
class TestStateDir(CliCase):

    def test_default_config_file_may_be_absent(self):
        if os.path.exists("/etc/nuvlabox-event/agent.conf"):
            self.skipTest("/etc/nuvlabox-event/agent.conf exists on this machine")
        st = self.status_json(config=False)
        self.assertEqual(st["endpoint"], "https://nuvla.io")

    def test_state_dir_created(self):
        sd = self.tmp / "new-state"
        self.record("mk.ev", state=sd)
        self.assertTrue((sd / "events.db").is_file())

    def test_parent_is_a_regular_file(self):
        before = self.seed()
        f = self.tmp / "plain-file"
        f.write_text("x")
        for sd in (f / "state", f):
            with self.subTest(state=str(sd)):
                self.fails(EX_IOERR, "record", "io.ev", state=sd, contains=(str(sd),))
                self.fails(EX_IOERR, "list", state=sd)
        self.assertEqual(f.read_text(), "x")
        self.assertEqual(self.list_json(), before)

    def test_unwritable_as_unprivileged_user(self):
        before = self.seed()
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if not setpriv:
                self.skipTest("root without setpriv")
            prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            # nobody must reach the binary, config and boot id, not write the state
            for p in (self.tmp, self.state):
                os.chmod(p, 0o755)
            for p in (self.config, self.boot_file):
                os.chmod(p, 0o644)
            probe = subprocess.run(prefix + [CLI, "--version"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
            if probe.returncode != 0:
                self.skipTest("cannot run the CLI as nobody: %r" % probe.stderr)
        else:
            prefix = []
            os.chmod(self.state, 0o555)
            self.addCleanup(os.chmod, self.state, 0o755)
        # an existing buffer the user cannot write
        p = self.run_cli("record", "io.ev", prefix=prefix)
        self.assert_one_line_error(p, EX_IOERR, str(self.state))
        # a state directory the user cannot create
        p = self.run_cli("record", "io.ev", state=self.state / "sub", prefix=prefix)
        self.assert_one_line_error(p, EX_IOERR, str(self.state / "sub"))
        self.assertEqual(self.list_json(), before)

    def _ro_bind_prefix(self, d):
        unshare = shutil.which("unshare")
        if os.geteuid() != 0 or not unshare or not shutil.which("mount"):
            self.skipTest("needs root, unshare and mount")
        prefix = [unshare, "--mount", "--", "sh", "-c",
                  'd=$1; shift; mount --bind -o ro "$d" "$d" && exec "$@"', "sh", str(d)]
        probe = subprocess.run(prefix + ["sh", "-c", 'touch "$1/probe"', "sh", str(d)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if probe.returncode == 0 or b"Read-only" not in probe.stderr:
            if (Path(d) / "probe").exists():
                (Path(d) / "probe").unlink()
            self.skipTest("read-only bind mounts not available: %r" % probe.stderr)
        return prefix

    def test_read_only_state_dir_with_buffer(self):
        before = self.seed()
        prefix = self._ro_bind_prefix(self.state)
        p = self.run_cli("record", "io.ev", prefix=prefix)
        self.assert_one_line_error(p, EX_IOERR)
        self.assertEqual(self.list_json(), before)

    def test_read_only_empty_state_dir(self):
        self.state.mkdir()
        prefix = self._ro_bind_prefix(self.state)
        p = self.run_cli("record", "io.ev", prefix=prefix)
        self.assert_one_line_error(p, EX_IOERR, str(self.state))
        self.assertEqual(list(self.state.iterdir()), [])


# =============================================================================
class TestInspect(CliCase):

    def test_list_table(self):
        p = self.ok("list")
        lines = p.stdout.decode().splitlines()
        self.assertEqual(len(lines), 1, "an empty buffer lists only the header")
        events = self.seed()
        p = self.ok("list")
        lines = p.stdout.decode().splitlines()
        self.assertEqual(len(lines), 1 + len(events))
        for line, ev in zip(lines[1:], events):
            self.assertIn(ev["id"], line)
            self.assertIn(ev["name"], line)
            self.assertIn(ev["state"], line)
            self.assertIn(ev["severity"], line)
            self.assertEqual(line.split()[0], str(ev["seq"]))
        self.assertEqual(p.stderr, b"")

    def test_list_json_state_and_limit(self):
        self.assertEqual(self.list_json(), [])
        events = self.seed()
        for ev in events:
            for k in EVENT_KEYS:
                self.assertIn(k, ev)
        self.assertEqual([e["seq"] for e in events], sorted(e["seq"] for e in events))
        self.assertEqual(self.list_json("--state", "all"), events)
        self.assertEqual(self.list_json("--state", "pending"), events)
        self.assertEqual(self.list_json("--state", "sent"), [])
        self.assertEqual(self.list_json("--state", "dead"), [])
        self.assertEqual(self.list_json("--limit", "2"), events[:2])
        self.assertEqual(self.list_json("--limit", "1", "--state", "pending"), events[:1])
        self.assertEqual(self.list_json("--limit", "100"), events)
        p = self.ok("list", "--state", "sent")
        self.assertEqual(len(p.stdout.decode().splitlines()), 1)
        p = self.ok("list", "--limit", "3")
        self.assertEqual(len(p.stdout.decode().splitlines()), 4)

    def test_list_limit_over_many(self):
        ids = [self.record("many.ev", "--severity", "low") for _ in range(12)]
        self.assertEqual([e["id"] for e in self.list_json("--limit", "5")], ids[:5])
        self.assertEqual(len(self.list_json()), 12)

    def test_export_json_lines(self):
        p = self.ok("export")
        self.assertEqual(p.stdout, b"")
        events = self.seed()
        p = self.ok("export")
        lines = p.stdout.decode().split("\n")
        self.assertEqual(lines[-1], "", "JSON Lines end with a newline")
        objs = [json.loads(line) for line in lines[:-1]]
        self.assertEqual(objs, events)
        p = self.ok("export", "--state", "pending")
        self.assertEqual([json.loads(x) for x in p.stdout.decode().splitlines()], events)
        p = self.ok("export", "--state", "dead")
        self.assertEqual(p.stdout, b"")

    def test_output_write_error_fails(self):
        # more than one stdio buffer of output: the first write fails, the
        # final flush has nothing left to write, the command must still fail
        for i in range(40):
            self.record("big.ev", "--message", "x" * 2000, "--detail", "n=%d" % i)
        for args in (("export",), ("list", "--json"), ("status",)):
            with self.subTest(args=args), open("/dev/full", "wb") as full:
                p = subprocess.run([CLI, "--config", str(self.config), "--state-dir",
                                    str(self.state), *args], stdout=full,
                                   stderr=subprocess.PIPE, env=self.env, timeout=30)
                self.assertEqual(p.returncode, EX_IOERR, p.stderr)
                self.assertIn(b"writing the output", p.stderr)

    def test_show_by_id_and_seq(self):
        events = self.seed()
        for ev in events:
            with self.subTest(seq=ev["seq"]):
                by_id = self.show_json(ev["id"])
                by_seq = self.show_json(str(ev["seq"]))
                by_upper = self.show_json(ev["id"].upper())
                self.assertEqual(by_id, by_seq)
                self.assertEqual(by_id, by_upper)
                # the same object as list --json, plus wire
                self.assertEqual({k: v for k, v in by_id.items()
                                  if k not in ("wire", "wire_note")}, ev)
                self.assertIn("wire", by_id)
                self.check_wire(by_id)

    def test_show_text(self):
        events = self.seed()
        ev = events[2]
        p = self.ok("show", ev["id"])
        out = p.stdout.decode()
        self.assertEqual(p.stderr, b"")
        self.assertRegex(out, r"(?m)^id:\s+%s$" % ev["id"])
        self.assertRegex(out, r"(?m)^seq:\s+%d$" % ev["seq"])
        self.assertRegex(out, r"(?m)^name:\s+%s$" % re.escape(ev["name"]))
        self.assertRegex(out, r"(?m)^severity:\s+high$")
        self.assertRegex(out, r"(?m)^state:\s+pending$")
        self.assertIn("\nwire:\n", out)
        wire_text = out.split("\nwire:\n", 1)[1]
        self.assertEqual(json.loads(wire_text), self.show_json(ev["id"])["wire"])
        p2 = self.ok("show", str(ev["seq"]))
        self.assertEqual(p2.stdout, p.stdout)

    def test_show_unknown(self):
        self.seed()
        self.fails(EX_DATAERR, "show", str(uuid.uuid4()))
        self.fails(EX_DATAERR, "show", "999")
        self.fails(EX_DATAERR, "show", "event/" + str(uuid.uuid4()))

    def test_status_text_and_json(self):
        st = self.status_json()
        for k in STATUS_KEYS:
            self.assertIn(k, st)
        self.assertEqual((st["pending"], st["sent"], st["dead"], st["dropped"]), (0, 0, 0, 0))
        self.assertIn(st["oldest_pending_age_s"], (None, 0))
        self.assertIn(st["upload_state"], UPLOAD_STATES)
        self.assertIsNone(st["last_error"])
        self.seed()
        st = self.status_json()
        for k in STATUS_KEYS:
            self.assertIn(k, st)
        self.assertEqual(st["pending"], 4)
        self.assertEqual(st["sent"], 0)
        self.assertEqual(st["dead"], 0)
        self.assertEqual(st["dropped"], 0)
        self.assertIsInstance(st["oldest_pending_age_s"], int)
        self.assertGreaterEqual(st["oldest_pending_age_s"], 0)
        self.assertLess(st["oldest_pending_age_s"], 120)
        self.assertIsInstance(st["buffer_bytes"], int)
        self.assertGreater(st["buffer_bytes"], 0)
        self.assertIn(st["upload_state"], UPLOAD_STATES)
        self.assertTrue(st["next_attempt_in_s"] is None or st["next_attempt_in_s"] >= 0)
        p = self.ok("status")
        out = p.stdout.decode()
        for label, value in (("pending", 4), ("sent", 0), ("dead", 0), ("dropped", 0)):
            self.assertRegex(out, r"(?m)^%s:\s+%d\b" % (label, value))
        self.assertRegex(out, r"(?m)^upload:\s+(%s)\b" % "|".join(UPLOAD_STATES))

    def test_purge(self):
        events = self.seed()
        p = self.ok("purge")
        self.assertIn("0", p.stdout.decode())
        self.assertEqual(self.list_json(), events, "purge removed pending events")
        p = self.ok("purge", "--include-pending")
        self.assertIn(str(len(events)), p.stdout.decode())
        self.assertEqual(self.list_json(), [])
        st = self.status_json()
        self.assertEqual(st["pending"], 0)
        # the buffer still works afterwards
        eid = self.record("after.purge")
        self.assertEqual([e["id"] for e in self.list_json()], [eid])

    def test_reading_commands_on_a_fresh_dir(self):
        # Inspecting before anything was recorded works and shows nothing.
        for cmd in (("list",), ("list", "--json"), ("export",), ("status",),
                    ("status", "--json"), ("purge",)):
            with self.subTest(cmd=cmd):
                p = self.ok(*cmd, state=self.tmp / ("fresh-" + "-".join(cmd)))
                self.assertEqual(p.stderr, b"")


# =============================================================================
class TestLinkage(CliCase):

    def test_completed_auto_links_to_start_of_same_job(self):
        job = new_job()
        first = self.record("nuvlabox.reboot", "--job", job)
        second = self.record("nuvlabox.reboot.completed", "--job", job)
        a, b = self.show_json(first), self.show_json(second)
        self.assertEqual(a["job"], job)
        self.assertEqual(b["job"], job)
        self.assertIsNone(b["parent"], "parent is as recorded (none given)")
        self.assertEqual(b.get("parent_local"), first)
        wa, wb = self.check_wire(a), self.check_wire(b)
        self.assertEqual(wa["parent"], job)
        self.assertNotIn("parent", wb, "the child's parent is unknown until the parent is sent")
        self.assertIn(first, b.get("wire_note") or "")
        self.assertIn(job, wa["content"]["linked-identifiers"])
        self.assertIn(job, wb["content"]["linked-identifiers"])
        self.assertIs(wb["success"], True)
        self.assertEqual(wb["content"]["state"], "completed")
        self.assertEqual(wa["content"]["state"], "started")

    def test_auto_link_takes_latest_start_of_that_job_only(self):
        job, other = new_job(), new_job()
        self.record("nuvlabox.reboot", "--job", job)
        latest = self.record("nuvlabox.reboot", "--job", job)
        self.record("nuvlabox.reboot", "--job", other)
        self.record("nuvlabox.decommission", "--job", job)
        failed = self.record("nuvlabox.reboot.failed", "--job", job)
        ev = self.show_json(failed)
        self.assertEqual(ev["parent_local"], latest)
        self.assertIs(self.check_wire(ev)["success"], False)

    def test_completed_without_start_has_the_job_as_parent(self):
        job = new_job()
        eid = self.record("nuvlabox.add-ssh-key.completed", "--job", job)
        ev = self.show_json(eid)
        self.assertIsNone(ev.get("parent_local"))
        w = self.check_wire(ev)
        self.assertEqual(w["parent"], job)

    def test_without_job_links_within_the_boot(self):
        start = self.record("nuvlabox.commission")
        done = self.record("nuvlabox.commission.completed")
        self.assertEqual(self.show_json(done)["parent_local"], start)
        start2 = self.record("nuvlabox.activate")
        failed = self.record("nuvlabox.activate.failed")
        self.assertEqual(self.show_json(failed)["parent_local"], start2)

    def test_explicit_parent_device_id(self):
        first = self.record("custom.start")
        child = self.record("custom.step", "--parent", first)
        upper = self.record("custom.step2", "--parent", first.upper())
        for eid in (child, upper):
            ev = self.show_json(eid)
            self.assertEqual(ev["parent"], first)
            self.assertEqual(ev.get("parent_local"), first)
            w = self.check_wire(ev)
            self.assertNotIn("parent", w)
            self.assertIn(first, ev.get("wire_note") or "")

    def test_explicit_parent_unknown_device_id_fails(self):
        before = self.seed()
        self.fails(EX_DATAERR, "record", "custom.step", "--parent", str(uuid.uuid4()))
        self.fails(EX_DATAERR, "record", "nuvlabox.reboot.completed", "--job", new_job(),
                   "--parent", str(uuid.uuid4()))
        self.assertEqual(self.list_json(), before)

    def test_parent_hrefs(self):
        cred = "credential/" + str(uuid.uuid4())
        eid = self.record("nuvlabox.activate.completed", "--parent", cred)
        ev = self.show_json(eid)
        self.assertEqual(ev["parent"], cred)
        w = self.check_wire(ev)
        self.assertEqual(w["parent"], cred)
        self.assertIn(cred, w["content"]["linked-identifiers"])
        server_ev = "event/" + str(uuid.uuid4())
        ev = self.show_json(self.record("custom.follow-up", "--parent", server_ev))
        self.assertEqual(ev["parent"], server_ev)
        self.assertEqual(self.check_wire(ev)["parent"], server_ev)
        nb = self.show_json(self.record("custom.nb", "--parent", NB_ID))
        self.assertEqual(self.check_wire(nb)["parent"], NB_ID)

    def test_explicit_parent_overrides_auto_link(self):
        job = new_job()
        self.record("nuvlabox.reboot", "--job", job)
        other = self.record("custom.other")
        done = self.record("nuvlabox.reboot.completed", "--job", job, "--parent", other)
        self.assertEqual(self.show_json(done)["parent_local"], other)


# =============================================================================
class TestLifecycleWire(CliCase):

    def test_six_operations_wire_bodies(self):
        for op in LIFECYCLE_OPS:
            with self.subTest(op=op):
                j1, j2 = new_job(), new_job()
                s1 = self.record("nuvlabox." + op, "--job", j1)
                c1 = self.record("nuvlabox.%s.completed" % op, "--job", j1,
                                 "--detail", "step=done")
                s2 = self.record("nuvlabox." + op, "--job", j2, "--severity", "high")
                f2 = self.record("nuvlabox.%s.failed" % op, "--job", j2,
                                 "--message", "%s failed: disk full" % op)
                for eid, phase, job, parent in ((s1, "started", j1, None),
                                                (c1, "completed", j1, s1),
                                                (s2, "started", j2, None),
                                                (f2, "failed", j2, s2)):
                    ev = self.show_json(eid)
                    self.assertEqual(ev["phase"], phase)
                    self.assertEqual(ev["name"], "nuvlabox.%s%s" % (
                        op, "" if phase == "started" else "." + phase))
                    w = self.check_wire(ev)
                    self.assertEqual(w["content"]["state"], phase)
                    self.assertIn(job, w["content"]["linked-identifiers"])
                    if phase == "completed":
                        self.assertIs(w["success"], True)
                    elif phase == "failed":
                        self.assertIs(w["success"], False)
                    if parent:
                        self.assertEqual(ev["parent_local"], parent)
                    else:
                        self.assertEqual(w["parent"], job)
                    if eid == f2:
                        self.assertEqual(w["description"], "%s failed: disk full" % op)
                    if eid == c1:
                        self.assertEqual(w["content"]["resource"]["content"]["step"], "done")

    def test_without_job_wire_bodies(self):
        for op in ("activate", "commission"):
            with self.subTest(op=op):
                for name in ("nuvlabox." + op, "nuvlabox.%s.completed" % op,
                             "nuvlabox.%s.failed" % op, "nuvlabox.%s" % op):
                    self.check_wire(self.show_json(self.record(name)))

    def test_reserved_keys_cannot_be_forged(self):
        eid = self.record("custom.ev", "--detail", "boot_id=x", "--details-json",
                          '{"clock2": "mine", "agent-version-x": 1}')
        rc = self.check_wire(self.show_json(eid))["content"]["resource"]["content"]
        self.assertEqual(rc["device-event-id"], eid)
        self.assertEqual(rc["boot-id"], BOOT_ID)
        self.assertEqual(rc["clock2"], "mine")
        version = project_version()
        if version:
            self.assertEqual(rc["agent-version"], version)
        for key in ("boot-id", "clock", "agent-version"):
            with self.subTest(key=key):
                self.fails(EX_DATAERR, "record", "custom.ev", "--detail", key + "=x",
                           contains=(key,))


# =============================================================================
class TestCorruptBuffer(CliCase):

    def corrupt_files(self):
        return sorted(p for p in self.state.glob("events.db.corrupt-*")
                      if not p.name.endswith(("-wal", "-shm")))

    def check_reset(self, p, expect_new_name):
        """record succeeded after a reset: id only on stdout, one warning line."""
        self.assertEqual(p.returncode, 0, self.describe(p))
        self.assertIsNotNone(RECORD_STDOUT_RE.fullmatch(p.stdout), self.describe(p))
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(err.count("\n"), 1, "one warning line: %r" % err)
        self.assertIn("warning", err.lower())
        self.assertIn("corrupt", err.lower())
        q = self.corrupt_files()
        self.assertEqual(len(q), 1, "the corrupt file is kept beside: %s" %
                         list(self.state.iterdir()))
        self.assertIn(q[0].name, err, "the warning says where the file went")
        events = self.list_json()
        resets = [e for e in events if e["name"] == "agent.buffer.reset"]
        self.assertEqual(len(resets), 1)
        self.assertIn("salvaged", resets[0]["details"])
        self.assertIsInstance(resets[0]["details"]["salvaged"], int)
        self.check_wire(self.show_json(resets[0]["id"]))
        new = [e for e in events if e["id"] == p.stdout.decode().strip()]
        self.assertEqual(len(new), 1)
        self.assertEqual(new[0]["name"], expect_new_name)
        # the reset happens once
        p2 = self.run_cli("list")
        self.assertEqual(p2.returncode, 0)
        self.assertEqual(p2.stderr, b"")
        return q[0], resets[0], events

    def test_random_bytes(self):
        self.state.mkdir()
        garbage = os.urandom(64 * 1024)
        (self.state / "events.db").write_bytes(garbage)
        p = self.run_cli("record", "after.garbage")
        q, reset, events = self.check_reset(p, "after.garbage")
        self.assertEqual(q.read_bytes(), garbage, "the quarantined file is the original")
        self.assertEqual(reset["details"]["salvaged"], 0)
        self.assertEqual(len(events), 2)

    def test_random_bytes_seen_by_list(self):
        self.state.mkdir()
        (self.state / "events.db").write_bytes(os.urandom(16 * 1024))
        p = self.run_cli("list", "--json")
        self.assertEqual(p.returncode, 0, self.describe(p))
        self.assertIn("warning", p.stderr.decode().lower())
        names = [e["name"] for e in json.loads(p.stdout)]
        self.assertEqual(names, ["agent.buffer.reset"])
        self.assertEqual(len(self.corrupt_files()), 1)

    def _readable_rows(self, path):
        """How many event rows SQLite itself can still read from a damaged copy."""
        if sqlite3 is None:
            return None
        copy = self.tmp / "probe.db"
        shutil.copyfile(path, copy)
        con = sqlite3.connect("file:%s?mode=ro" % copy, uri=True)
        try:
            con.execute("PRAGMA writable_schema = ON")  # accept a short file
            last, got, jump = 0, 0, 1
            for _ in range(64):
                if last > 2 ** 62:
                    break
                try:
                    for (seq,) in con.execute("SELECT seq FROM events WHERE seq > ? "
                                              "ORDER BY seq", (last,)):
                        last, got, jump = seq, got + 1, 1
                    break
                except sqlite3.DatabaseError:
                    last, jump = last + jump, jump * 2
            return got
        finally:
            con.close()

    def test_truncated(self):
        pad = "m" * 1000
        ids = [self.record("trunc.ev", "--detail", "i=%d" % i, "--message", pad)
               for i in range(100)]
        original = {e["id"]: e for e in self.list_json()}
        self.ok("purge")  # removes nothing pending; checkpoints the WAL into events.db
        db = self.state / "events.db"
        wal = self.state / "events.db-wal"
        if wal.exists() and wal.stat().st_size > 0 and sqlite3 is not None:
            con = sqlite3.connect(str(db))
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
        if wal.exists() and wal.stat().st_size > 0:
            self.skipTest("cannot move the WAL into events.db before truncating it")
        for suffix in ("-wal", "-shm"):
            f = self.state / ("events.db" + suffix)
            if f.exists():
                f.unlink()
        size = db.stat().st_size
        self.assertGreater(size, 100 * 1024)
        cut = (size // 4096 * 2 // 3) * 4096
        os.truncate(db, cut)
        truncated = db.read_bytes()
        readable = self._readable_rows(db)

        p = self.run_cli("record", "after.truncate")
        q, reset, events = self.check_reset(p, "after.truncate")
        self.assertEqual(q.read_bytes()[:cut], truncated)
        salvaged = [e for e in events if e["name"] == "trunc.ev"]
        self.assertEqual(reset["details"]["salvaged"], len(salvaged))
        for ev in salvaged:
            self.assertIn(ev["id"], original)
            self.assertEqual(ev, original[ev["id"]], "a salvaged event changed")
        self.assertEqual(len(events), len(salvaged) + 2)
        self.assertEqual(len({e["seq"] for e in events}), len(events))
        self.assertGreater(max(e["seq"] for e in events if e["name"] != "trunc.ev"),
                           max([e["seq"] for e in salvaged] or [0]))
        if readable:
            self.assertGreater(len(salvaged), 0,
                               "%d of %d events are still readable in the truncated file "
                               "(SQLite with writable_schema), none was salvaged"
                               % (readable, len(ids)))


# =============================================================================
class TestCap(CliCase):
    config_extra = "max_events = 10\n"

    def count_by(self, events):
        counts = {}
        for e in events:
            counts[e["name"]] = counts.get(e["name"], 0) + 1
        return counts

    def test_flood_of_low_events_is_reported(self):
        lows = [self.record("flood.ev", "--severity", "low") for _ in range(30)]
        events = self.list_json()
        st = self.status_json()
        self.assertGreater(st["dropped"], 0)
        drops = [e for e in events if e["name"] == "agent.events.dropped"]
        self.assertEqual(len(drops), 1, "one drop report for one flood")
        d = drops[0]["details"]
        kept = [e["id"] for e in events if e["name"] == "flood.ev"]
        lost = 30 - len(kept)
        self.assertTrue(kept, "every low event was evicted")
        self.assertEqual(kept, lows[-len(kept):], "the oldest events go first")
        self.assertEqual(d.get("low"), lost)
        self.assertEqual(st["dropped"], lost)
        if "total" in d:
            self.assertEqual(d["total"], lost)
        for sev in ("medium", "high", "critical"):
            self.assertFalse(d.get(sev), "nothing of severity %s was dropped" % sev)
        self.check_wire(self.show_json(drops[0]["id"]))
        self.assertRegex(self.ok("status").stdout.decode(), r"(?m)^dropped:\s+%d\b" % lost)

    def test_max_events_is_never_exceeded(self):
        for i in range(14):
            self.record("cap.ev", "--severity", "low")
            n = len(self.list_json())
            self.assertLessEqual(n, 10, "after record #%d the buffer holds %d events "
                                        "(max_events = 10)" % (i + 1, n))

    def test_lowest_severity_goes_first_and_counts_by_severity(self):
        highs = [self.record("keep.high", "--severity", "high") for _ in range(3)]
        mediums = [self.record("med.ev", "--severity", "medium") for _ in range(3)]
        for _ in range(10):
            self.record("low.ev", "--severity", "low")
        events = self.list_json()
        names = self.count_by(events)
        self.assertEqual(names.get("keep.high"), 3)
        self.assertEqual(names.get("med.ev"), 3, "medium evicted while low ones remain")
        # now push out every low and some medium events (3 lows at most remain)
        for _ in range(5):
            self.record("more.high", "--severity", "high")
        events = self.list_json()
        names = self.count_by(events)
        self.assertNotIn("low.ev", names)
        self.assertEqual([e["id"] for e in events if e["name"] == "keep.high"], highs)
        kept_med = [e["id"] for e in events if e["name"] == "med.ev"]
        self.assertEqual(kept_med, mediums[len(mediums) - len(kept_med):])
        drops = [e for e in events if e["name"] == "agent.events.dropped"]
        self.assertEqual(len(drops), 1)
        d = drops[0]["details"]
        self.assertEqual(d.get("low"), 10)
        self.assertEqual(d.get("medium"), 3 - len(kept_med))
        self.assertFalse(d.get("high"))
        self.assertEqual(self.status_json()["dropped"], 10 + 3 - len(kept_med))

    def test_critical_never_evicted_and_full_buffer_fails_75(self):
        crit = [self.record("crit.ev", "--severity", "critical") for _ in range(3)]
        for _ in range(20):
            self.record("flood.ev", "--severity", "low")
        self.assertEqual([e["id"] for e in self.list_json() if e["name"] == "crit.ev"], crit)
        p = None
        for _ in range(20):
            p = self.run_cli("record", "crit.ev", "--severity", "critical")
            if p.returncode != 0:
                break
            crit.append(p.stdout.decode().strip())
        self.assertIsNotNone(p)
        before = self.list_json()
        err = self.assert_one_line_error(p, EX_TEMPFAIL)
        self.assertIn("full", err)
        names = self.count_by(before)
        self.assertEqual(set(names), {"crit.ev", "agent.events.dropped"},
                         "record failed although evictable events remain: %s" % names)
        self.assertEqual([e["id"] for e in before if e["name"] == "crit.ev"], crit)
        self.assertLessEqual(len(before), 10)
        # any further event is refused the same way, and nothing changes
        self.fails(EX_TEMPFAIL, "record", "flood.ev", "--severity", "low")
        self.fails(EX_TEMPFAIL, "record", "nuvlabox.reboot", "--job", new_job())
        self.assertEqual(self.list_json(), before)
        # purging makes room again
        self.ok("purge", "--include-pending")
        self.record("after.purge", "--severity", "low")



class TestByteCap(CliCase):
    config_extra = "max_buffer_bytes = 256K\n"

    def test_buffer_bytes_never_exceed_max_buffer_bytes(self):
        # DESIGN section 5: the buffer (WAL included) never exceeds max_buffer_bytes;
        # section 9: the WAL cannot grow without bound. Producers alone (no daemon
        # running) must keep it bounded too.
        cap = 256 * 1024
        msg = "m" * 4000
        details = json.dumps({"a": "d" * 16000})
        for i in range(30):
            self.record("big.ev", "--severity", "low", "--message", msg,
                        "--details-json", details)
            on_disk = sum(f.stat().st_size for f in (self.state / "events.db",
                                                     self.state / "events.db-wal")
                          if f.exists())
            st = self.status_json()
            self.assertLessEqual(st["buffer_bytes"], cap,
                                 "after record #%d status says %d bytes (db %d + WAL %d "
                                 "on disk), max_buffer_bytes = %d" % (
                                     i + 1, st["buffer_bytes"],
                                     (self.state / "events.db").stat().st_size,
                                     on_disk - (self.state / "events.db").stat().st_size,
                                     cap))
            self.assertLessEqual(on_disk, cap)
        st = self.status_json()
        self.assertGreater(st["dropped"], 0)
        self.assertGreater(st["pending"], 0)
        events = self.list_json()
        self.assertEqual(len([e for e in events if e["name"] == "agent.events.dropped"]), 1)


if __name__ == "__main__":
    if not os.access(CLI, os.X_OK):
        sys.exit("nuvlabox-event not found at %s (set NBE_CLI)" % CLI)
    unittest.main(verbosity=int(os.environ.get("NBE_TEST_VERBOSITY", "2")))
