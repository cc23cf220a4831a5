#!/usr/bin/env python3
"""The boot detector (issue 5, item 2), with the boot id read from a file the
test controls: planned and unplanned reboots, repeated daemon restarts in one
boot, and a reboot across an outage, end to end through the mTLS gateway."""
import json
import os
import signal
import sys
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
from test_daemon import DaemonBase, wait_for  # noqa: E402

JOB = "job/9f0c1d2e-3f4a-4b5c-8d6e-7f8091a2b3c4"


class BootTest(DaemonBase):
    def setUp(self):
        super().setUp()
        self.boot_file = os.path.join(self.dir, "boot_id")
        self.set_boot()
        self.conf = self.config(boot_id_file=self.boot_file)

    def set_boot(self):
        self.boot = str(uuid.uuid4())
        with open(self.boot_file, "w") as f:
            f.write(self.boot + "\n")
        return self.boot

    def events(self):
        return json.loads(self.cli("list", "--json").stdout)

    def run_daemon_once(self):
        d = self.start_daemon()
        # the detector runs before the notify socket exists, so it is done
        self.stop_daemon(d)

    def reboot_events(self):
        return [e for e in self.events() if e["name"].startswith("nuvlabox.reboot.")]

    def test_log_prefixes_only_on_the_journal_stream_named(self):
        # JOURNAL_STREAM is "<device>:<inode>" of the journal's stream: the
        # daemon writes <N> priority prefixes only when it is its own stderr
        def first_log_line(journal_stream):
            path = os.path.join(self.dir, f"daemon{len(self.procs)}.log")
            open(path, "w").close()
            st = os.stat(path)
            value = journal_stream.format(dev=st.st_dev, ino=st.st_ino)
            self.stop_daemon(self.start_daemon(env_extra={"JOURNAL_STREAM": value}))
            with open(path) as f:
                lines = f.read().splitlines()
            self.assertTrue(lines, "the daemon logged nothing")
            return lines[0]

        self.assertRegex(first_log_line("{dev}:{ino}"), r"^<[0-7]>")
        for other in ("{dev}:{ino}1", "{dev}1:{ino}", "{dev}:", ":{ino}", "{dev};{ino}",
                      "{dev}:{ino}:", "{dev}:99999999999999999999999", ""):
            self.assertRegex(first_log_line(other), r"^nuvlabox-eventd: ", other)

    def test_first_start_records_nothing_and_restarts_record_once(self):
        self.run_daemon_once()
        self.assertEqual(self.reboot_events(), [])
        prev = self.boot
        self.set_boot()
        for _ in range(10):  # ten restarts in the same boot
            self.run_daemon_once()
        evs = self.reboot_events()
        self.assertEqual(len(evs), 1, evs)
        e = evs[0]
        self.assertEqual(e["name"], "nuvlabox.reboot.unplanned")
        self.assertEqual(e["severity"], "high")
        self.assertEqual(e["details"]["previous-boot-id"], prev)
        self.assertIn("boot-time", e["details"])
        # the machine did not really reboot (only the boot id changed), so this
        # boot began before the old one was last seen: no downtime is claimed
        self.assertNotIn("downtime-s", e["details"])
        self.assertNotIn("downtime-max-s", e["details"])
        self.assertEqual(e["boot_id"], self.boot)

    def test_planned_reboot_links_to_the_request_and_its_job(self):
        self.run_daemon_once()
        req = self.record("nuvlabox.reboot", "--job", JOB)
        prev = self.boot
        self.set_boot()
        self.run_daemon_once()
        evs = self.reboot_events()
        self.assertEqual([e["name"] for e in evs], ["nuvlabox.reboot.completed"])
        done = evs[0]
        self.assertEqual(done["parent_local"], req)
        self.assertEqual(done["job"], JOB)
        self.assertEqual(done["details"]["previous-boot-id"], prev)
        # a second reboot without a new request is unplanned
        self.set_boot()
        self.run_daemon_once()
        names = [e["name"] for e in self.reboot_events()]
        self.assertEqual(names, ["nuvlabox.reboot.completed", "nuvlabox.reboot.unplanned"])

    def test_request_of_an_older_boot_does_not_count(self):
        self.run_daemon_once()
        self.record("nuvlabox.reboot", "--job", JOB)
        self.set_boot()
        self.run_daemon_once()  # completes it
        self.set_boot()
        self.run_daemon_once()  # no request in the boot before this one
        self.assertEqual(self.reboot_events()[-1]["name"], "nuvlabox.reboot.unplanned")

    def test_reboot_across_an_outage(self):
        """Request recorded with its job, a new boot id, the endpoint down, then up."""
        good = self.conf
        self.run_daemon_once()
        req = self.record("nuvlabox.reboot", "--job", JOB,
                          "--message", f"reboot requested by {JOB}")
        self.set_boot()
        # the new boot comes up while the endpoint is unreachable
        self.conf = self.config(boot_id_file=self.boot_file, endpoint="https://127.0.0.1:9",
                                retry_base="200ms", retry_cap="1s")
        d = self.start_daemon()
        self.assertTrue(wait_for(lambda: self.status()["upload_state"] in ("offline", "backoff"),
                                 10), self.daemon_log())
        self.assertEqual(self.status()["pending"], 2)
        # the endpoint comes back (the configuration points at the gateway again)
        self.conf = self.config(boot_id_file=self.boot_file, retry_base="200ms",
                                retry_cap="1s")
        d.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: self.status()["pending"] == 0, 20), self.daemon_log())
        self.stop_daemon(d)
        evs = {e["name"]: e for e in self.server_events()}
        request, done = evs["nuvlabox.reboot"], evs["nuvlabox.reboot.completed"]
        self.assertLess(request["content"]["resource"]["content"]["seq"],
                        done["content"]["resource"]["content"]["seq"])
        self.assertEqual(request["parent"], JOB)
        self.assertEqual(done["parent"], request["id"])
        self.assertEqual(done["content"]["state"], "completed")
        self.assertTrue(done["success"])
        owner = self.env["NUVLA_TEST_OWNER_ID"]
        for e in (request, done):
            self.assertIn(JOB, e["content"]["linked-identifiers"])
            self.assertIn(owner, e["acl"]["view-data"])
        # stored in capture order
        order = [e["name"] for e in self.server_events()]
        self.assertLess(order.index("nuvlabox.reboot"), order.index("nuvlabox.reboot.completed"))
        self.assertEqual(good, good)


if __name__ == "__main__":
    unittest.main(verbosity=2)
