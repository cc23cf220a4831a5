#!/usr/bin/env python3
"""Standalone lifecycle actions (issue 6) against the Nuvla stand-in behind
the nginx mTLS gateway: activate (happy path, 409, refused twice, killed
around the server's answer), commission (allowed, unknown and replacing
keys), and `job run` for reboot_nuvlabox (with a fake reboot command and a
new boot id afterwards), the ssh-key jobs (authorized_keys edits keep every
other line, the owner and the mode), unsupported actions, and jobs that are
final, canceled or made final meanwhile."""
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "daemon"))
from test_daemon import CLI, DaemonBase, make_ssh_keys, wait_for  # noqa: E402
import harness  # noqa: E402  (on the path test_daemon set)

def read(path):
    with open(path, "rb") as f:
        return f.read()


EX_USAGE, EX_DATAERR, EX_UNAVAILABLE, EX_NOPERM, EX_CONFIG = 64, 65, 69, 77, 78


class LifecycleBase(DaemonBase):
    def new_nuvlabox(self, state="NEW"):
        return self.ctl("POST", "nuvlabox", {"state": state})["id"]

    def unactivated_config(self, nb, **over):
        """A device that has nothing but its nuvlabox id (and the gateway's
        client certificate)."""
        return self.config(nuvlabox_id=nb, api_key=None, api_secret_file=None, **over)

    def events(self):
        return json.loads(self.cli("list", "--json").stdout)

    def named(self, name):
        return [e for e in self.events() if e["name"] == name]

    def flush(self):
        p = self.cli("flush", "--timeout", "20", check=False)
        self.assertEqual(p.returncode, 0, p.stderr.decode())

    def server_by_tag(self):
        out = {}
        for e in self.server_events():
            for t in e.get("tags", []):
                if t.startswith("device-event/"):
                    out[t[len("device-event/"):]] = e
        return out

    def job(self, action, **spec):
        spec.update({"action": action, "target": self.env["NUVLA_TEST_NUVLABOX_ID"]})
        return self.ctl("POST", "job", spec)

    def job_doc(self, jid):
        return self.ctl("GET", jid)


