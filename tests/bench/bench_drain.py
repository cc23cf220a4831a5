#!/usr/bin/env python3
"""bench_drain: how fast `nuvlabox-event flush` drains a backlog, against
curl's own request rate to the same gateway, in the same run (DESIGN §11
"Benchmarks"; issue 3). Not a test: it prints tables and judges nothing but
that every step worked (every event sent, every curl request answered 201).

The server is nginx alone, over mutual TLS, with no stand-in in the path
(tests/nuvla/harness.py --bench-direct): it answers POST /api/session (201 and
a cookie), GET /api/nuvlabox/<uuid> (the owner) and POST /api/event (201 and a
unique event/<id>) itself. So the figures are those of the client and TLS,
not of a Python server.

  curl-1   the curl CLI posting the agent's own event body N times over one
           reused connection (one invocation, N URLs; HTTP/2, as the agent)
  agent-1  `nuvlabox-event flush` of a backlog of -n events, max_in_flight = 1
  curl-8   the same as curl-1 with --parallel --parallel-max 8 (HTTP/2
           streams multiplexed on one connection)
  agent-8  the same flush with max_in_flight = 8

Each curl figure brackets its agent run: half of its requests just before,
half just after, so that both see the same machine. The backlog is made once
(bench_backlog, nbe_buffer_append_batch) and copied before each flush; the
copy is synced to disk outside the clock. Peak RSS and CPU come from wait4()
of the process spawned (`nuvlabox-event` execs `nuvlabox-event-net` in the same
process, so its rusage is the uploader's); RSS is also sampled from
/proc/PID/status every 50 ms to split it into anonymous and file-backed pages.

  base-1/8 with --base CLI: the same flushes by another build (the one before
           a change), inside the same curl brackets, in alternating order: a
           before/after comparison from one run

usage: bench_drain.py [-n EVENTS] [-N CURL_REQUESTS] [-r RUNS] [-d DIR] [-c CLI]
                      [--base CLI] [-B BACKLOG_PROGRAM] [-o curl1,agent1,curl8,agent8]
                      [--set KEY=VALUE]... [-k]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "tests", "nuvla"))
from harness import Harness, HarnessError  # noqa: E402

BUILD = os.environ.get("NBE_BUILD_DIR") or os.path.join(ROOT, "build")
CLI = os.environ.get("NBE_CLI") or os.path.join(BUILD, "agent", "nuvlabox-event")
BACKLOG = os.path.join(BUILD, "tests", "bench", "bench_backlog")
CURL = shutil.which("curl") or "/usr/bin/curl"
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
SAMPLE_S = 0.05

FLUSH_RE = re.compile(r"flush: (\d+) sent, (\d+) dead-lettered, (\d+) pending \(([\d.]+) s\)")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fs_type(path):
    try:
        return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------- processes

def proc_mem(pid):
    """{VmRSS, VmHWM, RssAnon, RssFile} in KiB from /proc/PID/status, or None."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        return None
    return out if "VmRSS" in out else None


def smaps_by_file(pid, top=8):
    """Resident KiB per mapping name (libraries, [heap], anonymous), largest first."""
    per = {}
    name = None
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                first = line.split(None, 1)[0]
                if not first.endswith(":") or "-" in first:
                    parts = line.split(None, 5)
                    name = os.path.basename(parts[5].strip()) if len(parts) > 5 else "[anon]"
                elif first == "Rss:":
                    per[name] = per.get(name, 0) + int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return []
    return sorted(per.items(), key=lambda kv: -kv[1])[:top]


