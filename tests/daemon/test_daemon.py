#!/usr/bin/env python3
"""nuvlabox-eventd against the Nuvla stand-in behind the nginx mTLS gateway.

Latency while online, no wakeups while idle, systemd notifications,
SIGTERM in the middle of a drain (no loss, no duplicate), SIGHUP reloads,
flush through the daemon, status under load, and the network really going
away and coming back: the daemon runs in a network namespace joined to the
gateway by a veth pair whose link the test takes down and up.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "nuvla"))
import harness  # noqa: E402
from harness import CLI, DAEMON  # noqa: E402,F401  (the other daemon tests take them from here)
import schema  # noqa: E402


def wait_for(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def make_ssh_keys(kdir, specs, comment):
    """Generates keys with ssh-keygen: specs is ((type, [extra args]), ...).
    Returns {type: (public key line, fingerprint as ssh-keygen -l prints it)}."""
    os.mkdir(kdir)
    keys = {}
    for t, extra in specs:
        path = os.path.join(kdir, t)
        subprocess.run(["ssh-keygen", "-q", "-t", t, *extra, "-N", "", "-C", f"{t}@{comment}",
                        "-f", path], check=True)
        with open(path + ".pub") as f:
            pub = f.read().strip()
        fp = subprocess.run(["ssh-keygen", "-lf", path + ".pub"], capture_output=True,
                            text=True, check=True).stdout.split()[1]
        keys[t] = (pub, fp)
    return keys


class DaemonBase(unittest.TestCase):
    extra_addresses = ()
    extra_names = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.h = harness.start_for_tests("nbe-daemon-",
                                                 extra_addresses=cls.extra_addresses,
                                                 extra_names=cls.extra_names)
        cls.env = cls.h.env

    @classmethod
    def tearDownClass(cls):
        harness.stop_for_tests(cls.tmp, cls.h)

    def setUp(self):
        self.ctl("POST", "reset", {"seed": True})
        self.dir = tempfile.mkdtemp(dir=self.tmp)
        self.secret = harness.write_secret(os.path.join(self.dir, "secret"), self.env,
                                           newline=False)
        self.procs = []
        self.conf = self.config()

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        # the secret never reaches the daemon's log, status or export
        secret = self.env["NUVLA_TEST_API_SECRET"]
        self.assertNotIn(secret, self.daemon_log())
        if os.path.exists(os.path.join(self.dir, "state")):
            for cmd in (("status", "--json"), ("export",)):
                out = self.cli(*cmd, check=False)
                self.assertNotIn(secret.encode(), out.stdout + out.stderr)
        for p in self.procs:
            if getattr(p, "log", None):
                p.log.close()
        # everything the stand-in received passed the closed schema
        for r in self.ctl("GET", "requests")["requests"]:
            if r["method"] == "POST" and r["path"] == "/api/event" and isinstance(r.get("body"), dict):
                self.assertEqual(schema.validate_event(r["body"], strict=True), [], r["body"])

    def ctl(self, method, what, body=None, **query):
        return harness.control(self.env, method, what, body, **query)

    def config(self, **over):
        keys = harness.device_config(
            self.env, self.secret,
            state_dir=os.path.join(self.dir, "state"),
            runtime_dir=os.path.join(self.dir, "run"),
            request_timeout="5s",
            connect_timeout="2s",
            # never the machine's own /root/.ssh
            authorized_keys=os.path.join(self.dir, "home", ".ssh", "authorized_keys"))
        keys.update(over)
        return harness.write_config(os.path.join(self.dir, "agent.conf"), keys)

    def cli(self, *args, check=True):
        env = harness.agent_env()
        p = subprocess.run([CLI, "--config", self.conf, *args], capture_output=True, env=env,
                           timeout=120)
        if check and p.returncode != 0:
            self.fail(f"{args}: exit {p.returncode}: {p.stderr.decode()}")
        return p

    def record(self, name="daemon.test", *extra):
        return self.cli("record", name, *extra).stdout.decode().strip()

    def status(self):
        return json.loads(self.cli("status", "--json").stdout)

    def start_daemon(self, env_extra=None, prefix=()):
        env = harness.agent_env()
        env.update(env_extra or {})
        log = open(os.path.join(self.dir, f"daemon{len(self.procs)}.log"), "w")
        p = subprocess.Popen([*prefix, DAEMON, "--config", self.conf], stderr=log, env=env)
        p.log = log
        self.procs.append(p)
        sock = os.path.join(self.dir, "run", "notify.sock")
        self.assertTrue(wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 10),
                        "the daemon did not start")
        self.assertIsNone(p.poll(), self.daemon_log())
        return p

    def daemon_log(self):
        out = ""
        for i in range(len(self.procs)):
            path = os.path.join(self.dir, f"daemon{i}.log")
            if os.path.exists(path):
                with open(path) as f:
                    out += f.read()
        return out

    def stop_daemon(self, p, sig=signal.SIGTERM, timeout=10):
        t0 = time.monotonic()
        p.send_signal(sig)
        p.wait(timeout=timeout)
        return time.monotonic() - t0

    def server_events(self):
        return self.ctl("GET", "events", origin="api")["events"]

    def tags(self):
        out = []
        for e in self.server_events():
            out += [t for t in e.get("tags", []) if t.startswith("device-event/")]
        return out


class DaemonTest(DaemonBase):
    def test_record_reaches_the_server_within_200ms(self):
        d = self.start_daemon()
        self.record()  # the first one logs in
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 10))
        lat = []
        for i in range(20):
            t0 = time.monotonic()
            eid = self.record("latency.test", "--detail", f"i={i}")
            tag = "device-event/" + eid
            self.assertTrue(wait_for(lambda: tag in self.tags(), 5, step=0.005), "not delivered")
            lat.append((time.monotonic() - t0) * 1000)
        lat.sort()
        print(f"\nrecord-to-server latency (incl. the record process): p50 {lat[10]:.0f} ms, "
              f"max {lat[-1]:.0f} ms", file=sys.stderr)
        self.assertLessEqual(lat[-1], 200, lat)
        self.stop_daemon(d)

    def test_idle_means_no_wakeups_and_the_watchdog_only_pings(self):
        # a datagram socket standing in for systemd's NOTIFY_SOCKET
        nsock_path = os.path.join(self.dir, "sd.sock")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(nsock_path)
        ns.settimeout(0.2)
        try:
            d = self.start_daemon({"NOTIFY_SOCKET": nsock_path})
            self.assertTrue(wait_for(lambda: self.status()["upload_state"] == "idle", 10))
            msgs = []
            wait_for(lambda: (msgs.extend(self._drain(ns)) or any(m == "READY=1" for m in msgs)), 5)
            self.assertIn("READY=1", msgs)
            time.sleep(1)
            c0 = self._ctxt(d.pid)
            time.sleep(10)
            c1 = self._ctxt(d.pid)
            print(f"\nidle, no watchdog: {c1 - c0} context switches in 10 s", file=sys.stderr)
            self.assertLessEqual(c1 - c0, 2)
            self.stop_daemon(d)
            msgs = self._drain(ns)
            self.assertIn("STOPPING=1", msgs)

            # with a watchdog of 4 s: a ping every 2 s and nothing else
            d = self.start_daemon({"NOTIFY_SOCKET": nsock_path, "WATCHDOG_USEC": "4000000"})
            self.assertTrue(wait_for(lambda: self.status()["upload_state"] == "idle", 10))
            time.sleep(1)
            self._drain(ns)
            c0 = self._ctxt(d.pid)
            time.sleep(10)
            c1 = self._ctxt(d.pid)
            pings = [m for m in self._drain(ns) if m == "WATCHDOG=1"]
            print(f"idle, watchdog 4 s: {c1 - c0} context switches, {len(pings)} pings in 10 s",
                  file=sys.stderr)
            self.assertGreaterEqual(len(pings), 4)
            self.assertLessEqual(len(pings), 6)
            self.assertLessEqual(c1 - c0, len(pings) + 2)
            self.stop_daemon(d)
        finally:
            ns.close()

    @staticmethod
    def _drain(ns):
        out = []
        while True:
            try:
                out.append(ns.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return out

    @staticmethod
    def _ctxt(pid):
        n = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if "ctxt_switches" in line:
                    n += int(line.split()[1])
        return n

    def test_sigterm_during_a_drain_then_restart(self):
        n = 1500
        ids = set(self.cli("record", "x").stdout.decode().split())
        # a backlog recorded while no daemon runs, quickly through the CLI
        for chunk in range(5):
            procs = [subprocess.Popen([CLI, "--config", self.conf, "record", "drain.test",
                                       "--detail", f"i={chunk}-{k}"], stdout=subprocess.PIPE)
                     for k in range(n // 5 // 10)]
            for p in procs:
                ids.add(p.communicate()[0].decode().strip())
        # the rest in bulk (the CLI one at a time is slow on a busy machine)
        while len(ids) < n:
            ids.add(self.record("drain.test"))
        stops = []
        for round_ in range(4):
            d = self.start_daemon()
            time.sleep(random.uniform(0.05, 0.6))
            stops.append(self.stop_daemon(d))
            self.assertEqual(d.returncode, 0, self.daemon_log())
        d = self.start_daemon()
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 120), self.daemon_log())
        self.stop_daemon(d)
        tags = self.tags()
        self.assertEqual(len(tags), len(set(tags)), "a duplicate reached the server")
        self.assertEqual(set(tags), {"device-event/" + i for i in ids})
        print(f"\nSIGTERM while draining: stopped within {max(stops):.2f} s at most",
              file=sys.stderr)
        self.assertLess(max(stops), 8)

    def test_sighup_reload(self):
        with open(self.secret, "w") as f:
            f.write("wrong")
        d = self.start_daemon()
        self.record()
        self.assertTrue(wait_for(lambda: self.status()["upload_state"] == "auth-failed", 10),
                        self.daemon_log())
        # fix the secret and change a key: the reload says what changed and takes effect
        with open(self.secret, "w") as f:
            f.write(self.env["NUVLA_TEST_API_SECRET"])
        self.conf = self.config(max_in_flight=2)
        d.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 15), self.daemon_log())
        self.assertIn("reloaded", self.daemon_log())
        self.assertIn("max_in_flight", self.daemon_log())
        # a broken file is refused and the running configuration stays
        with open(self.conf, "a") as f:
            f.write("no_such_key = 1\n")
        d.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "reload refused" in self.daemon_log(), 5))
        self.conf = self.config(max_in_flight=2)  # for the CLI; the daemon keeps its own
        eid = self.record()
        self.assertTrue(wait_for(lambda: "device-event/" + eid in self.tags(), 10))
        self.assertIsNone(d.poll())
        self.stop_daemon(d)

    def test_flush_asks_the_running_daemon(self):
        # the gateway answers 503 for a while: the daemon backs off
        self.conf = self.config(retry_base="20s", retry_cap="1m")
        d = self.start_daemon()
        # (until removed: with full jitter a single 503's backoff can be over
        # before the status is read)
        self.ctl("POST", "faults",
                 {"kind": "status", "status": 503, "count": None, "path": "/api/event",
                  "method": "POST", "body": "html"})
        for i in range(5):
            self.record()
        self.assertTrue(wait_for(lambda: self.status()["upload_state"] == "backoff", 10),
                        self.daemon_log())
        self.ctl("DELETE", "faults")
        t0 = time.monotonic()
        p = self.cli("flush", "--timeout", "20", check=False)
        self.assertEqual(p.returncode, 0, p.stderr.decode() + self.daemon_log())
        self.assertIn(b"by the daemon", p.stdout)
        self.assertLess(time.monotonic() - t0, 15)
        self.assertEqual(self.status()["pending"], 0)
        self.assertEqual(len(self.tags()), 5)
        self.assertTrue(self.status()["uploader_running"])
        self.stop_daemon(d)

    def test_flush_through_the_daemon_reports_a_refusal(self):
        self.conf = self.config(client_cert=self.env["NUVLA_TEST_CLIENT_EXPIRED_CERT"],
                                client_key=self.env["NUVLA_TEST_CLIENT_EXPIRED_KEY"])
        d = self.start_daemon()
        self.record()
        p = self.cli("flush", "--timeout", "10", check=False)
        self.assertEqual(p.returncode, 69, p.stderr)
        self.assertIn(b"SSL certificate error", p.stderr)
        st = self.status()
        self.assertEqual(st["upload_state"], "auth-failed")
        self.assertEqual(st["pending"], 1)
        self.stop_daemon(d)

    def test_sigterm_while_waiting_for_the_upload_lock(self):
        import fcntl
        state = os.path.join(self.dir, "state")
        os.makedirs(state)
        with open(os.path.join(state, "upload.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)      # a flush that runs for minutes
            env = harness.agent_env()
            log = open(os.path.join(self.dir, "daemon0.log"), "w")
            p = subprocess.Popen([DAEMON, "--config", self.conf], stderr=log, env=env)
            p.log = log
            self.procs.append(p)
            self.assertTrue(wait_for(lambda: "waiting" in self.daemon_log(), 10),
                            self.daemon_log())
            took = self.stop_daemon(p, timeout=5)
        self.assertEqual(p.returncode, 0, self.daemon_log())
        self.assertLess(took, 3, self.daemon_log())
        self.assertIn("stopping on a signal while waiting", self.daemon_log())

    def test_status_agrees_under_load(self):
        d = self.start_daemon()
        ids = []
        seen_running = False
        for i in range(150):
            ids.append(self.record("load.test", "--detail", f"i={i}"))
            if i % 25 == 0:
                st = self.status()
                seen_running |= st["uploader_running"]
                # never more accounted for than recorded
                self.assertLessEqual(st["pending"] + st["sent"], len(ids) + 1)
                self.assertEqual(st["dead"], 0)
        self.assertTrue(seen_running)
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 30))
        # the acknowledgements commit a moment before the daemon says idle
        self.assertTrue(wait_for(lambda: self.status()["upload_state"] == "idle", 10))
        st = self.status()
        self.assertEqual(st["sent"], len(ids))
        self.assertEqual(len(self.tags()), len(ids))
        # a sent event's wire is what the server holds
        got = {t: e for e in self.server_events() for t in e["tags"]}
        one = json.loads(self.cli("show", ids[7], "--json").stdout)
        self.assertEqual(one["state"], "sent")
        self.assertEqual(one["server_id"], got["device-event/" + ids[7]]["id"])
        self.stop_daemon(d)


def netns_available():
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = "nbe-probe-%d" % os.getpid()
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


SUBNET = 200 + os.getpid() % 50
HOST_ADDR = f"10.{SUBNET}.77.1"
DEV_ADDR = f"10.{SUBNET}.77.2"
GATEWAY_NAME = "gateway.nbe-test"


@unittest.skipUnless(netns_available(), "needs root and ip netns")
class OfflineOnlineTest(DaemonBase):
    """The device in a network namespace, its only way out a veth pair. It
    knows the gateway by a host name (/etc/netns/NAME/hosts, which `ip netns
    exec` mounts over /etc/hosts): mbedTLS 2.28 matches no IP-address names."""
    extra_addresses = (HOST_ADDR,)
    extra_names = (GATEWAY_NAME,)

    @classmethod
    def setUpClass(cls):
        tag = "%x" % (os.getpid() % 0xffff)
        cls.ns, cls.vh, cls.vd = "nbe-dev-" + tag, "nbeh" + tag, "nbed" + tag
        cls.ip("netns", "add", cls.ns)
        try:
            cls.ip("link", "add", cls.vh, "type", "veth", "peer", "name", cls.vd)
            cls.ip("link", "set", cls.vd, "netns", cls.ns)
            cls.ip("addr", "add", HOST_ADDR + "/24", "dev", cls.vh)
            cls.ip("link", "set", cls.vh, "up")
            cls.ip("-n", cls.ns, "addr", "add", DEV_ADDR + "/24", "dev", cls.vd)
            cls.ip("-n", cls.ns, "link", "set", cls.vd, "up")
            cls.ip("-n", cls.ns, "link", "set", "lo", "up")
            os.makedirs(f"/etc/netns/{cls.ns}", exist_ok=True)
            with open(f"/etc/netns/{cls.ns}/hosts", "w") as f:
                f.write(f"127.0.0.1 localhost\n{HOST_ADDR} {GATEWAY_NAME}\n")
            super().setUpClass()
        except Exception:
            cls.cleanup_net()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.cleanup_net()

    @classmethod
    def cleanup_net(cls):
        subprocess.run(["ip", "link", "del", cls.vh], capture_output=True)
        subprocess.run(["ip", "netns", "del", cls.ns], capture_output=True)
        shutil.rmtree(f"/etc/netns/{cls.ns}", ignore_errors=True)

    @staticmethod
    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def test_backlog_drains_when_the_link_comes_back(self):
        port = self.env["NUVLA_GATEWAY_PORT"]
        # long backoffs: only the netlink event can explain a quick drain
        self.conf = self.config(endpoint=f"https://{GATEWAY_NAME}:{port}", retry_base="30s",
                                retry_cap="10m", connect_timeout="1s")
        d = self.start_daemon(prefix=("ip", "netns", "exec", self.ns))
        eid = self.record()
        self.assertTrue(wait_for(lambda: "device-event/" + eid in self.tags(), 10),
                        self.daemon_log())
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 10))

        self.ip("link", "set", self.vh, "down")
        ids = [self.record("offline.test", "--detail", f"i={i}") for i in range(30)]
        # wait for a backoff long enough that its end cannot explain the drain
        def long_backoff():
            st = self.status()
            return st["upload_state"] in ("offline", "backoff") and \
                (st["next_attempt_in_s"] or 0) >= 12
        self.assertTrue(wait_for(long_backoff, 120, step=0.5), self.daemon_log())
        remaining = self.status()["next_attempt_in_s"]
        self.assertEqual(self.status()["pending"], len(ids))

        t0 = time.monotonic()
        self.ip("link", "set", self.vh, "up")
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, remaining - 2, step=0.1),
                        self.daemon_log())
        took = time.monotonic() - t0
        print(f"\nlink up -> backlog of {len(ids)} drained in {took:.1f} s "
              f"(the backoff had {remaining} s left)", file=sys.stderr)
        self.assertLess(took, 8)
        self.assertIn("network changed", self.daemon_log())
        tags = self.tags()
        self.assertEqual(len(tags), len(set(tags)))
        self.assertTrue({"device-event/" + i for i in ids} <= set(tags))
        self.stop_daemon(d)

    def test_interface_churn_does_not_wake_an_idle_daemon(self):
        port = self.env["NUVLA_GATEWAY_PORT"]
        self.conf = self.config(endpoint=f"https://{GATEWAY_NAME}:{port}")
        d = self.start_daemon(prefix=("ip", "netns", "exec", self.ns))
        eid = self.record()
        self.assertTrue(wait_for(lambda: "device-event/" + eid in self.tags(), 10),
                        self.daemon_log())
        self.assertTrue(wait_for(lambda: self.status()["upload_state"] == "idle", 10))
        time.sleep(1)
        c0 = DaemonTest._ctxt(d.pid)
        # links, addresses and routes come and go in the daemon's namespace
        for i in range(5):
            a, b = f"nbechA{i}", f"nbechB{i}"
            self.ip("-n", self.ns, "link", "add", a, "type", "veth", "peer", "name", b)
            self.ip("-n", self.ns, "addr", "add", f"10.250.{i}.1/24", "dev", a)
            self.ip("-n", self.ns, "link", "set", a, "up")
            self.ip("-n", self.ns, "link", "set", b, "up")
            self.ip("-n", self.ns, "link", "del", a)
        time.sleep(1)
        c1 = DaemonTest._ctxt(d.pid)
        print(f"\nidle, 5 veth pairs made and removed: {c1 - c0} context switches",
              file=sys.stderr)
        self.assertLessEqual(c1 - c0, 2)
        self.stop_daemon(d)


if __name__ == "__main__":
    unittest.main(verbosity=2)
