#!/usr/bin/env python3
"""Prints the events a stand-in stored (its /_control/events answer, on stdin)
as a tree: job -> device event -> completion, with capture-to-store delays.
Used by the README's first command."""
import json
import sys
from datetime import datetime


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


def main():
    events = json.load(sys.stdin)["events"]
    by_id = {e["id"]: e for e in events}
    children = {}
    for e in events:
        children.setdefault(e.get("parent"), []).append(e)

    def line(e, indent):
        c = e["content"]["resource"].get("content", {})
        captured, created = ts(e.get("timestamp")), ts(e.get("created"))
        delay = f"{(created - captured).total_seconds():6.1f} s after capture" \
            if captured and created else ""
        ok = {True: "ok ", False: "FAILED "}.get(e.get("success"), "")
        print(f"{'  ' * indent}{e['name']:<34} {ok}{e['id']}  seq {c.get('seq')}  {delay}")
        for ch in children.get(e["id"], []):
            line(ch, indent + 1)

    roots = [e for e in events if e.get("parent") not in by_id]
    jobs = {}
    for e in roots:
        jobs.setdefault(e.get("parent") if (e.get("parent") or "").startswith("job/") else None,
                        []).append(e)
    for job, evs in jobs.items():
        print(job or "(no job: activate and commission link to the nuvlabox)")
        for e in evs:
            line(e, 1)
    linked = sum(1 for e in events if e.get("parent") in by_id)
    owners = {p for e in events for p in e.get("acl", {}).get("view-data", []) if p.startswith("user/")}
    print(f"\n{len(events)} events stored, {linked} linked to their device-side parent, "
          f"visible to {', '.join(sorted(owners)) or 'nobody else'}")


if __name__ == "__main__":
    main()