def smaps_rollup(pid):
    """{Rss, Pss, Pss_Anon, Pss_File, ...} in KiB: Pss shares a library's pages
    among the processes that map it."""
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if v.strip().endswith("kB"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def child_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


class Measured:
    """One process, run to its end: wall time, rusage, sampled RSS.

    Peak RSS comes from GNU time's %M (wait4 of a child forked from the small
    `time` process): the wait4 rusage of a child forked from this Python
    process would report Python's own RSS, which the child inherited until
    it exec'd. Without /usr/bin/time, the last VmHWM sampled stands in.
    """

    def __init__(self, argv, stdout, stderr, env=None, smaps_at=None):
        tfile = None
        if TIME:
            fd, tfile = tempfile.mkstemp(prefix="bench-time-")
            os.close(fd)
            argv = [TIME, "-f", "%M", "-o", tfile] + list(argv)
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                             env=env)
        self.samples = []
        self.hwm = 0
        self.smaps = []
        self.rollup = {}
        target = None
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if target is None:
                target = child_of(p.pid) if TIME else p.pid
            m = proc_mem(target) if target else None
            if m:
                self.samples.append(m)
                self.hwm = max(self.hwm, m.get("VmHWM", 0))
                if smaps_at is not None and not self.smaps and time.monotonic() - t0 >= smaps_at:
                    self.smaps = smaps_by_file(target)
                    self.rollup = smaps_rollup(target)
            time.sleep(SAMPLE_S)
        self.wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        self.rc = p.returncode
        self.maxrss_kib = self.hwm
        if tfile:
            try:
                with open(tfile) as f:
                    lines = f.read().split()
                self.maxrss_kib = int(lines[-1])
            except (OSError, ValueError, IndexError):
                pass
            os.unlink(tfile)
        self.cpu = ru.ru_utime + ru.ru_stime
        self.utime, self.stime = ru.ru_utime, ru.ru_stime
        self.nvcsw, self.nivcsw = ru.ru_nvcsw, ru.ru_nivcsw

    def steady(self, key="VmRSS"):
        """Median of @key over the second half of the samples (KiB)."""
        half = sorted(s.get(key, 0) for s in self.samples[len(self.samples) // 2:])
        return half[len(half) // 2] if half else 0

    def peak(self, key):
        return max((s.get(key, 0) for s in self.samples), default=0)


# ---------------------------------------------------------------- the bench

def snapshot(cli, backlog, workdir, sub="bin"):
    """Copies the programs into @workdir/bin and returns the copies (cli,
    backlog): a rebuild of the tree while a long run goes on must not change
    the programs in the middle of it. `nuvlabox-event` runs the
    `nuvlabox-event-net` beside it, so both go (and the daemon)."""
    import hashlib
    bindir = os.path.join(workdir, sub)
    os.makedirs(bindir, exist_ok=True)
    src = os.path.dirname(os.path.abspath(cli))
    desc = []
    for name in ("nuvlabox-event", "nuvlabox-event-net", "nuvlabox-eventd"):
        path = os.path.join(src, name)
        if os.path.exists(path):
            shutil.copy2(path, os.path.join(bindir, name))
            with open(path, "rb") as f:
                h = hashlib.sha256(f.read()).hexdigest()[:12]
            desc.append("%s %s (built %s)" % (name, h, time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))))
    shutil.copy2(backlog, os.path.join(bindir, os.path.basename(backlog)))
    print("programs (copied to %s): %s" % (bindir, "; ".join(desc)))
    return (os.path.join(bindir, os.path.basename(cli)),
            os.path.join(bindir, os.path.basename(backlog)))


class Bench:
    def __init__(self, args):
        self.a = args
        base = args.dir or BUILD
        os.makedirs(base, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="bench-drain-", dir=base)
        self.h = None
        self.env = None

    # -- setup
    def start(self):
        self.h = Harness(os.path.join(self.dir, "harness"), bench_direct=True)
        self.env = self.h.start()
        self.secret = os.path.join(self.dir, "secret")
        with open(self.secret, "w") as f:
            f.write(self.env["NUVLA_TEST_API_SECRET"])
        os.chmod(self.secret, 0o600)

    def config(self, name, inflight):
        e = self.env
        keys = {
            "endpoint": e["NUVLA_BENCH_DIRECT_URL"],
            "nuvlabox_id": e["NUVLA_TEST_NUVLABOX_ID"],
            "ca_file": e["NUVLA_TEST_CA"],
            "client_cert": e["NUVLA_TEST_CLIENT_CERT"],
            "client_key": e["NUVLA_TEST_CLIENT_KEY"],
            "api_key": e["NUVLA_TEST_API_KEY"],
            "api_secret_file": self.secret,
            "state_dir": os.path.join(self.dir, name, "state"),
            "runtime_dir": os.path.join(self.dir, name, "run"),
            "max_in_flight": str(inflight),
        }
        for kv in self.a.set:
            k, _, v = kv.partition("=")
            keys[k.strip()] = v.strip()
        os.makedirs(os.path.join(self.dir, name), exist_ok=True)
        path = os.path.join(self.dir, name, "agent.conf")
        with open(path, "w") as f:
            f.write("# bench_drain\n")
            for k, v in keys.items():
                f.write("%s = %s\n" % (k, v))
        return path, keys["state_dir"]

    def backlog(self, state_dir, n):
        p = subprocess.run([self.a.backlog, "-s", state_dir, "-n", str(n)], capture_output=True,
                           text=True)
        if p.returncode != 0:
            raise RuntimeError("bench_backlog: %s" % p.stderr.strip())
        return dict(kv.split("=", 1) for kv in p.stdout.split()[1:])

    def flush(self, conf, smaps_at=None, cli=None):
        out = os.path.join(os.path.dirname(conf), "flush.out")
        with open(out, "w") as fo:
            m = Measured([cli or self.a.cli, "--config", conf, "flush", "--timeout", "3600"], fo,
                         subprocess.STDOUT, env=self.clean_env(), smaps_at=smaps_at)
        with open(out) as f:
            text = f.read()
        mm = FLUSH_RE.search(text)
        if m.rc != 0 or not mm:
            raise RuntimeError("flush failed (exit %d): %s" % (m.rc, text.strip()[-500:]))
        m.sent, m.dead, m.pending = int(mm.group(1)), int(mm.group(2)), int(mm.group(3))
        return m

    @staticmethod
    def clean_env():
        return {k: v for k, v in os.environ.items()
                if not k.startswith(("NUVLA", "NUVLAEDGE", "NOTIFY_", "WATCHDOG"))}

    def prepare(self):
        """Checks the path end to end with one event, takes its wire body
        for curl, and makes the backlog template."""
        conf, state = self.config("warmup", 1)
        self.backlog(state, 1)
        m = self.flush(conf)
        if m.sent != 1:
            raise RuntimeError("warm-up: %d sent" % m.sent)
        show = subprocess.run([self.a.cli, "--config", conf, "show", "1", "--json"],
                              capture_output=True, text=True, env=self.clean_env())
        wire = json.loads(show.stdout)["wire"]
        self.body = os.path.join(self.dir, "body.json")
        with open(self.body, "w") as f:
            f.write(json.dumps(wire, separators=(",", ":")))
        self.body_bytes = os.path.getsize(self.body)
        self.template = os.path.join(self.dir, "template")
        t0 = time.monotonic()
        info = self.backlog(self.template, self.a.events)
        log("backlog: %s events in %.1f s (%s ev/s), events.db %.1f MiB"
            % (info["events"], time.monotonic() - t0, info["rate"],
               int(info["db_bytes"]) / 1048576))
        self.db_bytes = int(info["db_bytes"])
        self.curl_cfg = {}

    def fresh_state(self, name, inflight):
        conf, state = self.config(name, inflight)
        shutil.rmtree(state, ignore_errors=True)
        os.makedirs(state)
        shutil.copyfile(os.path.join(self.template, "events.db"), os.path.join(state, "events.db"))
        os.sync()           # the copy reaches the disk outside the clock
        return conf

    # -- curl
    def curl_config(self, n):
        if n in self.curl_cfg:
            return self.curl_cfg[n]
        e = self.env
        path = os.path.join(self.dir, "curl-%d.cfg" % n)
        url = e["NUVLA_BENCH_DIRECT_URL"] + "/api/event"
        with open(path, "w") as f:
            f.write('silent\nno-progress-meter\ncacert = "%s"\ncert = "%s"\nkey = "%s"\n'
                    'header = "Content-Type: application/json"\n'
                    'header = "Accept: application/json"\n'
                    'user-agent = "nuvlabox-event"\n'
                    'data-binary = "@%s"\n'
                    'write-out = "%%{stderr}%%{http_code} %%{num_connects} %%{http_version}\\n"\n'
                    % (e["NUVLA_TEST_CA"], e["NUVLA_TEST_CLIENT_CERT"], e["NUVLA_TEST_CLIENT_KEY"],
                       self.body))
            line = 'url = "%s"\noutput = "/dev/null"\n' % url
            f.write(line * n)
        self.curl_cfg[n] = path
        return path

    def curl(self, n, parallel):
        cfg = self.curl_config(n)
        argv = [CURL, "-K", cfg]
        if parallel:
            argv += ["--parallel", "--parallel-max", str(parallel)]
        err = os.path.join(self.dir, "curl.err")
        with open(err, "w") as fe:
            m = Measured(argv, subprocess.DEVNULL, fe)
        codes = {}
        connects = 0
        with open(err) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].isdigit():
                    codes[parts[0]] = codes.get(parts[0], 0) + 1
                    connects += int(parts[1]) if parts[1].isdigit() else 0
        if m.rc != 0 or codes.get("201", 0) != n:
            raise RuntimeError("curl: exit %d, answers %s" % (m.rc, codes))
        m.n, m.connects = n, connects
        return m

    # -- one measurement pair: curl half, agent, curl half
    def pair(self, run, inflight):
        half = max(1, self.a.curl_requests // 2)
        c1 = self.curl(half, inflight if inflight > 1 else 0) if self.want("curl", inflight) else None
        a = base = None
        if self.want("agent", inflight):
            order = ["agent", "base"] if self.a.base else ["agent"]
            if run % 2 == 0:
                order.reverse()
            for who in order:
                conf = self.fresh_state("run%d-%s%d" % (run, who, inflight), inflight)
                m = self.flush(conf, smaps_at=1.0,
                               cli=self.a.base if who == "base" else None)
                if m.sent != self.a.events or m.pending:
                    raise RuntimeError("%s-%d: %d sent, %d pending"
                                       % (who, inflight, m.sent, m.pending))
                if who == "base":
                    base = m
                else:
                    a = m
        c2 = self.curl(half, inflight if inflight > 1 else 0) if self.want("curl", inflight) else None
        return c1, a, c2, base

    def want(self, what, inflight):
        return "%s%d" % (what, inflight) in self.a.only

    def stop(self):
        if self.h:
            self.h.stop()
        if not self.a.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log("work directory kept: %s" % self.dir)


def curl_rate(c1, c2):
    if not c1:
        return None
    return (c1.n + c2.n) / (c1.wall + c2.wall)


def fmt(v, spec="%.0f", none="-"):
    return none if v is None else spec % v


def report_run(b, run, res):
    c1a, a1, c1b, b1 = res[1]
    c8a, a8, c8b, b8 = res[8]
    r_c1, r_c8 = curl_rate(c1a, c1b), curl_rate(c8a, c8b)
    r_a1 = a1.sent / a1.wall if a1 else None
    r_a8 = a8.sent / a8.wall if a8 else None
    print("\nrun %d" % run)
    print("%-8s %9s %8s %9s %9s %8s %9s %9s %8s %8s  %s" % (
        "test", "requests", "wall s", "rate /s", "cpu us/ev", "ctxsw/ev", "peak RSS", "steady",
        "anon", "file", "note"))

    def crow(name, ca, cb):
        if not ca:
            return
        n = ca.n + cb.n
        print("%-8s %9d %8.2f %9.0f %9.1f %8.2f %6.1f MB %6.1f MB %5.1f MB %5.1f MB  %s" % (
            name, n, ca.wall + cb.wall, n / (ca.wall + cb.wall),
            (ca.cpu + cb.cpu) * 1e6 / n, (ca.nvcsw + ca.nivcsw + cb.nvcsw + cb.nivcsw) / n,
            max(ca.maxrss_kib, cb.maxrss_kib) / 1024, max(ca.steady(), cb.steady()) / 1024,
            max(ca.steady("RssAnon"), cb.steady("RssAnon")) / 1024,
            max(ca.steady("RssFile"), cb.steady("RssFile")) / 1024,
            "half before, half after; %d connection(s)" % (ca.connects + cb.connects)))

    def arow(name, a, base, tag):
        if not a:
            return
        note = "%.0f%% of %s" % (100 * a.sent / a.wall / base, tag) if base else ""
        print("%-8s %9d %8.2f %9.0f %9.1f %8.2f %6.1f MB %6.1f MB %5.1f MB %5.1f MB  %s" % (
            name, a.sent, a.wall, a.sent / a.wall, a.cpu * 1e6 / a.sent,
            (a.nvcsw + a.nivcsw) / a.sent, a.maxrss_kib / 1024, a.steady() / 1024,
            a.steady("RssAnon") / 1024, a.steady("RssFile") / 1024, note))

    print("(MB = MiB; peak RSS: GNU time %M; steady: median of /proc/PID/status over the "
          "second half; anon/file: RssAnon/RssFile)")
    crow("curl-1", c1a, c1b)
    arow("agent-1", a1, r_c1, "curl-1 (target >= 60%)")
    arow("base-1", b1, r_c1, "curl-1")
    crow("curl-8", c8a, c8b)
    arow("agent-8", a8, r_c8, "curl-8; %s x agent-1 (target >= 2)" % fmt(
        r_a8 / r_a1 if r_a1 and r_a8 else None, "%.2f"))
    arow("base-8", b8, r_c8, "curl-8")
    for name, a in (("agent-1", a1), ("agent-8", a8), ("base-1", b1), ("base-8", b8)):
        if a and a.smaps:
            r = a.rollup
            print("%s after 1 s: Rss %d KiB = anon %d + file %d; Pss %d KiB (anon %d, file %d)"
                  % (name, r.get("Rss", 0), r.get("Anonymous", 0),
                     r.get("Rss", 0) - r.get("Anonymous", 0), r.get("Pss", 0),
                     r.get("Pss_Anon", 0), r.get("Pss_File", 0)))
            print("  resident by mapping, KiB: %s" % ", ".join("%s %d" % kv for kv in a.smaps))
    return {"curl1": r_c1, "agent1": r_a1, "curl8": r_c8, "agent8": r_a8,
            "rss1": a1.maxrss_kib / 1024 if a1 else None,
            "rss8": a8.maxrss_kib / 1024 if a8 else None,
            "cpu1": a1.cpu * 1e6 / a1.sent if a1 else None,
            "cpu8": a8.cpu * 1e6 / a8.sent if a8 else None,
            "ccpu1": (c1a.cpu + c1b.cpu) * 1e6 / (c1a.n + c1b.n) if c1a else None,
            "base1": b1.sent / b1.wall if b1 else None,
            "base8": b8.sent / b8.wall if b8 else None,
            "brss1": b1.maxrss_kib / 1024 if b1 else None,
            "brss8": b8.maxrss_kib / 1024 if b8 else None}


def summary(rows):
    def col(key, spec="%.0f"):
        return [fmt(r[key], spec) for r in rows]

    def ratio(a, b, scale=100, spec="%.0f%%"):
        return [fmt(r[a] / r[b] * scale if r[a] and r[b] else None, spec) for r in rows]

    def spread(vals):
        v = [x for x in vals if x]
        if len(v) < 2:
            return ""
        mid = (max(v) + min(v)) / 2
        return "±%.0f %%" % (100 * (max(v) - mid) / mid)

    n = len(rows)
    print("\nsummary (%d run%s)" % (n, "" if n == 1 else "s"))
    print("| | " + " | ".join("run %d" % (i + 1) for i in range(n)) + " | spread |")
    print("|---|" + "---|" * (n + 1))
    lines = [
        ("curl-1, one connection, req/s", col("curl1"), spread([r["curl1"] for r in rows])),
        ("agent-1 (max_in_flight 1), ev/s", col("agent1"), spread([r["agent1"] for r in rows])),
        ("**agent-1 / curl-1** (target >= 60 %)", ratio("agent1", "curl1"), ""),
        ("curl-8, HTTP/2 x8, req/s", col("curl8"), spread([r["curl8"] for r in rows])),
        ("agent-8 (max_in_flight 8), ev/s", col("agent8"), spread([r["agent8"] for r in rows])),
        ("agent-8 / curl-8", ratio("agent8", "curl8"), ""),
        ("**agent-8 / agent-1** (target >= 2)", ratio("agent8", "agent1", 1, "%.2f"), ""),
        ("agent-8 / curl-1 (2 x 60 % = 1.2)", ratio("agent8", "curl1", 1, "%.2f"), ""),
        ("curl-8 / curl-1", ratio("curl8", "curl1", 1, "%.2f"), ""),
        ("agent CPU per event, 1 / 8 (us)", [fmt(r["cpu1"]) + " / " + fmt(r["cpu8"])
                                             for r in rows], ""),
        ("curl-1 CPU per request (us)", col("ccpu1"), ""),
        ("**agent peak RSS, 1 / 8** (target <= 8 MB)",
         [fmt(r["rss1"], "%.1f") + " / " + fmt(r["rss8"], "%.1f") + " MB" for r in rows], ""),
    ]
    if any(r["base1"] or r["base8"] for r in rows):
        lines += [
            ("base-1 (--base build), ev/s", col("base1"), ""),
            ("base-1 / curl-1", ratio("base1", "curl1"), ""),
            ("**agent-1 / base-1**", ratio("agent1", "base1", 1, "%.2f"), ""),
            ("base-8, ev/s", col("base8"), ""),
            ("**agent-8 / base-8**", ratio("agent8", "base8", 1, "%.2f"), ""),
            ("base peak RSS, 1 / 8",
             [fmt(r["brss1"], "%.1f") + " / " + fmt(r["brss8"], "%.1f") + " MB" for r in rows],
             ""),
        ]
    for name, vals, sp in lines:
        print("| %s | %s | %s |" % (name, " | ".join(vals), sp))


def main():
    ap = argparse.ArgumentParser(description="Drain rate of flush against curl's own rate.")
    ap.add_argument("-n", "--events", type=int, default=100000,
                    help="backlog size (default 100000)")
    ap.add_argument("-N", "--curl-requests", type=int, default=20000,
                    help="curl requests per figure, half before and half after the agent "
                         "(default 20000)")
    ap.add_argument("-r", "--runs", type=int, default=1, help="runs (default 1)")
    ap.add_argument("-d", "--dir", help="where to work (default: the build directory; "
                                        "not tmpfs)")
    ap.add_argument("-c", "--cli", default=CLI, help="nuvlabox-event (default %(default)s)")
    ap.add_argument("--base", help="another nuvlabox-event build to compare, in the same run")
    ap.add_argument("-B", "--backlog", default=BACKLOG, help="bench_backlog (default %(default)s)")
    ap.add_argument("-o", "--only", default="curl1,agent1,curl8,agent8",
                    help="tests, comma-separated (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra agent.conf key for the agent runs (what-if runs)")
    ap.add_argument("-k", "--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    a.only = set(a.only.split(","))
    for p in (a.cli, a.backlog, CURL) + ((a.base,) if a.base else ()):
        if not os.access(p, os.X_OK):
            ap.error("%s: not found or not executable (build first)" % p)

    b = Bench(a)
    a.cli, a.backlog = snapshot(a.cli, a.backlog, b.dir)
    if a.base:
        a.base, _ = snapshot(a.base, a.backlog, b.dir, "bin-base")
    ft = fs_type(b.dir)
    print("bench_drain: dir %s (file system %s)" % (b.dir, ft))
    if ft in ("tmpfs", "ramfs"):
        log("bench_drain: WARNING: %s is in memory: fsync costs nothing there; use -d" % b.dir)
    cv = subprocess.run([CURL, "--version"], capture_output=True, text=True).stdout.splitlines()
    print("cli: %s; %s" % (a.cli, cv[0] if cv else "curl ?"))
    print("backlog %d events; curl %d requests per figure; extra config: %s"
          % (a.events, a.curl_requests, ", ".join(a.set) or "none"))
    rows = []
    try:
        b.start()
        b.prepare()
        print("event body %d bytes; events.db %.1f MiB; load %s"
              % (b.body_bytes, b.db_bytes / 1048576, open("/proc/loadavg").read().split()[0]))
        for run in range(1, a.runs + 1):
            res = {1: b.pair(run, 1), 8: b.pair(run, 8)}
            rows.append(report_run(b, run, res))
        summary(rows)
        return 0
    except (HarnessError, RuntimeError, OSError) as e:
        log("bench_drain: failed: %s" % e)
        return 1
    finally:
        b.stop()


if __name__ == "__main__":
    sys.exit(main())
