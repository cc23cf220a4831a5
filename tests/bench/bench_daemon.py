#!/usr/bin/env python3
"""bench_daemon: what nuvlabox-eventd costs while idle and how fast a single
event reaches the server (DESIGN §1, §11 "Benchmarks"; issue 4). Not a test:
it prints tables and judges nothing but that every step worked.

  idle        context switches of every thread of the daemon (voluntary +
              involuntary, /proc/PID/task/*/status) over -t seconds (default
              60), with NOTIFY_SOCKET pointing at a datagram socket bound here:
                fresh      just started, nothing sent yet
                after-use  the same daemon after the latency samples (its
                           connection to the gateway is still cached)
                watchdog   a new daemon with WATCHDOG_USEC (-w, default 10 s):
                           it should ping every half interval and do nothing else
  latency     -s single events (default 200), one at a time, 50-150 ms apart,
              recorded with `nuvlabox-event record` while the daemon is online
              (the stand-in behind the nginx mTLS gateway):
                record     the record process, spawn to exit (fork, exec, open,
                           commit, poke, close)
                server     from just before spawning record to the event being
                           stored by the stand-in (its `created`, ms, the same
                           wall clock)
                ack        from just before spawning record to the daemon's
                           debug line "sent 1, ..." (after it committed the ack),
                           read from its stderr pipe as it is written
  floor       the memory floor under the daemon, in the same run:
              bench_floor_libc (the C library alone), bench_floor_sqlite (+
              SQLite, a WAL database open after one commit) and
              bench_floor_libs (+ libcurl as built, mbedTLS, cJSON, each
              initialised): what the daemon's RSS cannot go below
  rss         the daemon's VmRSS (and RssAnon/RssFile, Pss) idle after start,
              idle after use, while draining a backlog of -b events (default
              20000) from a fresh daemon to nginx answering 201 itself
              (harness --bench-direct), and idle after that drain

usage: bench_daemon.py [-r RUNS] [-t IDLE_SECONDS] [-s SAMPLES] [-b BACKLOG]
                       [-w WATCHDOG_SECONDS] [-o idle,latency,drain,floor] [-d DIR] [-k]
"""

import argparse
import datetime
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
import bench_drain as bd  # noqa: E402
from harness import Harness, HarnessError  # noqa: E402

