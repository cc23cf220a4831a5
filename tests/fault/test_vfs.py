#!/usr/bin/env python3
"""Crash and error injection through the SQLite VFS shim (issue 8, items 1-2).

The real programs (`nuvlabox-event record`, `flush` through nuvlabox-event-net,
the daemon) run with tests/fault/vfs_shim.c preloaded (NBE_VFS_SHIM, set by
ctest), uploading to the Nuvla stand-in behind the nginx mTLS gateway
(tests/nuvla/harness.py). Suites (pick one or more on the command line):

  CrashSweep  (also with the daemon uploading while producers record, and
              with power lost at random syncs) a capture-and-upload run (records creating the buffer, a
              job-linked pair, a flush, more records, a second flush) is run
              once to count its syncs (shared counter across processes), then
              again with power lost at sync k for every k. After each: the
              buffer opens (status), integrity_check is ok, every event whose
              `record` exited 0 is there; a clean flush then puts every
              acknowledged event on the server exactly once and nothing twice.
  ErrorSweep  `record` (on a new and on an existing buffer) and `flush` with
              the N-th write, sync or open failing with SQLITE_FULL or
              SQLITE_IOERR, once (transient) and for good (persistent), swept
              over N: record exits 0 or 74 with one clear line; nothing stored
              before is lost; the buffer passes integrity_check; the next
              clean command works; a clean flush delivers everything once.
  DaemonErrors the daemon runs with writes or syncs failing for good while a
              gate file exists: it keeps running; once the gate is gone it
              uploads everything, each event once.
  FullDisk    a real full disk: a small tmpfs as the state directory (root
              only; skipped otherwise), filled by the buffer itself: record
              fails with 74 and says so, nothing acknowledged is lost, status
              and list still work, flush on the full disk loses nothing, and
              after the tmpfs grows recording and uploading resume.

Environment knobs:
  NBE_VFS_CRASH_ROUNDS  sweeps over every sync (default 1 in CI)
  NBE_VFS_CRASH_STRIDE  crash at every Nth sync only (default 1)
  NBE_VFS_CRASH_RANDOM  runs with power lost at a random sync (default 6)
  NBE_VFS_DAEMON_STRIDE the daemon sweep crashes at every Nth sync (default 3)
  NBE_VFS_DAEMON_ROUNDS sweeps of the daemon run (default 1)
  NBE_VFS_RECORD_STRIDE sweep N in steps of this for record (default 1)
  NBE_VFS_ERROR_STRIDE  sweep N in steps of this for flush (default 8)
  NBE_VFS_ERROR_FULL=1  sweep every N for flush too (the long run)
  NBE_VFS_SEED          seed (printed) to replay a run
  NBE_VFS_REPORT        append the figures of each suite (JSON lines) here
  NBE_VFS_KEEP=1        keep the work directory
"""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuvla"))
import harness  # noqa: E402
from harness import CLI, DAEMON  # noqa: E402

SHIM = os.environ.get("NBE_VFS_SHIM") or os.path.join(harness.BUILD_DIR, "tests", "fault",
                                                      "libnbe_vfs_shim.so")

SEED = int(os.environ.get("NBE_VFS_SEED") or random.SystemRandom().randrange(1 << 30))
KEEP = os.environ.get("NBE_VFS_KEEP") == "1"
EX_IOERR = 74

_H = None
_DIR = None
ENV = {}


