#!/usr/bin/env python3
"""NuvlaEdge's state (issue 5, item 4): its session file appearing records the
activation, linked to the api-key credential; a change of the commissioned
payload records a commission listing the changed keys, never their values."""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
from test_daemon import DaemonBase, wait_for  # noqa: E402

CRED = "credential/5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f"


class NuvlaEdgeStateTest(DaemonBase):
    def setUp(self):
        super().setUp()
        self.ne = os.path.join(self.dir, "nuvlaedge")
        self.conf = self.config(nuvlaedge_dir=self.ne)

    def put(self, name, obj):
        os.makedirs(self.ne, exist_ok=True)
        tmp = os.path.join(self.ne, name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(obj, f)
        os.rename(tmp, os.path.join(self.ne, name))  # as NuvlaEdge writes them

    def events(self, prefix):
        evs = json.loads(self.cli("list", "--json").stdout)
        return [e for e in evs if e["name"].startswith(prefix)]

    def test_activation_and_commissions(self):
        d = self.start_daemon()  # NuvlaEdge's directory does not exist yet
        self.put("nuvlaedge_session.json", {
            "nuvlaedge-uuid": self.env["NUVLA_TEST_NUVLABOX_ID"],
            "credentials": {"key": CRED, "secret": "never-shown"}})
        self.assertTrue(wait_for(lambda: self.events("nuvlabox.activate"), 10), self.daemon_log())
        act = self.events("nuvlabox.activate")
        self.assertEqual([e["name"] for e in act], ["nuvlabox.activate.completed"])
        self.assertEqual(act[0]["parent"], CRED)
        self.assertIn(CRED, act[0]["links"])
        self.assertNotIn("never-shown", json.dumps(act))

        self.put("commission.json", {"tags": ["edge"], "capabilities": ["NUVLA_JOB_PULL"],
                                     "swarm-token-worker": "SECRET-TOKEN"})
        self.assertTrue(wait_for(lambda: self.events("nuvlabox.commission"), 10))
        com = self.events("nuvlabox.commission")[0]
        self.assertEqual(sorted(com["details"]["changed"]),
                         ["capabilities", "swarm-token-worker", "tags"])
        self.assertEqual(com["details"]["removed"], [])
        self.put("commission.json", {"tags": ["edge", "site-b"], "capabilities": ["NUVLA_JOB_PULL"]})
        self.assertTrue(wait_for(lambda: len(self.events("nuvlabox.commission")) == 2, 10))
        com = self.events("nuvlabox.commission")[1]
        self.assertEqual(com["details"]["changed"], ["tags"])
        self.assertEqual(com["details"]["removed"], ["swarm-token-worker"])
        # values are never kept or sent
        dump = self.cli("export").stdout.decode()
        self.assertNotIn("SECRET-TOKEN", dump)
        self.assertNotIn("site-b", dump)

        # delivered, the activation linked to the credential it produced
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 15), self.daemon_log())
        got = {e["name"]: e for e in self.server_events()}
        self.assertEqual(got["nuvlabox.activate.completed"]["parent"], CRED)
        self.assertIn(CRED, got["nuvlabox.activate.completed"]["content"]["linked-identifiers"])
        self.stop_daemon(d)

        # restarts report nothing again
        for _ in range(2):
            self.stop_daemon(self.start_daemon())
        self.assertEqual(len(self.events("nuvlabox.activate")), 1)
        self.assertEqual(len(self.events("nuvlabox.commission")), 2)

    def test_an_already_activated_device_is_the_baseline(self):
        self.put("nuvlaedge_session.json", {"nuvlaedge-uuid": self.env["NUVLA_TEST_NUVLABOX_ID"]})
        self.put("commission.json", {"tags": ["x"]})
        self.stop_daemon(self.start_daemon())
        self.assertEqual(self.events("nuvlabox.activate"), [])
        self.assertEqual(self.events("nuvlabox.commission"), [])

    def test_a_corrupt_payload_is_left_alone(self):
        d = self.start_daemon()
        os.makedirs(self.ne, exist_ok=True)
        with open(os.path.join(self.ne, "commission.json"), "w") as f:
            f.write("{not json")
        self.assertTrue(wait_for(lambda: "not a JSON object" in self.daemon_log(), 10))
        with open(os.path.join(self.ne, "commission.json")) as f:
            self.assertEqual(f.read(), "{not json")
        self.assertIsNone(d.poll())
        self.stop_daemon(d)


if __name__ == "__main__":
    unittest.main(verbosity=2)
