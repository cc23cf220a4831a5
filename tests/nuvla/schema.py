#!/usr/bin/env python3
"""Closed-schema validator for Nuvla `POST /api/event` bodies.

Mirrors the server's spec (`resources/spec/event.cljc` with the common
attributes of `spec/common.cljc`, see NUVLA-CONTRACT.md section 3): a closed map
at the top level, inside `content`, `content.resource`, `acl` and `authn-info`;
any key not listed there makes the real server answer 400.

Two modes:

* default (what the real server accepts; the stand-in uses it): the request
  body may also carry the common attributes the server manages (`id`,
  `created`, ...); the server overwrites most of them, but they are still
  inside the closed map. `timestamp` is optional (the server fills it).
* strict (what OUR agent may send, DESIGN.md section 3 "Wire format"):
  `timestamp` required with exactly three fraction digits and `Z`,
  `category` must be `user`, and no server-managed keys and no `authn-info`.

API:    validate_event(body, strict=False) -> list[str]   (empty = valid)
        parse_timestamp(s) -> float | None                 (epoch seconds)
CLI:    python3 schema.py [--strict] FILE...               ('-' = stdin)
        Each FILE holds one JSON body, a JSON array of bodies, or JSON Lines.
        Prints one line per problem; exit 0 when all are valid, 1 otherwise.

Standard library only (runs on Debian 12's python3.11).
"""

import argparse
import calendar
import json
import re
import sys

CATEGORIES = ("add", "edit", "delete", "action", "state", "alarm", "email", "user")
SEVERITIES = ("critical", "high", "medium", "low")

# core.cljc resource-href-regex and acl-common principal-regex, as full matches.
RESOURCE_HREF_RE = re.compile(r"[a-z]([a-z-]*[a-z])?(/[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?)?")
PRINCIPAL_RE = re.compile(r"[a-z-]+/[a-z0-9-]+")

# util/time.clj iso8601-formatter-input: date, 'T', hour, optional :mm, optional
# :ss, a fraction of 0..3 digits only after seconds, then a zone ('Z' or an
# offset). Java's parser would take a bare '.' and some region ids as well; we
# reject those (stricter is safe: the stand-in must be no friendlier).
_TS_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?)?"
    r"(Z|[+-]\d{2}:\d{2}(?::\d{2})?)")
# What our agent sends: exactly milliseconds and Z.
_TS_STRICT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

ACL_RIGHTS = ("owners", "view-meta", "view-data", "view-acl",
              "edit-meta", "edit-data", "edit-acl", "manage", "delete")

# Keys a client may put in the body (event spec + the settable common attrs).
CLIENT_KEYS = frozenset(("timestamp", "category", "severity", "content", "name",
                         "description", "tags", "parent", "success", "acl", "authn-info"))
# Common attributes owned by the server. Allowed by the real schema (the server
# strips or overwrites most of them before validating) but never sent by us.
SERVER_KEYS = frozenset(("id", "resource-type", "created", "updated", "created-by",
                         "updated-by", "resource-metadata", "operations"))
CONTENT_KEYS = frozenset(("resource", "linked-identifiers", "state"))
RESOURCE_KEYS = frozenset(("href", "content"))
AUTHN_INFO_KEYS = frozenset(("user-id", "active-claim", "claims"))


def parse_timestamp(s):
    """Returns the epoch seconds of a timestamp the server accepts, else None."""
    if not isinstance(s, str):
        return None
    m = _TS_RE.fullmatch(s)
    if not m:
        return None
    year, month, day, hour = (int(m.group(i)) for i in (1, 2, 3, 4))
    minute = int(m.group(5) or 0)
    second = int(m.group(6) or 0)
    frac = m.group(7)
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour <= 23 and minute <= 59 and second <= 59):
        return None
    zone = m.group(8)
    offset = 0
    if zone != "Z":
        parts = [int(x) for x in zone[1:].split(":")]
        if parts[0] > 18 or parts[1] > 59 or (len(parts) == 3 and parts[2] > 59):
            return None
        offset = parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) == 3 else 0)
        if zone[0] == "-":
            offset = -offset
    epoch = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    if frac:
        epoch += int(frac.ljust(3, "0")) / 1000.0
    return epoch


def is_timestamp(s, strict=False):
    """True when s is a timestamp the server accepts (strict: our wire format)."""
    if strict and not (isinstance(s, str) and _TS_STRICT_RE.fullmatch(s)):
        return False
    return parse_timestamp(s) is not None