def _int_env(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def setUpModule():
    global _H, _DIR
    for what, path in (("CLI", CLI), ("shim", SHIM)):
        if not os.path.exists(path):
            raise unittest.SkipTest("no %s at %s (build first)" % (what, path))
    _DIR, _H = harness.start_for_tests("nbe-vfs-test-", refresh_delay=0.2)
    ENV.update(_H.env)
    print("NBE_VFS_SEED=%d" % SEED, file=sys.stderr)


def tearDownModule():
    harness.stop_for_tests(_DIR, _H, KEEP)


def ctl(method, what, body=None, **query):
    return harness.control(ENV, method, what, body, **query)


def report(suite, **figures):
    path = os.environ.get("NBE_VFS_REPORT")
    line = json.dumps(dict(suite=suite, seed=SEED, **figures))
    print(line, file=sys.stderr)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class Device:
    """A state directory, its config, and the programs run on it."""

    def __init__(self, root, state_dir=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = Path(state_dir) if state_dir else self.root / "state"
        (self.root / "run").mkdir(exist_ok=True)
        self.secret = self.root / "api-secret"
        if not self.secret.exists():
            harness.write_secret(self.secret, ENV)
        self.conf = harness.write_config(self.root / "agent.conf", harness.device_config(
            ENV, self.secret,
            state_dir=self.state,
            nuvlaedge_dir=self.root / "nuvlaedge",
            runtime_dir=self.root / "run",
            request_timeout="5s",
            retry_base="100ms",
            authorized_keys=self.root / "home" / ".ssh" / "authorized_keys"))
        self.env = harness.agent_env("NBE_VFS_", "LD_PRELOAD")

    def shim_env(self, **vfs):
        env = dict(self.env)
        env["LD_PRELOAD"] = SHIM
        # a preloaded library does not come first under ASan's shared runtime
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":")
        env.update({"NBE_VFS_" + k.upper(): str(v) for k, v in vfs.items()})
        return env

    def run(self, *args, env=None, timeout=120):
        return subprocess.run([CLI, "--config", str(self.conf)] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env or self.env, timeout=timeout, universal_newlines=True)

    def ok(self, *args):
        p = self.run(*args)
        if p.returncode != 0:
            raise AssertionError("%s: exit %d: %s" % (args, p.returncode, p.stderr))
        return p

    def events(self):
        return json.loads(self.ok("list", "--json").stdout)

    def integrity(self):
        db = sqlite3.connect(str(self.state / "events.db"))
        try:
            return db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()


def server_tags():
    """device event id -> number of copies the server stores."""
    out = {}
    for d in ctl("GET", "events?origin=api")["events"]:
        for t in d.get("tags") or []:
            if t.startswith("device-event/"):
                k = t[len("device-event/"):]
                out[k] = out.get(k, 0) + 1
    return out


class Base(unittest.TestCase):
    def setUp(self):
        ctl("POST", "reset", {"seed": True})
        self.tmp = Path(tempfile.mkdtemp(prefix=self._testMethodName[:30] + "-", dir=_DIR))
        if not KEEP:
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.rng = random.Random(SEED ^ hash(self._testMethodName) & 0xffffffff)
        self.n = 0

    def device(self, state_dir=None):
        self.n += 1
        return Device(self.tmp / ("d%d" % self.n), state_dir)

    def check_buffer(self, dev, acked, why):
        """The buffer opens, passes integrity_check and holds every acked id;
        returns its events."""
        p = dev.run("status", "--json")
        self.assertEqual(p.returncode, 0, "%s: status after: %s" % (why, p.stderr))
        evs = dev.events()
        ids = [e["id"] for e in evs]
        self.assertEqual(len(ids), len(set(ids)), "%s: an id twice in the buffer" % why)
        missing = sorted(set(acked) - set(ids))
        self.assertEqual(missing, [], "%s: acknowledged events lost" % why)
        self.assertEqual(dev.integrity(), [("ok",)], "%s: integrity_check" % why)
        return evs

    def check_delivered(self, dev, acked, attempted, why):
        """A clean flush; then every acked event is on the server exactly
        once, and nothing (acked or not) twice, and nothing foreign."""
        p = dev.run("flush", "--timeout", "60", timeout=180)
        self.assertEqual(p.returncode, 0, "%s: clean flush: %s" % (why, p.stderr))
        tags = server_tags()
        self.assertEqual({i: tags.get(i, 0) for i in acked}, {i: 1 for i in acked},
                         "%s: acknowledged events not on the server exactly once" % why)
        twice = {k: v for k, v in tags.items() if v != 1}
        self.assertEqual(twice, {}, "%s: events on the server twice" % why)
        own = set(attempted) | {e["id"] for e in dev.events()}
        self.assertEqual(sorted(set(tags) - own), [], "%s: foreign events on the server" % why)


# ====================================================================  crashes

class CrashSweep(Base):
    def scenario(self):
        job = "job/" + str(uuid.uuid4())
        return [
            ("record", "nuvlabox.reboot", "--job", job, "--severity", "high"),
            ("record", "test.tick", "--detail", "n=1"),
            ("record", "nuvlabox.reboot.completed", "--job", job),
            ("flush", "--timeout", "30"),
            ("record", "test.tick", "--detail", "n=2"),
            ("record", "test.tick", "--detail", "n=3", "--severity", "critical"),
            ("flush", "--timeout", "30"),
        ]

    def run_once(self, crash_at, seed, selfcheck=0):
        """Runs the scenario with power lost at sync crash_at (0: never).
        Returns (crashed, acked ids, attempted ids, syncs counted, device)."""
        dev = self.device()
        counter = dev.root / "syncs"
        acked, attempted, crashed = [], [], False
        for step in self.scenario():
            env = dev.shim_env(counter=counter, crash_at=crash_at, seed=seed,
                               selfcheck=selfcheck)
            p = dev.run(*step, env=env)
            if p.returncode == -9:
                crashed = True
                break
            if step[0] == "record":
                self.assertEqual(p.returncode, 0, "record: %s" % p.stderr)
                acked.append(p.stdout.strip())
                attempted.append(p.stdout.strip())
            else:
                self.assertEqual(p.returncode, 0, "flush: %s" % p.stderr)
        syncs = int(counter.read_text()) if counter.exists() else 0
        return crashed, acked, attempted, syncs, dev

    def test_crash_sweep(self):
        rounds = _int_env("NBE_VFS_CRASH_ROUNDS", 1)
        stride = _int_env("NBE_VFS_CRASH_STRIDE", 1)
        crashed, acked, _, total, dev = self.run_once(0, SEED)
        self.assertFalse(crashed)
        self.check_buffer(dev, acked, "dry run")
        self.assertGreater(total, 10, "the dry run counted too few syncs")
        runs = crashes = quarantines = unacked_kept = 0
        t0 = time.monotonic()
        for r in range(rounds):
            for k in range(1 + (r % stride), total + 1, stride):
                seed = SEED + r * 100003 + k
                why = "crash at sync %d of %d, seed %d (NBE_VFS_SEED=%d)" % (k, total, seed, SEED)
                ctl("POST", "reset", {"seed": True})
                crashed, acked, attempted, _, dev = self.run_once(k, seed)
                runs += 1
                crashes += crashed
                evs = self.check_buffer(dev, acked, why)
                quarantines += sum(e["name"] == "agent.buffer.reset" for e in evs)
                # the crashed record may or may not have stored its event:
                # whatever else is buffered must be ours
                unacked_kept += sum(1 for e in evs if e["id"] not in acked
                                    and not e["name"].startswith("agent."))
                self.check_delivered(dev, acked, attempted + [e["id"] for e in evs], why)
                if not KEEP:
                    shutil.rmtree(dev.root, ignore_errors=True)
        report("crash", syncs_per_run=total, rounds=rounds, stride=stride, runs=runs,
               crashes=crashes, quarantines=quarantines, unacked_kept=unacked_kept,
               acked_lost=0, duplicates=0, seconds=round(time.monotonic() - t0, 1))


    def test_random_crashes(self):
        """Power lost at a random sync (odds 1 in the run's sync count per
        sync), the way a device loses it: no crash point chosen."""
        runs = _int_env("NBE_VFS_CRASH_RANDOM", 6)
        total = self.run_once(0, SEED)[3]
        crashes = 0
        for i in range(runs):
            ctl("POST", "reset", {"seed": True})
            seed = SEED + 7919 * (i + 1)
            why = "random crash, seed %d (NBE_VFS_SEED=%d)" % (seed, SEED)
            dev = self.device()
            acked, attempted = [], []
            for step in self.scenario():
                p = dev.run(*step, env=dev.shim_env(crash_odds=total, seed=seed + len(acked)))
                if p.returncode == -9:
                    crashes += 1
                    break
                self.assertEqual(p.returncode, 0, "%s: %s: %s" % (why, step[0], p.stderr))
                if step[0] == "record":
                    acked.append(p.stdout.strip())
            attempted = list(acked)
            evs = self.check_buffer(dev, acked, why)
            self.check_delivered(dev, acked, attempted + [e["id"] for e in evs], why)
        report("crash_random", runs=runs, crashes=crashes)

    def test_selfcheck(self):
        """The sweep can fail: on a disk whose syncs do not make writes
        durable, power loss must cost acknowledged events somewhere."""
        caught = 0
        total = self.run_once(0, SEED)[3]
        for k in range(max(1, total - 9), total + 1):
            ctl("POST", "reset", {"seed": True})
            crashed, acked, attempted, _, dev = self.run_once(k, SEED + k, selfcheck=1)
            try:
                evs = self.check_buffer(dev, acked, "self-check")
                self.check_delivered(dev, acked, attempted + [e["id"] for e in evs],
                                     "self-check")
            except AssertionError:
                caught += 1
        self.assertGreater(caught, 0, "the checks never noticed lost acknowledged events")
        report("crash_selfcheck", runs=10, caught=caught)


    def daemon_run(self, crash_at, seed):
        """The daemon uploads while producers record, all with the shim and
        one sync counter; power is lost at sync crash_at (0: never), in
        whichever process makes it; the others die with it (SIGKILL).
        Returns (crashed, acked ids, syncs counted, device)."""
        dev = self.device()
        counter = dev.root / "syncs"
        env = dev.shim_env(counter=counter, crash_at=crash_at, seed=seed)
        logf = open(str(dev.root / "daemon.log"), "w")
        self.addCleanup(logf.close)
        d = subprocess.Popen([DAEMON, "--config", str(dev.conf)], stderr=logf, env=env)
        try:
            sock = dev.root / "run" / "notify.sock"
            end = time.monotonic() + 10
            while not sock.exists() and d.poll() is None and time.monotonic() < end:
                time.sleep(0.02)
            acked, crashed = [], d.poll() == -9
            job = "job/" + str(uuid.uuid4())
            steps = [("nuvlabox.reboot", "--job", job), ("test.tick",),
                     ("nuvlabox.reboot.completed", "--job", job), ("test.tick",), ("test.tick",)]
            for step in steps if not crashed else []:
                p = dev.run("record", *step, env=env)
                if p.returncode == -9 or d.poll() == -9:
                    crashed = True
                    if p.returncode == 0:
                        acked.append(p.stdout.strip())
                    break
                self.assertEqual(p.returncode, 0, p.stderr)
                acked.append(p.stdout.strip())
                time.sleep(0.05)
            end = time.monotonic() + 20
            while not crashed and time.monotonic() < end:
                if d.poll() == -9:
                    crashed = True
                    break
                st = json.loads(dev.ok("status", "--json").stdout)
                if st["pending"] == 0:
                    break
                time.sleep(0.1)
            crashed = crashed or d.poll() == -9
        finally:
            if d.poll() is None:
                d.kill()
            d.wait()
        syncs = int(counter.read_text()) if counter.exists() else 0
        return crashed, acked, syncs, dev

    def test_daemon_crash_sweep(self):
        """Power lost at every sync of the daemon uploading what producers
        record (the daemon's own round, in-flight marks and look-ups)."""
        if not os.path.exists(DAEMON):
            self.skipTest("no daemon at %s" % DAEMON)
        stride = _int_env("NBE_VFS_DAEMON_STRIDE", 3)
        rounds = _int_env("NBE_VFS_DAEMON_ROUNDS", 1)
        crashed, acked, total, dev = self.daemon_run(0, SEED)
        self.assertFalse(crashed)
        self.check_buffer(dev, acked, "daemon dry run")
        self.assertGreater(total, 10)
        runs = crashes = 0
        for r in range(rounds):
            for k in range(1 + (r % stride), total + 1, stride):
                seed = SEED + r * 100003 + k
                why = "daemon run, crash at sync %d of ~%d, seed %d (NBE_VFS_SEED=%d)" % (
                    k, total, seed, SEED)
                ctl("POST", "reset", {"seed": True})
                crashed, acked, _, dev = self.daemon_run(k, seed)
                runs += 1
                crashes += crashed
                evs = self.check_buffer(dev, acked, why)
                self.check_delivered(dev, acked, acked + [e["id"] for e in evs], why)
                if not KEEP:
                    shutil.rmtree(dev.root, ignore_errors=True)
        report("crash_daemon", syncs_per_run=total, rounds=rounds, stride=stride, runs=runs,
               crashes=crashes)


# =====================================================================  errors

class ErrorSweep(Base):
    OPS = ("write", "sync", "open")
    CODES = ("full", "ioerr")
    MODES = ((1, "transient"), (0, "persistent"))

    def counts(self, dev, *args):
        """How many writes, syncs and opens one clean run of the command does."""
        log = dev.root / "vfs.log"
        if log.exists():
            log.unlink()
        p = dev.run(*args, env=dev.shim_env(log=log))
        self.assertEqual(p.returncode, 0, p.stderr)
        w = s = o = 0
        for line in log.read_text().split("\n"):
            if line and not line.startswith("#"):
                f = [int(x) for x in line.split()]
                w, s, o = w + f[1], s + f[2], o + f[3]
        return {"write": w, "sync": s, "open": o}, p

    def template(self, n_events):
        dev = self.device()
        acked = [dev.ok("record", "test.base", "--detail", "n=%d" % i).stdout.strip()
                 for i in range(n_events)]
        return dev, acked

    def copy(self, template):
        dev = self.device()
        if template is not None:
            shutil.copytree(str(template.state), str(dev.state))
        return dev

    def injected(self, log):
        return sum(int(line.split()[4]) for line in log.read_text().split("\n")
                   if line and not line.startswith("#")) \
            if log.exists() else 0

    def test_record_errors(self):
        base, base_acked = self.template(5)
        stats = {"runs": 0, "injected": 0, "exit74": 0, "unacked_kept": 0}
        stride = _int_env("NBE_VFS_RECORD_STRIDE", 1)
        for fresh in (True, False):
            probe = self.copy(None if fresh else base)
            counts, _ = self.counts(probe, "record", "test.probe")
            for op in self.OPS:
                for code in self.CODES:
                    for times, mode in self.MODES:
                        ns = list(range(1, counts[op] + 2))
                        if stride > 1:
                            ns = ns[self.rng.randrange(min(stride, len(ns)))::stride]
                        for n in ns:
                            self.record_once(None if fresh else base, [] if fresh else base_acked,
                                             op, code, times, n, stats,
                                             "record on a %s buffer, %s %d fails %s (%s)" % (
                                                 "new" if fresh else "full", op, n, code, mode))
        self.assertGreater(stats["injected"], 0)
        self.assertGreater(stats["exit74"], 0)
        report("record_errors", **stats)

    def record_once(self, template, before, op, code, times, n, stats, why):
        dev = self.copy(template)
        log = dev.root / "vfs.log"
        p = dev.run("record", "test.new", env=dev.shim_env(fail=op, fail_at=n, fail_times=times,
                                                          fail_code=code, log=log))
        stats["runs"] += 1
        stats["injected"] += self.injected(log)
        self.assertIn(p.returncode, (0, EX_IOERR), "%s: %s" % (why, p.stderr))
        acked = list(before)
        if p.returncode == 0:
            acked.append(p.stdout.strip())
        else:
            stats["exit74"] += 1
            lines = p.stderr.strip().split("\n")
            self.assertEqual(len(lines), 1, "%s: not one line: %r" % (why, p.stderr))
            self.assertTrue(lines[0].startswith("nuvlabox-event record: ") and
                            str(dev.state) in lines[0], "%s: %r" % (why, p.stderr))
            # SQLite's own words, with the system's reason when it has one
            # (a full disk on a write is always "database or disk is full")
            want = ("full",) if code == "full" and op == "write" else \
                ("full", "No space left", "disk I/O error", "unable to open")
            self.assertTrue(any(w in lines[0] for w in want), "%s: %r" % (why, p.stderr))
            self.assertEqual(p.stdout, "", why)
        evs = self.check_buffer(dev, acked, why)
        self.assertEqual([e for e in evs if e["name"] == "agent.buffer.reset"], [],
                         "%s: an I/O error quarantined the buffer" % why)
        if p.returncode != 0:
            stats["unacked_kept"] += sum(1 for e in evs if e["name"] == "test.new")
        # the error has gone away: recording works again
        dev.ok("record", "test.after")
        if not KEEP:
            shutil.rmtree(dev.root, ignore_errors=True)

    def test_flush_errors(self):
        base, acked = self.template(6)
        full = os.environ.get("NBE_VFS_ERROR_FULL") == "1"
        stride = 1 if full else _int_env("NBE_VFS_ERROR_STRIDE", 8)
        probe = self.copy(base)
        counts, _ = self.counts(probe, "flush", "--timeout", "30")
        stats = {"runs": 0, "injected": 0, "failed_flushes": 0}
        for op in self.OPS:
            for code in self.CODES:
                for times, mode in self.MODES:
                    ns = list(range(1, counts[op] + 2))
                    if not full:
                        ns = ns[self.rng.randrange(min(stride, len(ns)))::stride]
                    for n in ns:
                        why = "flush, %s %d fails %s (%s)" % (op, n, code, mode)
                        ctl("POST", "reset", {"seed": True})
                        dev = self.copy(base)
                        log = dev.root / "vfs.log"
                        p = dev.run("flush", "--timeout", "10", timeout=120,
                                    env=dev.shim_env(fail=op, fail_at=n, fail_times=times,
                                                     fail_code=code, log=log))
                        stats["runs"] += 1
                        stats["injected"] += self.injected(log)
                        self.assertGreaterEqual(p.returncode, 0, "%s: %s" % (why, p.stderr))
                        self.assertNotIn(p.returncode, (70, 71), "%s: %s" % (why, p.stderr))
                        stats["failed_flushes"] += p.returncode != 0
                        self.check_buffer(dev, acked, why)
                        self.check_delivered(dev, acked, acked, why)
                        if not KEEP:
                            shutil.rmtree(dev.root, ignore_errors=True)
        self.assertGreater(stats["failed_flushes"], 0)
        report("flush_errors", counts=counts, stride=stride, **stats)


# =====================================================================  daemon

class DaemonErrors(Base):
    def wait_for(self, pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.1)
        return pred()

    def test_daemon_survives_and_recovers(self):
        if not os.path.exists(DAEMON):
            self.skipTest("no daemon at %s" % DAEMON)
        for op, code in (("write", "full"), ("sync", "ioerr"), ("write", "ioerr")):
            with self.subTest(op=op, code=code):
                ctl("POST", "reset", {"seed": True})
                self.one(op, code)

    def one(self, op, code):
        dev = self.device()
        acked = [dev.ok("record", "test.before").stdout.strip()]
        gate = dev.root / "gate"
        gate.write_text("")
        logf = open(str(dev.root / "daemon.log"), "w")
        self.addCleanup(logf.close)
        d = subprocess.Popen([DAEMON, "--config", str(dev.conf)], stderr=logf,
                             env=dev.shim_env(fail=op, fail_times=0, fail_code=code,
                                              fail_gate=gate, log=dev.root / "vfs.log"))

        def stop():
            if d.poll() is None:
                d.terminate()
                try:
                    d.wait(10)
                except subprocess.TimeoutExpired:
                    d.kill()
                    d.wait()
        self.addCleanup(stop)
        why = "daemon with every %s failing (%s)" % (op, code)
        for i in range(5):
            acked.append(dev.ok("record", "test.during", "--detail", "n=%d" % i).stdout.strip())
            time.sleep(0.2)
        time.sleep(2)
        log = (dev.root / "daemon.log").read_text()
        self.assertIsNone(d.poll(), "%s: the daemon exited:\n%s" % (why, log[-3000:]))
        self.assertIn("error", log.lower(), "%s: the daemon said nothing:\n%s" % (why, log[-3000:]))
        gate.unlink()
        acked.append(dev.ok("record", "test.after").stdout.strip())

        def done():
            st = json.loads(dev.ok("status", "--json").stdout)
            return st["pending"] == 0
        self.assertTrue(self.wait_for(done, 60), "%s: did not recover:\n%s" % (
            why, (dev.root / "daemon.log").read_text()[-3000:]))
        self.assertIsNone(d.poll(), why)
        stop()
        self.check_buffer(dev, acked, why)
        self.check_delivered(dev, acked, acked, why)
        report("daemon_errors", op=op, code=code,
               injected=sum(int(x.split()[4]) for x in
                            (dev.root / "vfs.log").read_text().split("\n")
                            if x and not x.startswith("#")))


# ==================================================================  full disk

class FullDisk(Base):
    def test_full_tmpfs(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to mount a tmpfs (CI runs as root)")
        mnt = self.tmp / "disk"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "nbe-full", str(mnt)],
                       check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", str(mnt)])
        dev = self.device(state_dir=mnt / "state")
        acked, refused = [], 0
        pad = "x" * 3000
        for i in range(400):
            p = dev.run("record", "test.fill", "--detail", "n=%d" % i, "--message", pad)
            if p.returncode == 0:
                acked.append(p.stdout.strip())
                continue
            self.assertEqual(p.returncode, EX_IOERR, p.stderr)
            line = p.stderr.strip()
            self.assertEqual(len(line.split("\n")), 1, line)
            self.assertTrue("full" in line or "space" in line, line)
            refused += 1
            if refused >= 5:
                break
        self.assertGreaterEqual(refused, 5, "the tmpfs never filled up (%d events)" % len(acked))
        self.assertGreater(len(acked), 10)
        # reading still works on the full disk, and nothing acknowledged is lost
        self.check_buffer(dev, acked, "full disk")
        # an upload on the full disk: whatever it can or cannot write, no loss
        p = dev.run("flush", "--timeout", "10", timeout=120)
        self.assertGreaterEqual(p.returncode, 0, p.stderr)
        self.check_buffer(dev, acked, "flush on a full disk")
        # the disk grows: recording and uploading resume
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        acked.append(dev.ok("record", "test.after").stdout.strip())
        self.check_delivered(dev, acked, acked, "after the disk grew")
        self.check_buffer(dev, acked, "after the disk grew")
        report("full_disk", acked=len(acked), refused=refused, first_flush_exit=p.returncode)


if __name__ == "__main__":
    unittest.main(verbosity=2)
