#!/usr/bin/env python3
"""Decommission (issue 5, item 5): the stand-in switches the nuvlabox to
DECOMMISSIONING, then deletes its credential. Everything recorded before the
credential vanished reaches the server, nuvlabox.decommission included; after
that the daemon stops retrying, keeps the events, and says so."""
import json
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
from test_daemon import DaemonBase, wait_for  # noqa: E402


class DecommissionTest(DaemonBase):
    def setUp(self):
        super().setUp()
        self.conf = self.config(state_check_interval="1s", retry_base="200ms", retry_cap="1s")
        self.uuid = self.env["NUVLA_TEST_NUVLABOX_ID"].split("/", 1)[1]
        self.cred = self.env["NUVLA_TEST_API_KEY"].split("/", 1)[1]

    def tearDown(self):
        super().tearDown()
        # the next test needs the credential and the state back
        self.ctl("POST", "reset", {"seed": True})

    def names_on_server(self):
        return [e["name"] for e in self.server_events()]

    def test_decommissioning_then_the_credential_goes(self):
        d = self.start_daemon()
        before = [self.record("before.decommission", "--detail", f"i={i}") for i in range(3)]
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 10), self.daemon_log())

        self.ctl("PUT", f"nuvlabox/{self.uuid}", {"state": "DECOMMISSIONING"})
        self.assertTrue(wait_for(lambda: "nuvlabox.decommission" in self.names_on_server(), 10),
                        self.daemon_log())
        ev = [e for e in self.server_events() if e["name"] == "nuvlabox.decommission"][0]
        self.assertEqual(ev["severity"], "high")
        self.assertEqual(ev["content"]["resource"]["content"]["server-state"], "DECOMMISSIONING")
        last = self.record("still.before")
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 10))

        # the decommission job deletes the device's credential
        self.ctl("DELETE", f"credential/{self.cred}", revoke_sessions=1)
        after = self.record("after.credential")
        self.assertTrue(wait_for(lambda: self.status()["decommissioned"], 15), self.daemon_log())
        st = self.status()
        self.assertEqual(st["upload_state"], "auth-failed")
        self.assertEqual(st["pending"], 1)
        # everything recorded before the credential vanished is on the server, once
        tags = self.tags()
        for i in before + [last]:
            self.assertEqual(tags.count("device-event/" + i), 1)
        self.assertNotIn("device-event/" + after, tags)
        # it stops retrying (no login attempts while idle), the events stay, export says so
        n0 = len([r for r in self.ctl("GET", "requests")["requests"]
                  if r["path"] == "/api/session"])
        time.sleep(3)
        n1 = len([r for r in self.ctl("GET", "requests")["requests"]
                  if r["path"] == "/api/session"])
        self.assertEqual(n0, n1)
        exported = [json.loads(l) for l in self.cli("export").stdout.decode().splitlines()]
        pend = [e for e in exported if e["state"] == "pending"]
        self.assertEqual([e["id"] for e in pend], [after])
        self.assertTrue(pend[0]["undeliverable"])
        self.assertIn(b"not sent", self.cli("status").stdout)
        self.stop_daemon(d)

    def test_login_refused_after_commissioning(self):
        d = self.start_daemon()
        self.record("first")
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 10))
        self.ctl("DELETE", f"credential/{self.cred}", revoke_sessions=1)
        self.record("second")
        self.assertTrue(wait_for(lambda: self.status()["decommissioned"], 15), self.daemon_log())
        evs = json.loads(self.cli("list", "--json").stdout)
        dec = [e for e in evs if e["name"] == "nuvlabox.decommission"]
        self.assertEqual(len(dec), 1)
        self.assertIn("refused", dec[0]["details"]["reason"])
        self.stop_daemon(d)


if __name__ == "__main__":
    unittest.main(verbosity=2)