def _nonblank(v):
    return isinstance(v, str) and v.strip() != ""


def _closed(obj, allowed, path, errors):
    """Reports every key of obj outside `allowed`, sorted for stable output."""
    for k in sorted(k for k in obj if k not in allowed):
        errors.append("%s: unknown key (closed map)" % _join(path, k))


def _join(path, key):
    return key if not path else "%s.%s" % (path, key)


def _string_list(v, path, errors, distinct=False, item_check=None, item_desc="a string"):
    if not isinstance(v, list):
        errors.append("%s: must be an array" % path)
        return
    seen = set()
    for i, item in enumerate(v):
        ok = isinstance(item, str) and (item_check is None or item_check(item))
        if not ok:
            errors.append("%s[%d]: must be %s" % (path, i, item_desc))
            continue
        if distinct and item in seen:
            errors.append("%s[%d]: duplicate value %r (values must be distinct)" % (path, i, item))
        seen.add(item)


def _check_acl(acl, path, errors):
    if not isinstance(acl, dict):
        errors.append("%s: must be an object" % path)
        return
    _closed(acl, ACL_RIGHTS, path, errors)
    if "owners" not in acl:
        errors.append("%s: missing required key" % _join(path, "owners"))
    for right in ACL_RIGHTS:
        if right not in acl:
            continue
        p = _join(path, right)
        _string_list(acl[right], p, errors, distinct=True,
                     item_check=lambda s: PRINCIPAL_RE.fullmatch(s) is not None,
                     item_desc="a principal matching ^[a-z-]+/[a-z0-9-]+$")
        if right == "owners" and acl[right] == []:
            errors.append("%s: must hold at least one principal" % p)


def _check_content(content, path, errors):
    if not isinstance(content, dict):
        errors.append("%s: must be an object" % path)
        return
    _closed(content, CONTENT_KEYS, path, errors)
    rpath = _join(path, "resource")
    if "resource" not in content:
        errors.append("%s: missing required key" % rpath)
    else:
        res = content["resource"]
        if not isinstance(res, dict):
            errors.append("%s: must be an object" % rpath)
        else:
            _closed(res, RESOURCE_KEYS, rpath, errors)
            if "href" not in res:
                errors.append("%s: missing required key" % _join(rpath, "href"))
            elif res["href"] is not None and not _nonblank(res["href"]):
                errors.append("%s: must be a non-blank string or null" % _join(rpath, "href"))
            if "content" in res and not isinstance(res["content"], dict):
                errors.append("%s: must be a JSON object" % _join(rpath, "content"))
    if "linked-identifiers" in content:
        _string_list(content["linked-identifiers"], _join(path, "linked-identifiers"), errors)
    if "state" in content and not isinstance(content["state"], str):
        errors.append("%s: must be a string" % _join(path, "state"))


def _check_authn_info(info, path, errors):
    if not isinstance(info, dict):
        errors.append("%s: must be an object" % path)
        return
    _closed(info, AUTHN_INFO_KEYS, path, errors)
    for k in ("user-id", "active-claim"):
        if k in info and not _nonblank(info[k]):
            errors.append("%s: must be a non-blank string" % _join(path, k))
    if "claims" in info:
        _string_list(info["claims"], _join(path, "claims"), errors,
                     item_check=lambda s: s.strip() != "", item_desc="a non-blank string")