class ActivateTest(LifecycleBase):
    def test_activate_saves_the_credential_then_records_and_uploads(self):
        nb = self.new_nuvlabox()
        self.conf = self.unactivated_config(nb)
        p = self.cli("activate")
        cred_path = os.path.join(self.dir, "state", "credential.json")
        st = os.stat(cred_path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        with open(cred_path) as f:
            cred = json.load(f)
        server_nb = self.ctl("GET", "nuvlabox/" + nb.split("/")[1])["nuvlabox"]
        self.assertEqual(server_nb["state"], "ACTIVATED")
        self.assertEqual(cred["api-key"], server_nb["credential-api-key"])
        self.assertEqual(cred["nuvlabox-id"], nb)
        self.assertIn(cred["api-key"], p.stdout.decode())
        self.assertNotIn(cred["secret-key"], (p.stdout + p.stderr).decode())

        # the saved credential is the one flush logs in with
        start, done = self.named("nuvlabox.activate"), self.named("nuvlabox.activate.completed")
        self.assertEqual((len(start), len(done)), (1, 1))
        self.assertEqual(done[0]["parent"], start[0]["id"])
        self.flush()
        srv = self.server_by_tag()
        s, d = srv[start[0]["id"]], srv[done[0]["id"]]
        self.assertEqual(s["parent"], nb)
        self.assertEqual(d["parent"], s["id"])
        self.assertIn(cred["api-key"], d["content"]["linked-identifiers"])
        self.assertEqual(s["created-by"], nb)
        for out in (self.cli("status", "--json"), self.cli("export"), self.cli("doctor", check=False)):
            self.assertNotIn(cred["secret-key"].encode(), out.stdout + out.stderr)

        # a second activate is refused before anything is sent
        n_req = len(self.ctl("GET", "requests?path=/api/" + nb + "/activate")["requests"])
        p = self.cli("activate", check=False)
        self.assertEqual(p.returncode, EX_CONFIG, p.stderr)
        self.assertIn(b"already has a credential", p.stderr)
        self.assertEqual(len(self.ctl("GET", "requests?path=/api/" + nb + "/activate")["requests"]),
                         n_req)

        # forced: the server says 409; the saved credential is untouched
        before = read(cred_path)
        p = self.cli("activate", "--force", check=False)
        self.assertEqual(p.returncode, EX_NOPERM, p.stderr)
        self.assertIn(b"activated before", p.stderr)
        self.assertEqual(read(cred_path), before)
        failed = self.named("nuvlabox.activate.failed")
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["parent"], self.named("nuvlabox.activate")[1]["id"])

    def test_an_answer_without_a_readable_credential_is_kept(self):
        # Nuvla activated the device, but the answer is cut in half: it may
        # hold the only copy of the secret, so it is kept (0600), the next
        # activate is refused until an operator has looked at it
        nb = self.new_nuvlabox()
        self.conf = self.unactivated_config(nb)
        self.ctl("POST", "faults", {"kind": "garbage", "mode": "truncated-json", "count": 1,
                                    "method": "POST", "path": "/api/" + nb + "/activate"})
        p = self.cli("activate", check=False)
        self.assertEqual(p.returncode, EX_UNAVAILABLE, p.stderr)
        self.assertEqual(self.ctl("GET", "nuvlabox/" + nb.split("/")[1])["nuvlabox"]["state"],
                         "ACTIVATED")
        state = os.path.join(self.dir, "state")
        kept = [n for n in os.listdir(state) if n.startswith("activate-answer.")]
        self.assertEqual(len(kept), 1, os.listdir(state))
        path = os.path.join(state, kept[0])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertIn(b"kept in " + path.encode(), p.stderr)
        self.assertIn(b'"api-key"', read(path))   # the first half of Nuvla's answer
        self.assertFalse(os.path.exists(os.path.join(state, "credential.json")))
        failed = self.named("nuvlabox.activate.failed")
        self.assertEqual(len(failed), 1)
        self.assertIn(kept[0], failed[0]["message"])
        p = self.cli("activate", check=False)
        self.assertEqual(p.returncode, EX_CONFIG, p.stderr)
        self.assertIn(b"is the answer of an earlier activation", p.stderr)

    def test_409_explains_and_the_endpoint_down_is_69(self):
        nb = self.new_nuvlabox(state="COMMISSIONED")
        self.conf = self.unactivated_config(nb)
        p = self.cli("activate", check=False)
        self.assertEqual(p.returncode, EX_NOPERM, p.stderr)
        self.assertIn(b"Nuvla issues the credential only once", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state", "credential.json")))
        self.conf = self.unactivated_config(self.new_nuvlabox(),
                                            endpoint="https://127.0.0.1:9", ca_file=None)
        p = self.cli("activate", check=False)
        self.assertEqual(p.returncode, EX_UNAVAILABLE, p.stderr)
        self.assertEqual(len(self.named("nuvlabox.activate.failed")), 2)

    def test_no_nuvlabox_id_is_a_config_error(self):
        self.conf = self.config(nuvlabox_id=None, api_key=None, api_secret_file=None,
                                nuvlaedge_dir=os.path.join(self.dir, "none"))
        p = self.cli("activate", check=False)
        self.assertEqual(p.returncode, EX_CONFIG, p.stderr)
        self.assertIn(b"no nuvlabox id", p.stderr)

    def test_killed_around_the_answer_never_leaves_a_half_written_credential(self):
        env = harness.agent_env()
        rng = random.Random(int(os.environ.get("NBE_SEED", "6")))
        kills = int(os.environ.get("NBE_ACTIVATE_KILLS", "24"))
        outcomes = {"none": 0, "saved": 0, "issued but not saved (SIGKILL)": 0, "leftover": 0}

        def start(nb):
            self.conf = self.unactivated_config(nb)
            # the server answers after 150 ms
            self.ctl("POST", "faults", {"kind": "delay", "delay_ms": 150, "count": 1,
                                        "path": "/api/" + nb + "/activate"})
            return subprocess.Popen([CLI, "--config", self.conf, "activate"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        # how long a whole activation takes here, now (the machine may be loaded)
        t0 = time.monotonic()
        self.assertEqual(start(self.new_nuvlabox()).wait(), 0)
        whole = time.monotonic() - t0
        os.unlink(os.path.join(self.dir, "state", "credential.json"))
        for i in range(kills):
            nb = self.new_nuvlabox()
            p = start(nb)
            cred_path = os.path.join(self.dir, "state", "credential.json")
            # kill at random around the answer and the save
            time.sleep(rng.uniform(0.3 * whole, 1.5 * whole))
            p.send_signal(signal.SIGKILL)
            p.wait()
            server_nb = self.ctl("GET", "nuvlabox/" + nb.split("/")[1])["nuvlabox"]
            state = os.path.join(self.dir, "state")
            tmps = [f for f in (os.listdir(state) if os.path.isdir(state) else [])
                    if f.startswith("credential.json.tmp.")]
            if tmps:
                # killed while writing: the next activate points at it
                outcomes["leftover"] += 1
                for t in tmps:
                    self.assertEqual(stat.S_IMODE(os.stat(os.path.join(state, t)).st_mode),
                                     0o600)
                p2 = self.cli("activate", check=False)
                self.assertEqual(p2.returncode, EX_CONFIG, p2.stderr)
                self.assertIn(b"may hold the only copy", p2.stderr)
                for t in tmps:
                    os.unlink(os.path.join(state, t))
            if os.path.exists(cred_path):
                with open(cred_path) as f:
                    cred = json.load(f)  # complete JSON, never a part
                self.assertEqual(cred["api-key"], server_nb["credential-api-key"])
                self.assertEqual(stat.S_IMODE(os.stat(cred_path).st_mode), 0o600)
                outcomes["saved"] += 1
                os.unlink(cred_path)
            elif server_nb["state"] == "ACTIVATED":
                # killed between the server's answer and the rename
                outcomes["issued but not saved (SIGKILL)"] += 1
            else:
                outcomes["none"] += 1
            # the buffer is intact whatever the moment
            self.cli("list", "--json")
        print(f"\nactivate killed {kills} times: {outcomes}", file=sys.stderr)
        # the sweep reached both sides of the save (the server activates before
        # it answers, so a kill before the rename leaves no file, never a part)
        self.assertGreater(outcomes["saved"], 0, outcomes)
        self.assertGreater(outcomes["none"] + outcomes["issued but not saved (SIGKILL)"], 0,
                           outcomes)


class CommissionTest(LifecycleBase):
    def payload(self, doc):
        path = os.path.join(self.dir, "payload.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    def commissions(self):
        nb = self.env["NUVLA_TEST_NUVLABOX_ID"].split("/")[1]
        return self.ctl("GET", "nuvlabox/" + nb)["commissions"]

    def test_allowed_keys_are_sent_and_recorded_by_name_only(self):
        doc = {"tags": ["edge"], "swarm-endpoint": "https://10.0.0.1:2376",
               "swarm-token-worker": "SWMTKN-secret-token"}
        p = self.cli("commission", "--payload", self.payload(doc))
        self.assertIn(b"commissioned", p.stdout)
        self.assertEqual(self.commissions()[-1], doc)
        start, done = self.named("nuvlabox.commission"), self.named("nuvlabox.commission.completed")
        self.assertEqual((len(start), len(done)), (1, 1))
        self.assertEqual(sorted(start[0]["details"]["keys"]), sorted(doc))
        self.assertEqual(done[0]["parent"], start[0]["id"])
        self.assertNotIn("SWMTKN", json.dumps(self.events()))
        self.flush()
        srv = self.server_by_tag()
        self.assertEqual(srv[start[0]["id"]]["parent"], self.env["NUVLA_TEST_NUVLABOX_ID"])
        self.assertEqual(srv[done[0]["id"]]["parent"], srv[start[0]["id"]]["id"])

    def test_unknown_and_replacing_keys(self):
        n = len(self.commissions())
        p = self.cli("commission", "--payload", self.payload({"tags": [], "colour": "red"}),
                     check=False)
        self.assertEqual(p.returncode, EX_DATAERR, p.stderr)
        self.assertIn(b"'colour' is not a key", p.stderr)
        for key in ("capabilities", "ssh-keys", "vpn-csr"):
            p = self.cli("commission", "--payload", self.payload({key: []}), check=False)
            self.assertEqual(p.returncode, EX_USAGE, p.stderr)
            self.assertIn(b"--replace", p.stderr)
        p = self.cli("commission", "--payload", self.payload("[1]"), check=False)
        self.assertEqual(p.returncode, EX_DATAERR, p.stderr)
        self.assertEqual(len(self.commissions()), n)
        self.assertEqual(self.events(), [])
        p = self.cli("commission", "--replace", "--payload",
                     self.payload({"capabilities": ["NUVLA_JOB_PULL"]}))
        self.assertIn(b"will replace", p.stderr)
        self.assertEqual(self.commissions()[-1], {"capabilities": ["NUVLA_JOB_PULL"]})

    def test_a_refused_commission_is_a_failed_event(self):
        nb = self.env["NUVLA_TEST_NUVLABOX_ID"].split("/")[1]
        self.ctl("PUT", "nuvlabox/" + nb, {"state": "DECOMMISSIONED"})
        p = self.cli("commission", "--payload", self.payload({"tags": ["x"]}), check=False)
        self.assertEqual(p.returncode, EX_NOPERM, p.stderr)
        failed = self.named("nuvlabox.commission.failed")
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["severity"], "high")


class JobTest(LifecycleBase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.keys = make_ssh_keys(os.path.join(cls.tmp, "keys"),
                                 (("ed25519", []), ("ecdsa", ["-b", "384"]),
                                  ("rsa", ["-b", "2048"])), "job")

    def setUp(self):
        super().setUp()
        self.ak = os.path.join(self.dir, "home", ".ssh", "authorized_keys")
        self.boot_file = os.path.join(self.dir, "boot_id")
        self.set_boot(str(uuid.uuid4()))
        self.marker = os.path.join(self.dir, "rebooted")
        script = os.path.join(self.dir, "fake-reboot")
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\necho \"$@\" >> {self.marker}\n")
        os.chmod(script, 0o755)
        self.conf = self.config(boot_id_file=self.boot_file,
                                reboot_command=script + " --now please",
                                job_flush_timeout="5s")

    def set_boot(self, b):
        with open(self.boot_file, "w") as f:
            f.write(b + "\n")

    def run_job(self, jid, code=0):
        p = self.cli("job", "run", jid, check=False)
        self.assertEqual(p.returncode, code, (p.stdout, p.stderr))
        return p

    def test_reboot_job_end_to_end(self):
        d = self.start_daemon()          # remembers this boot
        self.stop_daemon(d)
        jid = self.job("reboot_nuvlabox")["id"]
        self.run_job(jid)
        doc = self.job_doc(jid)
        self.assertEqual(doc["state"], "SUCCESS")
        self.assertEqual([e.get("state") for e in doc["_edits"]], ["RUNNING", "SUCCESS"])
        with open(self.marker) as f:
            self.assertEqual(f.read(), "--now please\n")
        req = self.named("nuvlabox.reboot")
        self.assertEqual(len(req), 1)
        self.assertEqual(req[0]["job"], jid)
        self.assertEqual(req[0]["state"], "sent")   # flushed before the reboot
        # the next boot: the boot detector records the completion
        self.set_boot(str(uuid.uuid4()))
        d = self.start_daemon()
        self.assertTrue(wait_for(lambda: self.named("nuvlabox.reboot.completed") and
                                 self.status()["pending"] == 0, 15), self.daemon_log())
        self.stop_daemon(d)
        done = self.named("nuvlabox.reboot.completed")[0]
        srv = self.server_by_tag()
        self.assertEqual(srv[req[0]["id"]]["parent"], jid)
        self.assertEqual(srv[done["id"]]["parent"], srv[req[0]["id"]]["id"])
        self.assertIn(jid, srv[done["id"]]["content"]["linked-identifiers"])
        # run again: the job is final, nothing happens
        p = self.run_job(jid)
        self.assertIn(b"not run", p.stdout)
        with open(self.marker) as f:
            self.assertEqual(f.read().count("please"), 1)

    def test_a_reboot_job_canceled_while_running_does_not_reboot(self):
        jid = self.job("reboot_nuvlabox")["id"]
        # RUNNING is accepted, its answer comes late; the owner cancels meanwhile
        self.ctl("POST", "faults", {"kind": "delay", "delay_ms": 1500, "when": "after",
                                    "count": 1, "method": "PUT", "path": "/api/" + jid})
        env = harness.agent_env()
        p = subprocess.Popen([CLI, "--config", self.conf, "job", "run", jid], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertTrue(wait_for(lambda: self.job_doc(jid)["state"] == "RUNNING", 5))
        self.ctl("PUT", jid, {"state": "CANCELED"})
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        self.assertIn(b"not rebooting", out)
        self.assertFalse(os.path.exists(self.marker))
        self.assertEqual(self.job_doc(jid)["state"], "CANCELED")
        self.assertEqual(len(self.named("nuvlabox.reboot.failed")), 1)

    def test_a_failing_reboot_command_is_a_failed_event(self):
        self.conf = self.config(boot_id_file=self.boot_file, reboot_command="/bin/false",
                                job_flush_timeout="0s")
        jid = self.job("reboot_nuvlabox")["id"]
        self.run_job(jid, 71)
        failed = self.named("nuvlabox.reboot.failed")
        self.assertEqual(len(failed), 1)
        # linked by the job to the latest request of that job
        self.assertEqual(failed[0]["parent_local"], self.named("nuvlabox.reboot")[0]["id"])

    def write_ak(self, text, mode=0o640, owner=(65534, 65534)):
        os.makedirs(os.path.dirname(self.ak), exist_ok=True)
        with open(self.ak, "w") as f:
            f.write(text)
        os.chmod(self.ak, mode)
        if os.geteuid() == 0:
            os.chown(self.ak, *owner)

    def test_ssh_key_jobs_keep_every_other_line_the_owner_and_the_mode(self):
        ed, ec, rsa = self.keys["ed25519"], self.keys["ecdsa"], self.keys["rsa"]
        original = ("# managed by hand\n\n"
                    f'from="10.0.0.0/8",no-pty {rsa[0]}\n'
                    "not a key at all\n"
                    "   # indented comment")            # no trailing newline
        self.write_ak(original)
        before = os.stat(self.ak)
        d = self.start_daemon()
        add = self.job("nuvlabox_add_ssh_key", **{"public-key": ed[0]})
        self.run_job(add["id"])
        with open(self.ak) as f:
            text = f.read()
        self.assertEqual(text, original + "\n" + ed[0] + "\n")
        after = os.stat(self.ak)
        self.assertEqual((stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid),
                         (stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid))
        self.assertEqual(self.job_doc(add["id"])["state"], "SUCCESS")
        nb = self.env["NUVLA_TEST_NUVLABOX_ID"].split("/")[1]
        self.assertEqual(self.ctl("GET", "nuvlabox/" + nb)["commissions"][-1],
                         {"ssh-keys": [add["credential"]]})
        # the key watcher records the completion, linked to the job's request
        self.assertTrue(wait_for(lambda: self.named("nuvlabox.add-ssh-key.completed"), 10),
                        self.daemon_log())
        req = self.named("nuvlabox.add-ssh-key")[0]
        done = self.named("nuvlabox.add-ssh-key.completed")[0]
        self.assertEqual(req["details"]["fingerprint"], ed[1])
        self.assertEqual((done["parent_local"], done["job"]), (req["id"], add["id"]))
        self.assertNotIn(ed[0].split()[1], json.dumps(self.events()))

        # the same key again (an ecdsa job first): no duplicate line
        add2 = self.job("nuvlabox_add_ssh_key", **{"public-key": ec[0]})
        self.run_job(add2["id"])
        again = self.job("nuvlabox_add_ssh_key", **{"public-key": ed[0]})
        self.run_job(again["id"])
        with open(self.ak) as f:
            text = f.read()
        self.assertEqual(text, original + "\n" + ed[0] + "\n" + ec[0] + "\n")
        self.assertEqual(self.job_doc(again["id"])["state"], "SUCCESS")
        self.assertIn("already in", self.job_doc(again["id"])["status-message"])

        # revoked: that line goes, everything else stays
        rev = self.job("nuvlabox_revoke_ssh_key", credential=add["credential"])
        # get-context returns the credential named by the job
        self.run_job(rev["id"])
        with open(self.ak) as f:
            self.assertEqual(f.read(), original + "\n" + ec[0] + "\n")
        after = os.stat(self.ak)
        self.assertEqual((stat.S_IMODE(after.st_mode), after.st_uid), (0o640, before.st_uid))
        self.assertEqual(self.ctl("GET", "nuvlabox/" + nb)["commissions"][-1],
                         {"ssh-keys": [add2["credential"], again["credential"]]})
        self.assertTrue(wait_for(lambda: self.named("nuvlabox.revoke-ssh-key.completed"), 10))
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 15))
        self.stop_daemon(d)
        # every request was linked to its job on the server
        srv = self.server_by_tag()
        for e in self.named("nuvlabox.add-ssh-key") + self.named("nuvlabox.revoke-ssh-key"):
            self.assertEqual(srv[e["id"]]["parent"], e["job"])

    def test_a_key_sshd_would_not_accept_fails_the_job(self):
        self.write_ak("# only a comment\n")
        for bad in ("ssh-rsa not-base64!!! x", "ssh-ed25519 AAAA\nssh-rsa AAAA injected",
                    'command="/bin/sh" ' + self.keys["ed25519"][0]):
            jid = self.job("nuvlabox_add_ssh_key", **{"public-key": bad})["id"]
            self.run_job(jid, EX_DATAERR)
            doc = self.job_doc(jid)
            self.assertEqual((doc["state"], doc["return-code"]), ("FAILED", 1))
        with open(self.ak) as f:
            self.assertEqual(f.read(), "# only a comment\n")
        self.assertEqual(len(self.named("nuvlabox.add-ssh-key.failed")), 3)

    def test_unsupported_final_canceled_and_made_final_meanwhile(self):
        jid = self.job("nuvlabox_update")["id"]
        self.run_job(jid, EX_UNAVAILABLE)
        doc = self.job_doc(jid)
        self.assertEqual(doc["state"], "FAILED")
        self.assertIn("not supported by this agent", doc["status-message"])
        for state in ("CANCELED", "SUCCESS"):
            jid = self.job("reboot_nuvlabox", state=state)["id"]
            p = self.run_job(jid)
            self.assertIn(b"not run", p.stdout)
            self.assertEqual(self.job_doc(jid)["_edits"], [])
        # canceled between the fetch and RUNNING: the server's 409
        jid = self.job("reboot_nuvlabox")["id"]
        self.ctl("POST", "faults", {"kind": "status", "status": 409, "count": 1, "method": "PUT",
                                    "path": "/api/" + jid,
                                    "message": "edit is not allowed in final state"})
        p = self.run_job(jid)
        self.assertIn(b"final meanwhile", p.stdout)
        self.assertFalse(os.path.exists(self.marker))
        self.assertEqual(self.events(), [])
        p = self.cli("job", "run", "event/1234", check=False)
        self.assertEqual(p.returncode, EX_USAGE)

    def test_another_devices_job_is_not_touched(self):
        # a user's api key sees the jobs of every device of the user: a job
        # whose target-resource is another nuvlabox is refused before anything
        # (no RUNNING, no reboot, no event), even when this device may edit it
        me = self.env["NUVLA_TEST_NUVLABOX_ID"]
        other = self.new_nuvlabox("COMMISSIONED")
        acl = {"owners": ["group/nuvla-admin"], "view-data": [me, other],
               "edit-data": [me, other], "manage": [me, other]}
        jid = self.ctl("POST", "job", {"action": "reboot_nuvlabox", "target": other,
                                       "acl": acl})["id"]
        p = self.run_job(jid, EX_DATAERR)
        self.assertIn(("is for %s, not for this device (%s)" % (other, me)).encode(), p.stderr)
        self.assertEqual(self.job_doc(jid)["_edits"], [])
        self.assertEqual(self.job_doc(jid)["state"], "QUEUED")
        self.assertFalse(os.path.exists(self.marker))
        self.assertEqual(self.events(), [])


class JobPullTest(JobTest):
    """The daemon's optional job pulling; inherits the keys and the fake reboot."""

    def pull_config(self, **over):
        return self.config(boot_id_file=self.boot_file, job_pull="true",
                           heartbeat_interval="1s", **over)

    def requests(self, path):
        return [r for r in self.ctl("GET", "requests")["requests"]
                if r["path"] == path or r["path"].startswith(path + "/")]

    def heartbeats(self):
        nb = self.env["NUVLA_TEST_NUVLABOX_ID"].split("/")[1]
        return self.ctl("GET", "nuvlabox/" + nb)["heartbeats"]

    # the JobTest tests run once, in JobTest
    test_reboot_job_end_to_end = None
    test_a_failing_reboot_command_is_a_failed_event = None
    test_a_reboot_job_canceled_while_running_does_not_reboot = None
    test_ssh_key_jobs_keep_every_other_line_the_owner_and_the_mode = None
    test_a_key_sshd_would_not_accept_fails_the_job = None
    test_unsupported_final_canceled_and_made_final_meanwhile = None
    test_another_devices_job_is_not_touched = None

    def test_off_by_default(self):
        # a heartbeat interval that would show within the wait, if pulling were on
        self.conf = self.config(boot_id_file=self.boot_file, heartbeat_interval="1s")
        d = self.start_daemon()
        time.sleep(2.5)
        self.stop_daemon(d)
        self.assertEqual(self.heartbeats(), 0)

    def test_each_job_runs_once_and_one_at_a_time(self):
        self.write_ak("# keys\n")
        self.conf = self.pull_config()
        a = self.job("nuvlabox_add_ssh_key", **{"public-key": self.keys["ed25519"][0]})
        b = self.job("nuvlabox_add_ssh_key", **{"public-key": self.keys["ecdsa"][0]})
        # a third job whose runs fail for a while (the server answers 503)
        flaky = self.job("nuvlabox_add_ssh_key", **{"public-key": self.keys["rsa"][0]})
        fault = self.ctl("POST", "faults", {"kind": "status", "status": 503, "count": None,
                                            "method": "PUT", "path": "/api/" + flaky["id"]})
        d = self.start_daemon()
        ok = wait_for(lambda: all(self.job_doc(j["id"])["state"] == "SUCCESS" for j in (a, b)),
                      20)
        self.assertTrue(ok, self.daemon_log())
        # the failing one is tried again on later heartbeats (exit 75: it did not run)
        self.assertTrue(wait_for(lambda: len([r for r in self.requests("/api/" + flaky["id"])
                                              if r["method"] == "GET"]) >= 2, 10),
                        self.daemon_log())
        self.assertIn("it runs again when listed", self.daemon_log())
        self.ctl("DELETE", "faults/" + str(fault["id"]))
        self.assertTrue(wait_for(lambda: self.job_doc(flaky["id"])["state"] == "SUCCESS", 15),
                        self.daemon_log())
        # more heartbeats (the server may list a finished job until its index
        # refreshes) and a restart run nothing again
        n = self.heartbeats()
        self.assertTrue(wait_for(lambda: self.heartbeats() >= n + 3, 10), self.daemon_log())
        self.stop_daemon(d)
        gets = {j["id"]: len([r for r in self.requests("/api/" + j["id"]) if r["method"] == "GET"])
                for j in (a, b, flaky)}
        d = self.start_daemon()
        n = self.heartbeats()
        self.assertTrue(wait_for(lambda: self.heartbeats() >= n + 2, 10), self.daemon_log())
        self.stop_daemon(d)
        for j in (a, b):
            self.assertEqual(gets[j["id"]], 1, (j["id"], self.daemon_log()))
        for j in (a, b, flaky):
            again = len([r for r in self.requests("/api/" + j["id"]) if r["method"] == "GET"])
            self.assertEqual(again, gets[j["id"]], (j["id"], self.daemon_log()))
        # never two at once: cut the job requests at each run's first GET;
        # every piece belongs to one job
        reqs = sorted((r["seq"], r["method"], r["path"]) for j in (a, b, flaky)
                      for r in self.requests("/api/" + j["id"]))
        pieces = []
        for seq, method, path in reqs:
            jid = path[len("/api/"):].split("/get-context")[0]
            if method == "GET" or not pieces:
                pieces.append(set())
            pieces[-1].add(jid)
        self.assertTrue(all(len(p) == 1 for p in pieces), pieces)
        self.assertGreaterEqual(len(pieces), 4)
        with open(self.ak) as f:
            text = f.read()
        for t in ("ed25519", "ecdsa", "rsa"):
            self.assertIn(self.keys[t][0], text)
        self.assertIn("jobs: running " + a["id"], self.daemon_log())

    def test_a_reboot_job_pulled_by_the_daemon(self):
        self.conf = self.pull_config(reboot_command=os.path.join(self.dir, "fake-reboot") + " x",
                                     job_flush_timeout="5s")
        d = self.start_daemon()
        jid = self.job("reboot_nuvlabox")["id"]
        self.assertTrue(wait_for(lambda: os.path.exists(self.marker), 15), self.daemon_log())
        self.assertEqual(self.job_doc(jid)["state"], "SUCCESS")
        # the job's flush went through the daemon, which uploaded the request
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 10))
        self.stop_daemon(d)
        self.assertEqual(self.server_by_tag()[self.named("nuvlabox.reboot")[0]["id"]]["parent"],
                         jid)


if __name__ == "__main__":
    unittest.main(verbosity=2)
