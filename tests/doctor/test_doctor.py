#!/usr/bin/env python3
"""doctor and keygen against the Nuvla stand-in behind the nginx mTLS gateway.

Each doctor check prints one line; a failure exits 69 and names what failed.
keygen's key and CSR are checked with OpenSSL, independently of mbedTLS.
"""
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "nuvla"))
import harness  # noqa: E402
from harness import CLI  # noqa: E402


class DoctorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.h = harness.start_for_tests("nbe-doctor-")
        cls.env = cls.h.env

    @classmethod
    def tearDownClass(cls):
        harness.stop_for_tests(cls.tmp, cls.h)

    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=self.tmp)
        self.secret = harness.write_secret(os.path.join(self.dir, "secret"), self.env)

    def config(self, **over):
        keys = harness.device_config(self.env, self.secret,
                                     state_dir=os.path.join(self.dir, "state"),
                                     connect_timeout="2s", request_timeout="5s")
        keys.update(over)
        return harness.write_config(os.path.join(self.dir, "agent.conf"), keys)

    def run_cli(self, *args, config=None):
        env = harness.agent_env()
        p = subprocess.run([CLI, "--config", config or self.config(), *args],
                           capture_output=True, env=env, timeout=60)
        out = p.stdout.decode() + p.stderr.decode()
        # never a secret, whatever the outcome
        self.assertNotIn(self.env["NUVLA_TEST_API_SECRET"], out)
        return p.returncode, out

    def verdict(self, out, what):
        for line in out.splitlines():
            if line[6:18].strip() == what.strip():
                return line[:4].strip()
        self.fail(f"no '{what}' line in:\n{out}")

    def test_all_good(self):
        rc, out = self.run_cli("doctor")
        self.assertEqual(rc, 0, out)
        for what in ("config", "buffer", "identity", "credential", "ca_file", "client cert",
                     "client key", "dns", "tcp", "tls ", "login"):
            self.assertEqual(self.verdict(out, what), "ok", out)
        self.assertRegex(out, r"tls library .*(OpenSSL|mbedTLS)")
        self.assertIn("0 failures", out)

    def test_expired_client_cert_is_a_warning_and_the_gateway_refuses(self):
        rc, out = self.run_cli("doctor", config=self.config(
            client_cert=self.env["NUVLA_TEST_CLIENT_EXPIRED_CERT"],
            client_key=self.env["NUVLA_TEST_CLIENT_EXPIRED_KEY"]))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "client cert"), "warn")
        self.assertIn("expired", out)
        self.assertEqual(self.verdict(out, "gateway"), "FAIL")
        self.assertIn("SSL certificate error", out)

    def test_no_client_cert(self):
        rc, out = self.run_cli("doctor", config=self.config(client_cert=None, client_key=None))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "gateway"), "FAIL")
        self.assertIn("No required SSL certificate", out)

    def test_server_from_another_ca(self):
        rc, out = self.run_cli("doctor", config=self.config(ca_file=self.env["NUVLA_TEST_OTHER_CA"]))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "tls "), "FAIL")

    def test_wrong_host_name(self):
        rc, out = self.run_cli("doctor", config=self.config(
            endpoint=self.env["NUVLA_GATEWAY_WRONGHOST_URL"]))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "tls "), "FAIL")

    def test_endpoint_down(self):
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        rc, out = self.run_cli("doctor", config=self.config(endpoint=f"https://127.0.0.1:{port}"))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "tcp"), "FAIL")

    def test_unknown_host(self):
        rc, out = self.run_cli("doctor", config=self.config(endpoint="https://nuvla.invalid"))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "dns"), "FAIL")

    def test_wrong_secret(self):
        with open(self.secret, "w") as f:
            f.write("not-the-secret\n")
        rc, out = self.run_cli("doctor")
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "login"), "FAIL")
        self.assertIn("403", out)

    def test_key_readable_by_others_is_refused(self):
        key = os.path.join(self.dir, "loose.key")
        shutil.copy(self.env["NUVLA_TEST_CLIENT_KEY"], key)
        os.chmod(key, 0o644)
        rc, out = self.run_cli("doctor", config=self.config(client_key=key))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "client key"), "FAIL")
        self.assertIn("readable by group or others", out)
        # flush refuses it as a configuration error
        rc, out = self.run_cli("flush", "--timeout", "2", config=self.config(client_key=key))
        self.assertEqual(rc, 78, out)

    def test_secret_file_readable_by_others_is_refused(self):
        os.chmod(self.secret, 0o640)
        rc, out = self.run_cli("flush", "--timeout", "2")
        self.assertEqual(rc, 78, out)
        self.assertIn("readable by group or others", out)

    def test_key_of_another_certificate(self):
        rc, out = self.run_cli("doctor", config=self.config(
            client_key=self.env["NUVLA_TEST_CLIENT_OTHER_CA_KEY"]))
        self.assertEqual(rc, 69, out)
        self.assertEqual(self.verdict(out, "client key"), "FAIL")
        self.assertIn("does not belong", out)


class KeygenTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nbe-keygen-")
        self.conf = os.path.join(self.dir, "empty.conf")
        open(self.conf, "w").close()

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def run_cli(self, *args):
        return subprocess.run([CLI, "--config", self.conf, *args],
                              capture_output=True, timeout=60)

    def test_key_and_csr(self):
        out = os.path.join(self.dir, "keys")
        p = self.run_cli("keygen", "--out", out, "--subject", "CN=nuvlabox/1c56a9b8-3e2f-4c1d-9b0a-7f6e5d4c3b2a")
        self.assertEqual(p.returncode, 0, p.stderr)
        key, csr = os.path.join(out, "device.key"), os.path.join(out, "device.csr")
        self.assertEqual(p.stdout.decode().split(), [key, csr])
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        v = subprocess.run(["openssl", "req", "-in", csr, "-noout", "-verify", "-subject"],
                           capture_output=True, text=True)
        self.assertEqual(v.returncode, 0, v.stderr)
        self.assertIn("nuvlabox/1c56a9b8-3e2f-4c1d-9b0a-7f6e5d4c3b2a", v.stdout)
        k = subprocess.run(["openssl", "pkey", "-in", key, "-noout", "-text"],
                           capture_output=True, text=True)
        self.assertIn("P-256", k.stdout)
        # the CSR's public key is the key's
        pub_csr = subprocess.run(["openssl", "req", "-in", csr, "-noout", "-pubkey"],
                                 capture_output=True, text=True).stdout
        pub_key = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"],
                                 capture_output=True, text=True).stdout
        self.assertEqual(pub_csr, pub_key)

    def test_never_overwrites_a_key(self):
        out = os.path.join(self.dir, "keys")
        self.assertEqual(self.run_cli("keygen", "--out", out, "--subject", "CN=a").returncode, 0)
        before = open(os.path.join(out, "device.key")).read()
        p = self.run_cli("keygen", "--out", out, "--subject", "CN=b")
        self.assertEqual(p.returncode, 73, p.stderr)
        self.assertIn(b"not overwriting", p.stderr)
        self.assertEqual(open(os.path.join(out, "device.key")).read(), before)

    def test_bad_usage(self):
        self.assertEqual(self.run_cli("keygen", "--subject", "CN=a").returncode, 64)
        self.assertEqual(self.run_cli("keygen", "--out", self.dir, "--subject", "bogus").returncode, 64)
        p = self.run_cli("keygen", "--out", self.dir)  # no subject and no nuvlabox_id
        self.assertEqual(p.returncode, 64, p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