DAEMON = os.environ.get("NBE_DAEMON") or os.path.join(os.path.dirname(bd.CLI), "nuvlabox-eventd")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def http_json(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def ctxt(pid):
    """Context switches of every thread of @pid: (voluntary, involuntary)."""
    v = n = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        v += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        n += int(line.split()[1])
        except OSError:
            pass
    return v, n


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def pct(vals, p):
    if not vals:
        return float("nan")
    s = sorted(vals)
    i = int(p / 100.0 * len(s) + 0.999999)
    return s[min(max(i, 1), len(s)) - 1]


def iso_to_epoch(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class Daemon:
    """nuvlabox-eventd with its stderr read line by line, each line stamped
    with the monotonic time it was read."""

    def __init__(self, conf, env, logpath):
        self.lines = queue.Queue()
        self.log = open(logpath, "w")
        self.p = subprocess.Popen([DAEMON, "--config", conf], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.pid = self.p.pid
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for raw in self.p.stderr:
            t = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            self.log.write("%.6f %s\n" % (t, line))
            self.log.flush()
            self.lines.put((t, line))

    def wait_line(self, pred, timeout):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                t, line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if pred(line):
                return t, line

    def drain_lines(self):
        while True:
            try:
                self.lines.get_nowait()
            except queue.Empty:
                return

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.t.join(timeout=5)
        self.log.close()


class Bench:
    def __init__(self, a):
        self.a = a
        base = a.dir or bd.BUILD
        os.makedirs(base, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="bench-daemon-", dir=base)
        self.h = None
        self.n = 0
        self.since_ready = []

    def start(self):
        self.h = Harness(os.path.join(self.dir, "harness"), bench_direct=True)
        self.env = self.h.start()
        self.standin = self.env["NUVLA_STANDIN_URL"]
        self.secret = os.path.join(self.dir, "secret")
        with open(self.secret, "w") as f:
            f.write(self.env["NUVLA_TEST_API_SECRET"])
        os.chmod(self.secret, 0o600)
        self.sd_path = os.path.join(self.dir, "sd.sock")
        self.sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sd.bind(self.sd_path)
        self.sd.setblocking(False)

    def config(self, name, endpoint=None, level="debug"):
        e = self.env
        d = os.path.join(self.dir, name)
        os.makedirs(d, exist_ok=True)
        keys = {
            "endpoint": endpoint or e["NUVLA_GATEWAY_URL"],
            "nuvlabox_id": e["NUVLA_TEST_NUVLABOX_ID"],
            "ca_file": e["NUVLA_TEST_CA"],
            "client_cert": e["NUVLA_TEST_CLIENT_CERT"],
            "client_key": e["NUVLA_TEST_CLIENT_KEY"],
            "api_key": e["NUVLA_TEST_API_KEY"],
            "api_secret_file": self.secret,
            "state_dir": os.path.join(d, "state"),
            "runtime_dir": os.path.join(d, "run"),
            "log_level": level,
        }
        path = os.path.join(d, "agent.conf")
        with open(path, "w") as f:
            for k, v in keys.items():
                f.write("%s = %s\n" % (k, v))
        return path, keys["state_dir"], keys["runtime_dir"]

    def clean_env(self, extra=None):
        env = bd.Bench.clean_env()
        env.update(extra or {})
        return env

    def sd_messages(self):
        out = []
        while True:
            try:
                out.append(self.sd.recv(4096).decode(errors="replace"))
            except (BlockingIOError, InterruptedError):
                return out

    def start_daemon(self, name, conf, run_dir, extra_env=None):
        self.sd_messages()
        d = Daemon(conf, self.clean_env(dict({"NOTIFY_SOCKET": self.sd_path}, **(extra_env or {}))),
                   os.path.join(self.dir, name, "daemon.log"))
        end = time.monotonic() + 20
        ready = False
        # what came with READY=1 is kept: an idle daemon says STATUS=idle once,
        # often in the same 20 ms, and wait_idle() must still see it
        self.since_ready = []
        while time.monotonic() < end and not ready:
            if d.p.poll() is not None:
                raise RuntimeError("the daemon exited: see %s" % d.log.name)
            msgs = self.sd_messages()
            ready = "READY=1" in msgs
            if ready:
                self.since_ready = msgs[msgs.index("READY=1") + 1:]
            time.sleep(0.02)
        if not ready:
            raise RuntimeError("the daemon did not say READY=1")
        return d

    def wait_idle(self, d, timeout=600):
        """Until the daemon says STATUS=idle on the notify socket."""
        end = time.monotonic() + timeout
        early, self.since_ready = self.since_ready, []
        while time.monotonic() < end:
            if any(m.startswith("STATUS=idle") for m in early + self.sd_messages()):
                return True
            early = []
            if d.p.poll() is not None:
                raise RuntimeError("the daemon exited")
            time.sleep(0.05)
        raise RuntimeError("the daemon did not become idle")

    def idle(self, d, seconds):
        time.sleep(1)
        self.sd_messages()
        v0, n0 = ctxt(d.pid)
        msgs = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            # read as we go: the socket queues only 10 datagrams (see drain())
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            msgs += self.sd_messages()
        v1, n1 = ctxt(d.pid)
        msgs += self.sd_messages()
        return {"vol": v1 - v0, "invol": n1 - n0, "per_min": (v1 - v0 + n1 - n0) * 60.0 / seconds,
                "pings": sum(1 for m in msgs if m == "WATCHDOG=1"),
                "other": [m for m in msgs if m != "WATCHDOG=1"], "threads": threads(d.pid)}

    @staticmethod
    def mem(pid):
        m = bd.proc_mem(pid) or {}
        r = bd.smaps_rollup(pid)
        return {"rss": m.get("VmRSS", 0), "hwm": m.get("VmHWM", 0), "anon": m.get("RssAnon", 0),
                "file": m.get("RssFile", 0), "pss": r.get("Pss", 0)}

    def floor(self, run):
        """The RSS of the bench_floor_* programs beside bench_backlog."""
        out = {}
        for kind in ("libc", "sqlite", "libs"):
            prog = os.path.join(self.a.floor_dir, "bench_floor_" + kind)
            db = os.path.join(self.dir, "floor-%d-%s.db" % (run, kind))
            p = subprocess.Popen([prog, db], stdout=subprocess.PIPE, env=self.clean_env())
            try:
                lines = []
                for line in p.stdout:
                    lines.append(line.decode().strip())
                    if lines[-1] == "ready":
                        break
                if not lines or lines[-1] != "ready":
                    raise RuntimeError("%s did not get ready: %s" % (prog, lines))
                time.sleep(1)
                out[kind] = self.mem(p.pid)
            finally:
                p.terminate()
                p.wait(timeout=10)
        return out

    def record(self, conf, name, i):
        t0w = time.time()
        t0 = time.monotonic()
        p = subprocess.run([self.a.cli, "--config", conf, "record", name, "--detail", "i=%d" % i],
                           capture_output=True, env=self.clean_env())
        t1 = time.monotonic()
        if p.returncode != 0:
            raise RuntimeError("record: %s" % p.stderr.decode().strip())
        return p.stdout.decode().strip(), t0w, t0, t1

    def latency(self, d, conf, samples):
        sent_line = lambda line: " sent " in line or line.startswith("nuvlabox-eventd: sent ")
        # warm-up (not counted): the first uploads after the start
        for i in range(5):
            d.drain_lines()
            self.record(conf, "bench.latency.warmup", i)
            if not d.wait_line(sent_line, 10):
                raise RuntimeError("warm-up event not acknowledged")
        http_json(self.standin + "/_control/events", "DELETE")
        out = []
        for i in range(samples):
            time.sleep(random.uniform(0.05, 0.15))
            self.sd_messages()      # STATUS= lines: keep the socket's queue short
            d.drain_lines()
            eid, t0w, t0, t1 = self.record(conf, "bench.latency", i)
            got = d.wait_line(sent_line, 10)
            if not got:
                raise RuntimeError("event %s not acknowledged within 10 s" % eid)
            # the floor of spawning a process from here: `--version`, spawned the same way
            v0 = time.monotonic()
            subprocess.run([self.a.cli, "--version"], capture_output=True, env=self.clean_env())
            ver = (time.monotonic() - v0) * 1000
            out.append({"id": eid, "t0w": t0w, "rec": (t1 - t0) * 1000, "ack": (got[0] - t0) * 1000,
                        "ver": ver})
        created = {}
        for ev in http_json(self.standin + "/_control/events?origin=api")["events"]:
            for t in ev.get("tags", []):
                if t.startswith("device-event/"):
                    created[t[len("device-event/"):]] = iso_to_epoch(ev["created"])
        for s in out:
            if s["id"] not in created:
                raise RuntimeError("event %s is not on the server" % s["id"])
            s["srv"] = (created[s["id"]] - s["t0w"]) * 1000
        return out

    def drain(self, run):
        conf, state, rdir = self.config("run%d-drain" % run, self.env["NUVLA_BENCH_DIRECT_URL"])
        p = subprocess.run([self.a.backlog, "-s", state, "-n", str(self.a.backlog_events)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError("bench_backlog: %s" % p.stderr.strip())
        os.sync()
        t0 = time.monotonic()
        d = self.start_daemon("run%d-drain" % run, conf, rdir)
        peak = {"rss": 0, "anon": 0, "file": 0}
        sent = 0
        idle = False
        try:
            while sent < self.a.backlog_events:
                # read the notify socket all along: its queue holds only
                # net.unix.max_dgram_qlen (10) datagrams, and a daemon whose
                # STATUS= finds it full blocks in sendto(), as under a stalled
                # systemd (one STATUS= per 5 s round: a slow drain fills it)
                idle = any(m.startswith("STATUS=idle") for m in self.sd_messages()) or idle
                got = d.wait_line(lambda line: "sent " in line, 0.05)
                if got:
                    sent += int(got[1].split("sent ")[1].split(",")[0])
                m = bd.proc_mem(d.pid) or {}
                for k, key in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile")):
                    peak[k] = max(peak[k], m.get(key, 0))
                if d.p.poll() is not None:
                    raise RuntimeError("the daemon exited while draining")
                if time.monotonic() - t0 > 1800:
                    raise RuntimeError("the drain did not finish in 30 min")
            wall = time.monotonic() - t0
            hwm = (bd.proc_mem(d.pid) or {}).get("VmHWM", 0)
            if not idle:
                self.wait_idle(d)
            time.sleep(2)
            after = self.mem(d.pid)
        finally:
            d.stop()
        return {"rate": sent / wall, "wall": wall, "peak": peak, "hwm": hwm, "after": after}

    def one_run(self, run):
        res = {}
        a = self.a
        if "idle" in a.only or "latency" in a.only:
            conf, state, rdir = self.config("run%d-online" % run)
            d = self.start_daemon("run%d-online" % run, conf, rdir)
            try:
                self.wait_idle(d)
                res["threads"] = threads(d.pid)
                if "idle" in a.only:
                    res["idle_fresh"] = self.idle(d, a.idle_seconds)
                res["mem_fresh"] = self.mem(d.pid)
                if "latency" in a.only:
                    res["lat"] = self.latency(d, conf, a.samples)
                    if "idle" in a.only:
                        res["idle_used"] = self.idle(d, a.idle_seconds)
                    res["mem_used"] = self.mem(d.pid)
            finally:
                d.stop()
        if "idle" in a.only:
            conf, state, rdir = self.config("run%d-watchdog" % run)
            wd = "%d" % (a.watchdog * 1000000)
            d = self.start_daemon("run%d-watchdog" % run, conf, rdir, {"WATCHDOG_USEC": wd})
            try:
                self.wait_idle(d)
                res["idle_wd"] = self.idle(d, a.idle_seconds)
            finally:
                d.stop()
        if "drain" in a.only:
            res["drain"] = self.drain(run)
        if "floor" in a.only:
            res["floor"] = self.floor(run)
        return res

    def stop(self):
        if self.h:
            self.h.stop()
        if not self.a.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log("work directory kept: %s" % self.dir)


def mb(kib):
    return "%.1f" % (kib / 1024.0)


def report_run(run, res, a):
    print("\nrun %d (daemon threads when idle: %s)" % (run, res.get("threads", "-")))
    for key, what in (("idle_fresh", "idle, fresh"), ("idle_used", "idle, after use"),
                      ("idle_wd", "idle, watchdog %d s" % a.watchdog)):
        r = res.get(key)
        if r:
            print("  %-22s %4d voluntary + %3d involuntary switches in %d s = %5.1f /min; "
                  "%d WATCHDOG=1%s" % (what, r["vol"], r["invol"], a.idle_seconds, r["per_min"],
                                       r["pings"], "; other: %s" % r["other"] if r["other"] else ""))
    lat = res.get("lat")
    if lat:
        print("  latency, %d single events   %8s %8s %8s %8s   (ms)" % (len(lat), "p50", "p90", "p99",
                                                                     "max"))
        for k, what in (("ver", "spawn floor (--version)"), ("rec", "record process"),
                        ("srv", "capture to server"),
                        ("ack", "capture to daemon ack")):
            v = [s[k] for s in lat]
            print("    %-28s %8.1f %8.1f %8.1f %8.1f" % (what, pct(v, 50), pct(v, 90), pct(v, 99),
                                                       max(v)))
        v = [s["srv"] - s["rec"] for s in lat]
        print("    %-28s %8.1f %8.1f %8.1f %8.1f" % ("server after record exit", pct(v, 50),
                                                   pct(v, 90), pct(v, 99), max(v)))
    for key, what in (("mem_fresh", "idle after start"), ("mem_used", "idle after use")):
        m = res.get(key)
        if m:
            print("  RSS %-20s %s MiB (anon %s, file %s; Pss %s; VmHWM %s)" % (
                what, mb(m["rss"]), mb(m["anon"]), mb(m["file"]), mb(m["pss"]), mb(m["hwm"])))
    for kind, what in (("libc", "floor: C library only"), ("sqlite", "floor: + SQLite, 1 commit"),
                       ("libs", "floor: + all libraries")):
        m = res.get("floor", {}).get(kind)
        if m:
            print("  RSS %-26s %s MiB (anon %s, file %s; Pss %s)" % (
                what, mb(m["rss"]), mb(m["anon"]), mb(m["file"]), mb(m["pss"])))
    dr = res.get("drain")
    if dr:
        p, m = dr["peak"], dr["after"]
        print("  RSS while draining %d    peak %s MiB (anon %s, file %s; VmHWM %s); %.0f ev/s "
              "in %.1f s" % (a.backlog_events, mb(p["rss"]), mb(p["anon"]), mb(p["file"]),
                            mb(dr["hwm"]), dr["rate"], dr["wall"]))
        print("  RSS idle after drain    %s MiB (anon %s, file %s; Pss %s)" % (
            mb(m["rss"]), mb(m["anon"]), mb(m["file"]), mb(m["pss"])))


def summary(rows, a):
    n = len(rows)

    def cells(fn):
        out = []
        for r in rows:
            try:
                out.append(fn(r))
            except (KeyError, TypeError, ValueError):
                out.append("-")
        return out

    def lat(key, p):
        return lambda r: "%.1f" % pct([s[key] for s in r["lat"]], p)

    lines = [
        ("idle wakeups/min, fresh, no watchdog (target 0)", cells(lambda r: "%.0f" % r["idle_fresh"]["per_min"])),
        ("idle wakeups/min, after use, no watchdog (target 0)", cells(lambda r: "%.0f" % r["idle_used"]["per_min"])),
        ("idle wakeups/min, watchdog %d s (pings/min)" % a.watchdog,
         cells(lambda r: "%.0f (%.0f)" % (r["idle_wd"]["per_min"],
                                          r["idle_wd"]["pings"] * 60.0 / a.idle_seconds))),
        ("spawn floor (--version) p50 / p99 ms", cells(lambda r: lat("ver", 50)(r) + " / " + lat("ver", 99)(r))),
        ("record process p50 / p99 ms", cells(lambda r: lat("rec", 50)(r) + " / " + lat("rec", 99)(r))),
        ("**capture to server p50 / p99 ms** (target p99 <= 50)",
         cells(lambda r: lat("srv", 50)(r) + " / " + lat("srv", 99)(r))),
        ("capture to daemon ack p50 / p99 ms", cells(lambda r: lat("ack", 50)(r) + " / " + lat("ack", 99)(r))),
        ("server after record exit p50 / p99 ms",
         cells(lambda r: "%.1f / %.1f" % (pct([s["srv"] - s["rec"] for s in r["lat"]], 50),
                                          pct([s["srv"] - s["rec"] for s in r["lat"]], 99)))),
        ("**RSS idle after start MiB** (target <= 4; anon)",
         cells(lambda r: "%s (%s)" % (mb(r["mem_fresh"]["rss"]), mb(r["mem_fresh"]["anon"])))),
        ("RSS floor: C library / + SQLite / + all the daemon's libraries, MiB",
         cells(lambda r: " / ".join(mb(r["floor"][k]["rss"]) for k in ("libc", "sqlite", "libs")))),
        ("RSS idle after use MiB (anon)",
         cells(lambda r: "%s (%s)" % (mb(r["mem_used"]["rss"]), mb(r["mem_used"]["anon"])))),
        ("RSS peak while draining MiB (anon)",
         cells(lambda r: "%s (%s)" % (mb(r["drain"]["hwm"]), mb(r["drain"]["peak"]["anon"])))),
        ("RSS idle after drain MiB (anon)",
         cells(lambda r: "%s (%s)" % (mb(r["drain"]["after"]["rss"]), mb(r["drain"]["after"]["anon"])))),
        ("daemon drain rate to nginx, ev/s", cells(lambda r: "%.0f" % r["drain"]["rate"])),
    ]
    print("\nsummary (%d run%s)" % (n, "" if n == 1 else "s"))
    print("| | " + " | ".join("run %d" % (i + 1) for i in range(n)) + " |")
    print("|---|" + "---|" * n)
    for name, vals in lines:
        if any(v != "-" for v in vals):
            print("| %s | %s |" % (name, " | ".join(vals)))


def main():
    global DAEMON
    ap = argparse.ArgumentParser(description="Idle wakeups, latency and memory of nuvlabox-eventd.")
    ap.add_argument("-r", "--runs", type=int, default=1)
    ap.add_argument("-t", "--idle-seconds", type=int, default=60)
    ap.add_argument("-s", "--samples", type=int, default=200)
    ap.add_argument("-b", "--backlog-events", type=int, default=20000)
    ap.add_argument("-w", "--watchdog", type=int, default=10, help="WATCHDOG_USEC in seconds")
    ap.add_argument("-o", "--only", default="idle,latency,drain,floor")
    ap.add_argument("-d", "--dir")
    ap.add_argument("-c", "--cli", default=bd.CLI)
    ap.add_argument("-B", "--backlog", default=bd.BACKLOG)
    ap.add_argument("-k", "--keep", action="store_true")
    a = ap.parse_args()
    a.only = set(a.only.split(","))
    a.floor_dir = os.path.dirname(os.path.abspath(a.backlog))
    for kind in ("libc", "sqlite", "libs") if "floor" in a.only else ():
        if not os.access(os.path.join(a.floor_dir, "bench_floor_" + kind), os.X_OK):
            ap.error("%s/bench_floor_%s: not found (build first)" % (a.floor_dir, kind))
    sys.stdout.reconfigure(line_buffering=True)
    for p in (a.cli, DAEMON, a.backlog):
        if not os.access(p, os.X_OK):
            ap.error("%s: not found or not executable (build first)" % p)
    b = Bench(a)
    a.cli, a.backlog = bd.snapshot(a.cli, a.backlog, b.dir)
    DAEMON = os.path.join(os.path.dirname(a.cli), "nuvlabox-eventd")
    print("bench_daemon: dir %s (file system %s)" % (b.dir, bd.fs_type(b.dir)))
    print("daemon %s; idle %d s; %d latency samples; drain %d events; load %s" % (
        DAEMON, a.idle_seconds, a.samples, a.backlog_events,
        open("/proc/loadavg").read().split()[0]))
    rows = []
    try:
        b.start()
        for run in range(1, a.runs + 1):
            res = b.one_run(run)
            report_run(run, res, a)
            rows.append(res)
        summary(rows, a)
        return 0
    except (HarnessError, RuntimeError, OSError) as e:
        log("bench_daemon: failed: %s" % e)
        return 1
    finally:
        b.stop()


if __name__ == "__main__":
    sys.exit(main())