def validate_event(body, strict=False):
    """Validates one event body; returns a list of problems (empty = valid).

    Each message starts with the offending key's path (e.g. `content.foo`,
    `tags[1]`). strict=True applies our agent's wire-format rules on top.
    """
    errors = []
    if not isinstance(body, dict):
        return ["(body): must be a JSON object"]

    allowed = (CLIENT_KEYS - {"authn-info"}) if strict else (CLIENT_KEYS | SERVER_KEYS)
    _closed(body, allowed, "", errors)
    required = ("timestamp", "category", "severity", "content") if strict else \
        ("category", "severity", "content")
    for k in required:
        if k not in body:
            errors.append("%s: missing required key" % k)

    if "timestamp" in body and not is_timestamp(body["timestamp"], strict):
        errors.append("timestamp: must be %s" % (
            "YYYY-MM-DDTHH:MM:SS.mmmZ (exactly 3 fraction digits and Z)" if strict else
            "an ISO-8601 date-time with a zone and at most 3 fraction digits"))
    if "category" in body:
        if not isinstance(body["category"], str) or body["category"] not in CATEGORIES:
            errors.append("category: must be one of %s" % " ".join(CATEGORIES))
        elif strict and body["category"] != "user":
            errors.append("category: must be 'user' (the server forces it for a device)")
    if "severity" in body and (not isinstance(body["severity"], str)
                               or body["severity"] not in SEVERITIES):
        errors.append("severity: must be one of %s" % " ".join(SEVERITIES))
    if "content" in body:
        _check_content(body["content"], "content", errors)
    if "name" in body and not _nonblank(body["name"]):
        errors.append("name: must be a non-blank string")
    if "description" in body and not isinstance(body["description"], str):
        errors.append("description: must be a string")
    if "tags" in body:
        _string_list(body["tags"], "tags", errors, distinct=True)
    for k in ("parent", "id", "resource-metadata"):
        if k in body and not (isinstance(body[k], str) and RESOURCE_HREF_RE.fullmatch(body[k])):
            errors.append("%s: must be a resource href matching "
                          "^[a-z]([a-z-]*[a-z])?(/[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?)?$" % k)
    if "success" in body and not isinstance(body["success"], bool):
        errors.append("success: must be a boolean")
    if "acl" in body:
        _check_acl(body["acl"], "acl", errors)
    if "authn-info" in body:
        _check_authn_info(body["authn-info"], "authn-info", errors)
    # Server-managed attributes: type checks only (non-strict mode).
    for k in ("created", "updated"):
        if k in body and not is_timestamp(body[k]):
            errors.append("%s: must be an ISO-8601 date-time with a zone" % k)
    for k in ("resource-type", "created-by", "updated-by"):
        if k in body and not _nonblank(body[k]):
            errors.append("%s: must be a non-blank string" % k)
    if "operations" in body:
        ops = body["operations"]
        if not isinstance(ops, list) or not all(
                isinstance(o, dict) and _nonblank(o.get("rel")) and _nonblank(o.get("href"))
                for o in ops):
            errors.append("operations: must be an array of {rel, href} objects")
    return errors


# ---------------------------------------------------------------- command line

def _reject_constant(name):
    # JSON has no NaN/Infinity; the server's parser rejects them too.
    raise ValueError("invalid JSON constant %s" % name)


def loads_strict(text):
    """json.loads without the NaN/Infinity extensions Python accepts."""
    return json.loads(text, parse_constant=_reject_constant)


def iter_bodies(text):
    """Splits a file's text into (location, body-or-None, parse-error) triples.

    A whole-file JSON object is one body and a JSON array is a list of bodies;
    anything else is read as JSON Lines (blank lines skipped).
    """
    if not text.strip():
        yield "", None, "no JSON body found"
        return
    try:
        doc = loads_strict(text)
    except ValueError:
        doc = None
        whole = False
    else:
        whole = True
    if whole:
        if isinstance(doc, list):
            for i, item in enumerate(doc):
                yield "[%d]" % i, item, None
        else:
            yield "", doc, None
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield "line %d" % n, loads_strict(line), None
        except ValueError as e:
            yield "line %d" % n, None, "invalid JSON: %s" % e


def check_text(name, text, strict=False, out=sys.stdout):
    """Validates every body in text; prints problems; returns (bodies, problems)."""
    bodies = problems = 0
    for loc, body, err in iter_bodies(text):
        where = "%s:%s" % (name, loc) if loc else name
        if err:
            print("%s: %s" % (where, err), file=out)
            problems += 1
            continue
        bodies += 1
        for msg in validate_event(body, strict=strict):
            print("%s: %s" % (where, msg), file=out)
            problems += 1
    return bodies, problems


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Validate Nuvla event bodies against the closed schema.")
    ap.add_argument("--strict", action="store_true",
                    help="also apply the agent's wire-format rules (ms + Z timestamp, "
                         "category user, no server-managed keys)")
    ap.add_argument("files", nargs="+", metavar="FILE", help="JSON / JSON Lines file, or - for stdin")
    args = ap.parse_args(argv)
    total = 0
    for name in args.files:
        try:
            if name == "-":
                text = sys.stdin.buffer.read().decode("utf-8")
                name = "<stdin>"
            else:
                with open(name, "rb") as f:
                    text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            print("%s: cannot read: %s" % (name, e))
            total += 1
            continue
        total += check_text(name, text, strict=args.strict)[1]
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
