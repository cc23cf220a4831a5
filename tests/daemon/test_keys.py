#!/usr/bin/env python3
"""The SSH key watcher (issue 5, item 3): fingerprints exactly as ssh-keygen -l
prints them, for keys generated here; add, remove, atomic replacement, the
file deleted and re-created, the directory created later; a producer's
request linked; nothing reported twice across restarts."""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
from test_daemon import DaemonBase, make_ssh_keys, wait_for  # noqa: E402

JOB = "job/2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d"


class KeysTest(DaemonBase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.keys = make_ssh_keys(os.path.join(cls.tmp, "keys"),
                                 (("ed25519", []), ("rsa", ["-b", "2048"]),
                                  ("ecdsa", ["-b", "256"])), "test")

    def setUp(self):
        super().setUp()
        self.ak = os.path.join(self.dir, "home", ".ssh", "authorized_keys")

    def write(self, *lines, atomic=False):
        os.makedirs(os.path.dirname(self.ak), exist_ok=True)
        text = "".join(l + "\n" for l in lines)
        if atomic:
            tmp = self.ak + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.rename(tmp, self.ak)
        else:
            with open(self.ak, "w") as f:
                f.write(text)

    def key_events(self):
        evs = json.loads(self.cli("list", "--json").stdout)
        return [e for e in evs if "ssh-key" in e["name"] and e["name"].endswith(".completed")]

    def wait_events(self, n):
        self.assertTrue(wait_for(lambda: len(self.key_events()) >= n, 10),
                        (self.key_events(), self.daemon_log()))
        return self.key_events()

    def test_the_life_of_authorized_keys(self):
        ed, rsa, ec = self.keys["ed25519"], self.keys["rsa"], self.keys["ecdsa"]
        # the directory does not exist yet when the daemon starts
        d = self.start_daemon()
        self.write(ed[0])
        evs = self.wait_events(1)
        self.assertEqual(evs[0]["name"], "nuvlabox.add-ssh-key.completed")
        self.assertEqual(evs[0]["details"]["fingerprint"], ed[1])
        self.assertEqual(evs[0]["details"]["type"], "ssh-ed25519")
        self.assertEqual(evs[0]["details"]["comment"], "ed25519@test")
        # the key itself never appears
        self.assertNotIn(ed[0].split()[1], json.dumps(evs))

        # atomic replacement adding two keys, one behind options
        self.write(ed[0], 'from="10.0.0.0/8",no-pty ' + rsa[0], "# a comment", "garbage line",
                   ec[0], atomic=True)
        evs = self.wait_events(3)
        self.assertEqual({e["details"]["fingerprint"] for e in evs[1:]}, {rsa[1], ec[1]})

        # a producer recorded the revocation request with the fingerprint
        req = self.record("nuvlabox.revoke-ssh-key", "--job", JOB, "--detail",
                          "fingerprint=" + rsa[1])
        self.write(ed[0], ec[0])
        evs = self.wait_events(4)
        rev = evs[3]
        self.assertEqual(rev["name"], "nuvlabox.revoke-ssh-key.completed")
        self.assertEqual(rev["details"]["fingerprint"], rsa[1])
        self.assertEqual(rev["parent_local"], req)
        self.assertEqual(rev["job"], JOB)

        # deleted: both remaining keys revoked; re-created: added again
        os.unlink(self.ak)
        evs = self.wait_events(6)
        self.assertEqual([e["name"] for e in evs[4:]], ["nuvlabox.revoke-ssh-key.completed"] * 2)
        self.write(ec[0])
        evs = self.wait_events(7)
        self.assertEqual(evs[6]["details"]["fingerprint"], ec[1])
        self.stop_daemon(d)

        # a change while the daemon is down is reported at its start, once
        self.write(ec[0], ed[0])
        for _ in range(3):
            d = self.start_daemon()
            self.stop_daemon(d)
        evs = self.key_events()
        self.assertEqual(len(evs), 8)
        self.assertEqual(evs[7]["details"]["fingerprint"], ed[1])

    def test_fingerprints_are_ssh_keygens(self):
        d = self.start_daemon()
        self.write(*(k[0] for k in self.keys.values()))
        evs = self.wait_events(3)
        self.assertEqual(sorted(e["details"]["fingerprint"] for e in evs),
                         sorted(k[1] for k in self.keys.values()))
        self.stop_daemon(d)

    def test_existing_keys_are_the_baseline(self):
        self.write(self.keys["rsa"][0])
        d = self.start_daemon()
        self.stop_daemon(d)
        self.assertEqual(self.key_events(), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
