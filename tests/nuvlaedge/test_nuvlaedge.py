#!/usr/bin/env python3
"""Identity and credential from NuvlaEdge's data directory (issue 5, item 1).

irs2 values are made here with the openssl CLI (AES-256-CBC, key = SHA-256 of
"<uuid>:"), independently of the agent's mbedTLS code. NuvlaEdge's files are
never written, removed or "repaired", whatever state they are in.
"""
import hashlib
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "nuvla"))
import harness  # noqa: E402
from harness import CLI  # noqa: E402
UUID = "1c56a9b8-3e2f-4c1d-9b0a-7f6e5d4c3b2a"
KEY = "credential/5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f"
SECRET = "s3cr3t:with:colons+and/slashes="


def irs2(uuid, key, secret):
    """Encrypts "<key>:<secret>" as NuvlaEdge does, with the openssl CLI."""
    k = hashlib.sha256(f"{uuid}:".encode()).hexdigest()
    iv = os.urandom(16)
    ct = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-K", k, "-iv", iv.hex(), "-nosalt"],
                        input=f"{key}:{secret}".encode(), capture_output=True, check=True).stdout
    return base64.b64encode(iv + ct).decode()


class NuvlaEdgeFiles(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nbe-nuvlaedge-")
        self.ne = os.path.join(self.dir, "nuvlaedge")
        os.mkdir(self.ne)
        self.conf = os.path.join(self.dir, "agent.conf")
        self.write_conf()

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_conf(self, extra=""):
        with open(self.conf, "w") as f:
            f.write(f"nuvlaedge_dir = {self.ne}\nstate_dir = {self.dir}/state\n{extra}")

    def put(self, name, content):
        with open(os.path.join(self.ne, name), "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))

    def snapshot(self):
        out = {}
        for n in sorted(os.listdir(self.ne)):
            p = os.path.join(self.ne, n)
            with open(p, "rb") as f:
                out[n] = (f.read(), os.stat(p).st_mtime_ns)
        return out

    def cli(self, *args, env=None):
        e = harness.agent_env()
        e.update(env or {})
        return subprocess.run([CLI, "--config", self.conf, *args], capture_output=True, env=e,
                              timeout=60)

    def status(self, env=None):
        p = self.cli("status", "--json", env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn(SECRET.encode(), p.stdout + p.stderr)
        return json.loads(p.stdout)

    def test_irs2_session_file(self):
        self.put("nuvlaedge_session.json", {
            "endpoint": "nuvla.example.org", "insecure": True, "irs2": irs2(UUID, KEY, SECRET),
            "nuvlaedge-uuid": f"nuvlabox/{UUID}", "nuvlaedge-status-uuid": "nuvlabox-status/x"})
        before = self.snapshot()
        st = self.status()
        self.assertEqual(st["nuvlabox_id"], f"nuvlabox/{UUID}")
        self.assertEqual(st["endpoint"], "https://nuvla.example.org")
        self.assertTrue(st["identity_source"].endswith("nuvlaedge_session.json"))
        self.assertIsNone(st["identity_note"])
        self.assertEqual(self.snapshot(), before)

    def test_clear_credentials_and_a_bare_uuid(self):
        self.put("nuvlaedge_session.json", {"nuvlaedge-uuid": UUID.upper(),
                                            "credentials": {"key": KEY, "secret": SECRET}})
        st = self.status()
        self.assertEqual(st["nuvlabox_id"], f"nuvlabox/{UUID}")
        self.assertEqual(st["endpoint"], "https://nuvla.io")  # not in the file: the default

    def test_legacy_activated_and_context(self):
        self.put(".activated", {"api-key": KEY, "secret-key": SECRET})
        self.put(".context", {"id": f"nuvlabox/{UUID}", "name": "legacy"})
        st = self.status()
        self.assertEqual(st["nuvlabox_id"], f"nuvlabox/{UUID}")
        self.assertTrue(st["identity_source"].endswith((".activated", ".context")))

    def test_not_activated_yet(self):
        self.put("nuvlaedge_session.json", {"nuvlaedge-uuid": f"nuvlabox/{UUID}"})
        st = self.status()
        self.assertEqual(st["nuvlabox_id"], f"nuvlabox/{UUID}")
        self.assertEqual(self.cli("record", "x.y").returncode, 0)
        p = self.cli("flush", "--timeout", "1")
        self.assertEqual(p.returncode, 78, p.stderr)  # no credential: a configuration matter
        self.assertIn(b"no api key", p.stderr)

    def test_corrupt_partial_and_wrong_files_are_reported_and_left_alone(self):
        cases = {
            "garbage": "\x00\x01 not json",
            "truncated": '{"nuvlaedge-uuid": "nuvlabox/' + UUID,
            "array": "[1, 2]",
            "no uuid": json.dumps({"irs2": "AAAA"}),
            "bad uuid": json.dumps({"nuvlaedge-uuid": "nuvlabox/zzz"}),
            "irs2 of another device": json.dumps({
                "nuvlaedge-uuid": f"nuvlabox/{UUID}",
                "irs2": irs2("00000000-0000-4000-8000-000000000000", KEY, SECRET)}),
            "irs2 not base64": json.dumps({"nuvlaedge-uuid": f"nuvlabox/{UUID}", "irs2": "%%%"}),
            "irs2 too short": json.dumps({"nuvlaedge-uuid": f"nuvlabox/{UUID}",
                                          "irs2": base64.b64encode(b"short").decode()}),
        }
        for what, content in cases.items():
            with self.subTest(what):
                self.put("nuvlaedge_session.json", content)
                before = self.snapshot()
                st = self.status()
                self.assertIsNone(st["nuvlabox_id"])
                self.assertTrue(st["identity_note"], what)
                self.assertIn("nuvlaedge_session.json", st["identity_note"])
                # record still works, and nothing of NuvlaEdge's was touched
                p = self.cli("record", "x.y")
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(self.snapshot(), before)

    def test_nothing_there(self):
        st = self.status()
        self.assertIsNone(st["nuvlabox_id"])
        self.assertIn("no NuvlaEdge session file", st["identity_note"])

    def test_precedence(self):
        self.put("nuvlaedge_session.json", {
            "endpoint": "https://from.session", "insecure": True,
            "credentials": {"key": KEY, "secret": SECRET}, "nuvlaedge-uuid": f"nuvlabox/{UUID}"})
        other = "00000000-0000-4000-8000-00000000abcd"
        # the environment wins over NuvlaEdge's files
        st = self.status(env={"NUVLAEDGE_UUID": other, "NUVLA_ENDPOINT": "from.env"})
        self.assertEqual(st["nuvlabox_id"], f"nuvlabox/{other}")
        self.assertEqual(st["endpoint"], "https://from.env")
        # and the configuration file too
        self.write_conf("endpoint = https://from.file\ninsecure = false\n")
        st = self.status()
        self.assertEqual(st["endpoint"], "https://from.file")
        self.assertEqual(st["nuvlabox_id"], f"nuvlabox/{UUID}")


class NuvlaEdgeLogin(unittest.TestCase):
    """The credential NuvlaEdge left works against the stand-in behind mTLS."""

    def test_irs2_credential_logs_in_and_uploads(self):
        tmp, h = harness.start_for_tests("nbe-nuvlaedge-login-")
        try:
            e = h.env
            ne = os.path.join(tmp, "ne")
            os.mkdir(ne)
            uuid = e["NUVLA_TEST_NUVLABOX_ID"].split("/", 1)[1]
            with open(os.path.join(ne, "nuvlaedge_session.json"), "w") as f:
                json.dump({"endpoint": e["NUVLA_GATEWAY_URL"], "insecure": False,
                           "irs2": irs2(uuid, e["NUVLA_TEST_API_KEY"], e["NUVLA_TEST_API_SECRET"]),
                           "nuvlaedge-uuid": e["NUVLA_TEST_NUVLABOX_ID"]}, f)
            # the endpoint, the nuvlabox and its api key come from NuvlaEdge's file
            conf = harness.write_config(
                os.path.join(tmp, "agent.conf"),
                harness.device_config(e, None, endpoint=None, nuvlabox_id=None, api_key=None,
                                      nuvlaedge_dir=ne, state_dir=f"{tmp}/state"))
            env = harness.agent_env()
            run = lambda *a: subprocess.run([CLI, "--config", conf, *a], capture_output=True,  # noqa
                                            env=env, timeout=60)
            p = run("doctor")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn(b"nuvlaedge_session.json", p.stdout)
            self.assertNotIn(e["NUVLA_TEST_API_SECRET"].encode(), p.stdout + p.stderr)
            self.assertEqual(run("record", "nuvlaedge.login").returncode, 0)
            p = run("flush", "--timeout", "20")
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            harness.stop_for_tests(tmp, h)


if __name__ == "__main__":
    unittest.main(verbosity=2)
