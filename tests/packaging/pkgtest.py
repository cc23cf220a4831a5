#!/usr/bin/env python3
"""Packaging tests of nuvlabox-event-agent (ctest label `packaging`).

    python3 tests/packaging/pkgtest.py STEP

Steps (each one ctest test; see tests/packaging/CMakeLists.txt):

  build     the .deb and .rpm of this source tree with packaging/build-packages.sh,
            as the project's version and as the next patch version (upgrades)
  root      a minimal Debian 12 root (mmdebstrap) with the packages' dependencies
            and systemd, cached as a tarball in the build tree
  lintian   lintian --fail-on error,warning on both .deb
  rpmlint   rpmlint (packaging/rpmlint.toml: documented filters) on both .rpm
  unit      systemd-analyze verify and security (exposure <= 2.0) of the unit,
            with and without the standalone drop-in; sysusers.d and tmpfiles.d
            applied to a scratch root
  man       mandoc -T lint of the man pages, and their sync with the code: every
            command, option, configuration key, default and environment variable
  rpm       rpm -qp --scripts/--configfiles/--requires; rpm -i --root DIR
            --nodeps puts every file where the unit expects it; the scriptlets run
            (install, upgrade, erase) in a Debian root
  install   the .deb in a chroot of the Debian root, as on a machine without
            systemd: install, CLI as root and as a group member, daemon started
            directly, upgrade (buffer and edited config survive), remove, purge
  boot      the same under systemd: the root booted with systemd-nspawn
            (--private-network), the unit enabled and started by postinst,
            hardened as shipped, restarted on upgrade, stopped on removal

Run as root on a disposable Debian 12 machine (CI): it creates users only
inside its chroots, mounts only in private mount namespaces (nothing is left
mounted when it ends), never touches the host's /usr, /etc or /var, and sends
no traffic (the chroots and the container have no network).

Checks that need a change in the C code (see packaging/README-packaging.md,
"Permissions") are reported as KNOWN lines and do not fail until the code
changes; once it does they are enforced.
"""

import glob
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(os.environ.get("NBE_SOURCE_DIR") or Path(__file__).resolve().parents[2])
WORK = Path(os.environ.get("NBE_PKG_WORK") or SRC / "build-pkg" / "test")
V1 = os.environ.get("NBE_PKG_VERSION") or "0.1.0"
V2 = os.environ.get("NBE_PKG_VERSION_NEXT") or "0.1.1"
MIRROR = os.environ.get("NBE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"

PKG = "nuvlabox-event-agent"
USER = "nuvlabox-event"
UNIT = "nuvlabox-eventd.service"
CONF = "/etc/nuvlabox-event/agent.conf"
STATE = "/var/lib/nuvlabox-event"
RUN = "/run/nuvlabox-event"
EXPOSURE_MAX = 2.0
PKGDIR = "/root/packages"  # in the roots (a booted root's /tmp is a tmpfs)

OUT = WORK / "packages"
CACHE = WORK / "cache"


# ---- small helpers ------------------------------------------------------------


class Failed(Exception):
    pass


class Report:
    """Collects check results; prints one line each."""

    def __init__(self, step):
        self.step = step
        self.passed = 0
        self.failed = []
        self.known = []

    def ok(self, what, detail=""):
        self.passed += 1
        print(f"ok    {what}{': ' + detail if detail else ''}", flush=True)

    def fail(self, what, detail=""):
        self.failed.append(what)
        print(f"FAIL  {what}{': ' + detail if detail else ''}", flush=True)

    def check(self, cond, what, detail=""):
        (self.ok if cond else self.fail)(what, detail)
        return cond

    def knownissue(self, what, detail):
        """A failure that waits for a C change; it does not fail the test."""
        self.known.append(what)
        print(f"KNOWN {what}: {detail}", flush=True)

    def info(self, what, detail=""):
        print(f"info  {what}{': ' + detail if detail else ''}", flush=True)

    def done(self):
        print(f"\n{self.step}: {self.passed} checks passed, {len(self.failed)} failed, "
              f"{len(self.known)} known issues (C changes pending)", flush=True)
        if self.failed:
            print("failed: " + "; ".join(self.failed), flush=True)
            return 1
        return 0


def run(cmd, check=True, input=None, env=None, timeout=600, quiet=False, cwd=None):
    """Runs @cmd (a list, or a string for sh -c); returns CompletedProcess with
    text stdout/stderr. With @check, a non-zero exit raises Failed."""
    if isinstance(cmd, str):
        cmd = ["/bin/sh", "-c", cmd]
    if not quiet:
        print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=cwd)
    if check and p.returncode != 0:
        raise Failed(f"{cmd[0]} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def arch_deb():
    return run(["dpkg", "--print-architecture"], quiet=True).stdout.strip()


def arch_rpm():
    return os.uname().machine


def deb(version):
    return OUT / f"{PKG}_{version}_{arch_deb()}.deb"


def rpmfile(version):
    return OUT / f"{PKG}-{version}-1.{arch_rpm()}.rpm"


def tree(version):
    """The .deb's content, extracted (made by the build step)."""
    return WORK / f"tree-{version}"


def need_packages():
    for p in (deb(V1), deb(V2), rpmfile(V1), rpmfile(V2)):
        if not p.exists():
            raise Failed(f"{p} is missing: the packaging_build test makes it")


def rmtree(path):
    if os.path.lexists(path):
        # a chroot may hold files of other owners and read-only dirs
        run(["rm", "-rf", "--one-file-system", str(path)], quiet=True)


# ---- build ----------------------------------------------------------------------


def step_build(r):
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    script = SRC / "packaging" / "build-packages.sh"
    for version, override in ((V1, ""), (V2, V2)):
        env = dict(os.environ, NBE_PKG_BUILD_DIR=str(WORK / f"build-{version}"))
        t0 = time.time()
        p = run(["bash", str(script), str(OUT)] + ([override] if override else []), env=env)
        r.info(f"built {version}", f"{time.time() - t0:.0f} s")
        print(p.stdout.strip().splitlines()[-2:])
        r.check(deb(version).exists(), f"{deb(version).name} exists")
        r.check(rpmfile(version).exists(), f"{rpmfile(version).name} exists")
        t = tree(version)
        rmtree(t)
        run(["dpkg-deb", "-x", str(deb(version)), str(t)])
        for prog in ("usr/bin/nuvlabox-event", "usr/sbin/nuvlabox-eventd"):
            out = run([str(t / prog), "--version"]).stdout
            r.check(re.search(rf"\b{re.escape(version)}\b", out) is not None,
                    f"{prog} --version prints {version}", out.strip())
        for exe in ("usr/bin/nuvlabox-event", "usr/sbin/nuvlabox-eventd",
                    "usr/libexec/nuvlabox-event/nuvlabox-event-net"):
            desc = run(["file", "-b", str(t / exe)], quiet=True).stdout
            r.check(", stripped" in desc, f"{exe} is stripped", desc.strip()[:80])
        r.check(run(["dpkg-deb", "-f", str(deb(version)), "Version"], quiet=True).stdout.strip()
                == version, f".deb Version is {version}")
        r.check(run(["rpm", "-qp", "--qf", "%{VERSION}", str(rpmfile(version))],
                    quiet=True).stdout.strip() == version, f".rpm Version is {version}")

    # one install tree: the same files, with the same modes, in both formats
    debfiles = {}
    for line in run(["dpkg-deb", "-c", str(deb(V1))], quiet=True).stdout.splitlines():
        f = line.split()
        if not f[0].startswith("d"):
            debfiles[f[-1].lstrip(".")] = f[0]
    rpmfiles = {}
    for line in run(["rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]",
                     str(rpmfile(V1))], quiet=True).stdout.splitlines():
        mode, name = line.split(" ", 1)
        if not mode.startswith("d"):
            rpmfiles[name] = mode
    r.check(debfiles == rpmfiles, "the .deb and the .rpm hold the same files and modes",
            "" if debfiles == rpmfiles else f"deb {debfiles} rpm {rpmfiles}")
    depends = run(["dpkg-deb", "-f", str(deb(V1)), "Depends"], quiet=True).stdout.strip()
    r.info("deb Depends", depends)
    for lib in ("libc6", "libcurl4", "libsqlite3-0", "libcjson1", "libmbedcrypto7"):
        r.check(re.search(rf"\b{lib}\b", depends) is not None, f"shlibdeps found {lib}")


# ---- lintian, rpmlint ---------------------------------------------------------


def step_lintian(r):
    need_packages()
    for version in (V1, V2):
        p = run(["lintian", "--fail-on", "error,warning", "--display-info", str(deb(version))],
                check=False)
        print(p.stdout + p.stderr.replace("running with root privileges is not recommended!", ""))
        tags = [l for l in p.stdout.splitlines() if re.match(r"^[EW]: ", l)]
        r.check(p.returncode == 0 and not tags, f"lintian {deb(version).name}",
                f"exit {p.returncode}, {len(tags)} errors/warnings")
        infos = [l for l in p.stdout.splitlines() if l.startswith("I: ")]
        r.info("lintian informational tags (not gated)", str(len(infos)))


def step_rpmlint(r):
    need_packages()
    cfg = SRC / "packaging" / "rpmlint.toml"
    for version in (V1, V2):
        p = run(["rpmlint", "-c", str(cfg), str(rpmfile(version))], check=False)
        print(p.stdout + p.stderr)
        m = re.search(r"(\d+) errors, (\d+) warnings", p.stdout)
        r.check(p.returncode == 0 and m is not None and m.group(1) == "0" and m.group(2) == "0",
                f"rpmlint {rpmfile(version).name}", m.group(0) if m else f"exit {p.returncode}")


# ---- the unit -------------------------------------------------------------------


def unit_keys(text):
    """key -> list of values of a unit file's text."""
    keys = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def exposure(unit_path, env=None):
    p = run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_path)],
            check=False, env=env)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
    return (float(m.group(1)) if m else None), p


def step_unit(r):
    need_packages()
    t = tree(V1)
    shipped = (t / "usr/lib/systemd/system" / UNIT).read_text()
    keys = unit_keys(shipped)
    want = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
        "StateDirectory": "nuvlabox-event", "RuntimeDirectory": "nuvlabox-event",
        "ConfigurationDirectory": "nuvlabox-event", "User": USER, "Group": USER,
        "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "CapabilityBoundingSet": "CAP_DAC_READ_SEARCH",
        "AmbientCapabilities": "CAP_DAC_READ_SEARCH",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "ExecReload": "/bin/kill -HUP $MAINPID", "ExecStart": "/usr/sbin/nuvlabox-eventd",
    }
    for k, v in want.items():
        r.check(v in keys.get(k, []), f"unit {k}={v}", str(keys.get(k)))
    r.check(bool(keys.get("WatchdogSec")), "unit WatchdogSec set", str(keys.get("WatchdogSec")))
    r.check("@system-service" in keys.get("SystemCallFilter", []), "unit SystemCallFilter")

    with tempfile.TemporaryDirectory(prefix="nbe-unit-") as d:
        d = Path(d)
        # the shipped unit, its ExecStart pointed at the extracted package
        text = shipped.replace("ExecStart=/usr/sbin/nuvlabox-eventd",
                               f"ExecStart={t}/usr/sbin/nuvlabox-eventd")
        unit = d / UNIT
        unit.write_text(text)
        env = dict(os.environ, MANPATH=str(t / "usr/share/man"))
        p = run(["systemd-analyze", "verify", str(unit)], check=False, env=env)
        r.check(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
                "systemd-analyze verify (Documentation= man pages resolved in the package)",
                (p.stdout + p.stderr).strip() or "clean")
        score, p = exposure(unit)
        print(p.stdout)
        r.check(score is not None and score <= EXPOSURE_MAX,
                f"systemd-analyze security --offline=true: exposure {score} <= {EXPOSURE_MAX}")

        # with the standalone drop-in: valid, and still hardened
        dropin = t / f"usr/share/doc/{PKG}/examples/standalone-jobs.conf"
        (d / f"{UNIT}.d").mkdir()
        shutil.copy(dropin, d / f"{UNIT}.d" / "standalone-jobs.conf")
        p = run(["systemd-analyze", "verify", str(unit)], check=False, env=env)
        r.check(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
                "systemd-analyze verify with the standalone-jobs drop-in",
                (p.stdout + p.stderr).strip() or "clean")
        score2, p = exposure(unit)
        r.info("exposure with the standalone-jobs drop-in (widened on purpose)", str(score2))
        # the base unit has no CAP_CHOWN (its line is a pass), the drop-in grants it
        chown = [l for l in p.stdout.splitlines()
                 if "CapabilityBoundingSet=~" in l and "CHOWN" in l]
        r.check(bool(chown) and chown[0].lstrip().startswith("\u2717"),
                "the drop-in is applied (it grants CAP_CHOWN)", chown[0] if chown else "")

    # sysusers.d and tmpfiles.d, applied to a scratch root
    with tempfile.TemporaryDirectory(prefix="nbe-sysusers-") as d:
        root = Path(d)
        for sub in ("usr/lib/sysusers.d", "usr/lib/tmpfiles.d", "etc"):
            (root / sub).mkdir(parents=True)
        shutil.copy(t / "usr/lib/sysusers.d/nuvlabox-event.conf", root / "usr/lib/sysusers.d")
        shutil.copy(t / "usr/lib/tmpfiles.d/nuvlabox-event.conf", root / "usr/lib/tmpfiles.d")
        p = run(["systemd-sysusers", f"--root={root}"], check=False)
        passwd = (root / "etc/passwd").read_text() if (root / "etc/passwd").exists() else ""
        entry = [l for l in passwd.splitlines() if l.startswith(USER + ":")]
        r.check(p.returncode == 0 and len(entry) == 1, "sysusers.d makes the user", str(entry))
        if entry:
            f = entry[0].split(":")
            r.check(int(f[2]) < 1000 and f[5] == STATE and f[6].endswith("nologin"),
                    "a system user, home the state directory, no login shell", entry[0])
        group = (root / "etc/group").read_text() if (root / "etc/group").exists() else ""
        r.check(any(l.startswith(USER + ":") for l in group.splitlines()),
                "sysusers.d makes the group")
        p = run(["systemd-tmpfiles", f"--root={root}", "--create"], check=False)
        st = os.stat(root / STATE.lstrip("/")) if (root / STATE.lstrip("/")).exists() else None
        r.check(p.returncode == 0 and st is not None and (st.st_mode & 0o7777) == 0o2770,
                "tmpfiles.d makes the state directory 2770",
                f"{oct(st.st_mode & 0o7777) if st else 'missing'} {p.stderr.strip()}")


# ---- man pages and their sync with the code --------------------------------------


def man_text(t, page):
    sec = page.rsplit(".", 1)[1]
    return gzip.decompress((t / f"usr/share/man/man{sec}/{page}.gz").read_bytes()).decode()


def step_man(r):
    need_packages()
    t = tree(V1)
    pages = ("nuvlabox-event.1", "nuvlabox-eventd.8", "nuvlabox-event.conf.5")
    with tempfile.TemporaryDirectory(prefix="nbe-man-") as d:
        files = []
        for page in pages:
            f = Path(d) / page
            f.write_text(man_text(t, page))
            files.append(str(f))
        # .Xr to our own pages must resolve (MANPATH: the package's pages);
        # pages of other packages this machine may lack are not our finding
        env = dict(os.environ, MANPATH=str(t / "usr/share/man"))
        p = run(["mandoc", "-T", "lint", "-W", "style"] + files, check=False, env=env)
        ours = {pg.rsplit(".", 1)[0] + " " + pg.rsplit(".", 1)[1] for pg in pages}
        msgs = [l for l in (p.stdout + p.stderr).splitlines() if re.match(r"mandoc: /", l)]
        other = [l for l in msgs if re.search(r"referenced manual not found: Xr (\S+ \d)", l)
                 and re.search(r"Xr (\S+ \d)", l).group(1) not in ours]
        msgs = [l for l in msgs if l not in other]
        for l in other:
            r.info("not on this machine", l.split("STYLE: ")[-1])
        r.check(not msgs, "mandoc -T lint -W style: clean", "\n".join(msgs) or "no messages")
        for page in pages:
            p = run(["man", "--warnings", "-l", "-Tutf8", str(Path(d) / page)], check=False,
                    quiet=True) if shutil.which("man") else None
            if p is not None:
                r.check(p.returncode == 0 and not p.stderr.strip(), f"groff renders {page}",
                        p.stderr.strip()[:200])

    cli_page = man_text(t, "nuvlabox-event.1")
    daemon_page = man_text(t, "nuvlabox-eventd.8")
    conf_page = man_text(t, "nuvlabox-event.conf.5")
    all_pages = cli_page + daemon_page + conf_page
    cli = str(t / "usr/bin/nuvlabox-event")
    daemon = str(t / "usr/sbin/nuvlabox-eventd")

    # every command and option of the CLI's help
    help_text = run([cli, "--help"], quiet=True).stdout
    commands = re.findall(r"^  ([a-z][a-z-]*)", help_text, re.M)
    r.check(len(commands) >= 5, "commands read from nuvlabox-event --help", " ".join(commands))
    for c in commands:
        r.check(re.search(rf"^\.It (Xo\n)?\.?Cm {re.escape(c)}\b", cli_page, re.M) is not None,
                f"nuvlabox-event(1) documents the command {c}")
        usage = run([cli, c, "--help"], quiet=True, check=False).stdout
        for opt in sorted(set(re.findall(r"--([a-z][a-z-]*)", usage))):
            r.check(re.search(rf"Fl -{re.escape(opt)}\b", cli_page) is not None,
                    f"nuvlabox-event(1) documents {c} --{opt}")
    for opt in re.findall(r"--([a-z][a-z-]*)", help_text.splitlines()[0]):
        r.check(f"Fl -{opt}" in cli_page, f"nuvlabox-event(1) documents --{opt}")

    # every option of the daemon
    usage = run([daemon, "--help"], quiet=True).stdout
    for opt in sorted(set(re.findall(r"--([a-z][a-z-]*)", usage))):
        r.check(f"Fl -{opt}" in daemon_page, f"nuvlabox-eventd(8) documents --{opt}")
    src_daemon = (SRC / "agent/eventd.c").read_text()
    for longopt in re.findall(r'\{ "([a-z-]+)", (?:no|required)_argument', src_daemon):
        r.check(f"Fl -{longopt}" in daemon_page, f"nuvlabox-eventd(8) documents --{longopt}")
    for sig in ("SIGHUP", "SIGTERM", "SIGINT"):
        if sig in src_daemon:
            r.check(f"Dv {sig}" in daemon_page, f"nuvlabox-eventd(8) documents {sig}")

    # every configuration key: in the man page and in the default agent.conf
    src_conf = (SRC / "common/config.c").read_text()
    table = src_conf[src_conf.index("static const struct key_def keys[]"):]
    table = table[:table.index("};")]
    keys = re.findall(r'\{ "([a-z_]+)", T_', table)
    r.check(len(keys) >= 20, "configuration keys read from common/config.c", str(len(keys)))
    agent_conf = (t / CONF.lstrip("/")).read_text()
    defaults = dict(re.findall(r"^#([a-z_]+) = (\S.*)$", agent_conf, re.M))
    for k in keys:
        r.check(re.search(rf"^\.It Cm {k} No = ", conf_page, re.M) is not None,
                f"nuvlabox-event.conf(5) documents {k}")
        r.check(re.search(rf"^#{k} =", agent_conf, re.M) is not None,
                f"agent.conf lists {k}")
    r.check(not (set(re.findall(r"^#([a-z_]+) =", agent_conf, re.M)) - set(keys)),
            "agent.conf lists no key the code does not know")
    # the defaults of agent.conf are the man page's
    blocks = re.split(r"^\.It ", conf_page, flags=re.M)
    for k, v in defaults.items():
        i = next((n for n, b in enumerate(blocks) if b.startswith(f"Cm {k} No")), None)
        text = ""
        while i is not None and i < len(blocks):
            text += blocks[i]
            if "Default" in blocks[i]:
                break
            i += 1
        r.check(v in text, f"nuvlabox-event.conf(5) gives {k} the default {v}")
    # the defaults of agent.conf are the code's: the uncommented file is accepted
    # and gives what no file gives
    with tempfile.TemporaryDirectory(prefix="nbe-conf-") as d:
        uncommented = re.sub(r"^#([a-z_]+ = \S.*)$", r"\1", agent_conf, flags=re.M)
        conf = Path(d) / "agent.conf"
        conf.write_text(uncommented)
        empty = Path(d) / "empty.conf"
        empty.write_text("")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NUVLA", "HOST_HOME", "RUNTIME_DIRECTORY"))}
        outs = []
        for c in (conf, empty):
            sd = Path(d) / ("state-" + c.stem)
            p = run([cli, "--config", str(c), "--state-dir", str(sd), "status", "--json"],
                    check=False, env=env)
            r.check(p.returncode == 0, f"nuvlabox-event accepts {c.name}", p.stderr.strip())
            try:
                o = json.loads(p.stdout)
            except ValueError:
                o = {}
            for volatile in ("state_dir", "oldest_pending_age_s", "buffer_bytes", "clock_synced"):
                o.pop(volatile, None)
            outs.append(o)
        r.check(outs[0] == outs[1] and outs[0],
                "agent.conf with every default uncommented configures what no file does")
        # the members of the JSON objects (DESIGN section 7) are the page's
        sd = Path(d) / "state-json"
        base = [cli, "--config", str(empty), "--state-dir", str(sd)]
        ev = run(base + ["record", "nuvlabox.reboot"], env=env, check=False).stdout.strip()
        members = {}
        for what, argv, pick in (
                ("list --json", ["list", "--json"], lambda o: o[0]),
                ("show --json", ["show", ev, "--json"], lambda o: o),
                ("status --json", ["status", "--json"], lambda o: o)):
            try:
                members[what] = set(pick(json.loads(run(base + argv, env=env,
                                                        quiet=True).stdout)))
            except (ValueError, IndexError, Failed) as e:
                r.fail(f"nuvlabox-event {what}", str(e))
        json_part = cli_page[cli_page.index(".Sh JSON OUTPUT"):cli_page.index(".Sh ENVIRONMENT")]
        documented = set(re.findall(r"\bQl ([a-z_]+)", json_part))
        for what, keys_ in members.items():
            missing = sorted(keys_ - documented)
            r.check(not missing, f"nuvlabox-event(1) documents every member of {what}",
                    " ".join(missing))

    # every environment variable the code reads
    env_names = set()
    for f in list((SRC / "agent").glob("*.c")) + list((SRC / "common").glob("*.c")):
        s = f.read_text()
        env_names |= set(re.findall(r'getenv(?:_fn)?\("([A-Z_]+)"\)', s))
        env_names |= set(re.findall(r'\{ "([A-Z][A-Z_]+)", "[a-z_]+" \}', s))
    r.check(len(env_names) >= 8, "environment variables read from the code",
            " ".join(sorted(env_names)))
    for e in sorted(env_names):
        r.check(f"Ev {e}" in all_pages, f"the man pages document {e}")

    # every exit code the CLI and the daemon use
    codes = {"EX_OK": 0, "EX_USAGE": 64, "EX_DATAERR": 65, "EX_NOINPUT": 66,
             "EX_NOUSER": 67, "EX_NOHOST": 68, "EX_UNAVAILABLE": 69, "EX_SOFTWARE": 70,
             "EX_OSERR": 71, "EX_OSFILE": 72, "EX_CANTCREAT": 73, "EX_IOERR": 74,
             "EX_TEMPFAIL": 75, "EX_PROTOCOL": 76, "EX_NOPERM": 77, "EX_CONFIG": 78}
    used_cli, used_daemon = set(), set()
    for f in (SRC / "agent").glob("*.c"):
        used = set(re.findall(r"\b(EX_[A-Z]+)\b", f.read_text())) & set(codes)
        (used_daemon if f.name == "eventd.c" else used_cli).update(used)
    exit_cli = cli_page[cli_page.index(".Sh EXIT STATUS"):]
    exit_daemon = daemon_page[daemon_page.index(".Sh EXIT STATUS"):]
    for name in sorted(used_cli):
        r.check(re.search(rf"^\.It {codes[name]}$", exit_cli, re.M) is not None,
                f"nuvlabox-event(1) documents exit {codes[name]} ({name})")
    for name in sorted(used_daemon):
        r.check(re.search(rf"^\.It {codes[name]}$", exit_daemon, re.M) is not None,
                f"nuvlabox-eventd(8) documents exit {codes[name]} ({name})")

    # the files the pages name are the ones the package and the code use
    r.check(f"{CONF}" in cli_page and CONF in (SRC / "common/config.h").read_text(),
            "the configuration file's path")
    libexec = re.search(r"\.It Pa (/\S+nuvlabox-event-net)", cli_page)
    r.check(libexec is not None and (t / libexec.group(1).lstrip("/")).exists(),
            "the network helper named in nuvlabox-event(1) is in the package",
            libexec.group(1) if libexec else "not named")


# ---- a Debian 12 root -------------------------------------------------------------


def root_packages():
    """What the root needs: the .deb's dependencies and systemd (for `boot`)."""
    depends = run(["dpkg-deb", "-f", str(deb(V1)), "Depends"], quiet=True).stdout
    names = [d.split("|")[0].split("(")[0].strip() for d in depends.split(",")]
    return sorted(set(n for n in names if n) | {"systemd", "systemd-sysv"})


def root_tar():
    key = "-".join(root_packages())
    import hashlib
    return CACHE / f"{SUITE}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.tar"


def step_root(r):
    need_packages()
    tar = root_tar()
    if tar.exists():
        r.ok("cached Debian 12 root", str(tar))
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob(f"{SUITE}-*.tar*"):
        old.unlink()
    include = ",".join(root_packages())
    t0 = time.time()
    # mmdebstrap (debootstrap's faster successor, in Debian 12), in a
    # private mount namespace: whatever it mounts is gone when it ends
    p = run(["unshare", "--mount", "--propagation", "private", "--",
             "mmdebstrap", "--mode=root", "--format=tar", "--variant=minbase", "--dpkgopt=force-unsafe-io",
             f"--include={include}", SUITE, str(tar) + ".part", MIRROR],
            check=False, timeout=900)
    if p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-5000:])
        r.fail("mmdebstrap", f"exit {p.returncode}")
        return
    os.replace(str(tar) + ".part", tar)
    r.ok(f"mmdebstrap --variant=minbase {SUITE}", f"{time.time() - t0:.0f} s, {include}")


def fresh_root(name):
    tar = root_tar()
    if not tar.exists():
        raise Failed(f"{tar} is missing: the packaging_root test makes it")
    root = WORK / name
    rmtree(root)
    root.mkdir(parents=True)
    run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tar)])
    (root / PKGDIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for p in (deb(V1), deb(V2), rpmfile(V1), rpmfile(V2)):
        shutil.copy(p, root / PKGDIR.lstrip("/") / p.name)
    return root


class Chroot:
    """Commands in a chroot of @root: each in its own private mount namespace
    with /proc mounted, and without network; nothing outlives the command."""

    def __init__(self, root):
        self.root = Path(root)

    def argv(self, cmd, user=None):
        inner = cmd if user is None else (
            f"exec setpriv --reuid={user} --regid={user} --init-groups "
            f"/bin/sh -c {shlex.quote(cmd)}")
        script = ('mount -t proc proc "$1/proc" && exec chroot "$1" /usr/bin/env -i '
                  'PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 '
                  '/bin/sh -c "$2"')
        return ["unshare", "--mount", "--net", "--propagation", "private", "--",
                "/bin/sh", "-c", script, "sh", str(self.root), inner]

    def sh(self, cmd, user=None, check=False, timeout=300):
        p = run(self.argv(cmd, user), check=False, timeout=timeout, quiet=True)
        who = f"[{user}] " if user else ""
        print(f"# {who}{cmd}", flush=True)
        for line in (p.stdout + p.stderr).splitlines():
            print(f"  | {line}", flush=True)
        if check and p.returncode != 0:
            raise Failed(f"{cmd}: exit {p.returncode}")
        return p

    def path(self, p):
        return self.root / p.lstrip("/")

    def stat(self, p):
        try:
            return os.stat(self.path(p))
        except FileNotFoundError:
            return None


def owner(c, path):
    p = c.sh(f"stat -c '%U:%G %a' {path}")
    return p.stdout.strip()


def check_db_modes(r, c, what):
    """Whether events.db lets the daemon and the group write it (group
    nuvlabox-event, mode 0660): the modes the C code gives it. Returns
    (bool, "user:group mode")."""
    o = owner(c, f"{STATE}/events.db")
    try:
        ug, mode = o.split()
        group = ug.split(":")[1]
    except (ValueError, IndexError):
        return False, o
    return group == USER and mode == "660", o


# ---- the .deb without systemd ------------------------------------------------


def start_daemon(c, log):
    """nuvlabox-eventd started directly as its user, as an init script would."""
    argv = c.argv(f"exec setpriv --reuid={USER} --regid={USER} --init-groups "
                  f"/usr/sbin/nuvlabox-eventd")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    sock = c.path(f"{RUN}/notify.sock")
    for _ in range(100):
        if sock.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    return proc


def stop_daemon(proc, timeout=15):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def step_install(r):
    need_packages()
    root = fresh_root("root-install")
    c = Chroot(root)
    log_path = WORK / "install-daemon.log"
    procs = []
    try:
        _install_flow(r, c, log_path, procs)
    finally:
        for p in procs:
            stop_daemon(p)
        rmtree(root)


def _install_flow(r, c, log_path, procs):
    # a machine without systemd: no systemd-sysusers, no systemd-tmpfiles
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        os.rename(c.path(f"/usr/bin/{tool}"), c.path(f"/usr/bin/{tool}.off"))
    p = c.sh(f"dpkg -i {PKGDIR}/{deb(V1).name}")
    if not r.check(p.returncode == 0, f"dpkg -i {deb(V1).name} (no systemd)"):
        return
    r.check(c.sh(f"getent passwd {USER}").returncode == 0, "postinst made the user (useradd)",
            c.sh(f"getent passwd {USER}").stdout.strip())
    r.check(c.sh(f"getent group {USER}").returncode == 0, "postinst made the group")
    r.check(owner(c, STATE) == f"{USER}:{USER} 2770", "state directory nuvlabox-event 2770",
            owner(c, STATE))
    r.check(owner(c, RUN) == f"{USER}:{USER} 750", "runtime directory nuvlabox-event 0750",
            owner(c, RUN))
    r.check(c.path(CONF).exists(), "the default configuration is installed")
    r.check(c.path(f"/etc/systemd/system/multi-user.target.wants/{UNIT}").is_symlink(),
            "the unit is enabled for the next boot")
    st = c.sh("dpkg-query -W -f='${Status} ${Version}' " + PKG).stdout
    r.check(st == f"install ok installed {V1}", "dpkg says installed", st)
    for prog in ("nuvlabox-event", "nuvlabox-eventd"):
        out = c.sh(f"{prog} --version").stdout
        r.check(V1 in out, f"{prog} --version in the root", out.strip())
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        os.rename(c.path(f"/usr/bin/{tool}.off"), c.path(f"/usr/bin/{tool}"))

    # users: a producer in the group, and someone outside it
    c.sh(f"useradd -m -G {USER} producer && useradd -m outsider", check=True)

    # the daemon, started directly (as an init script would): it makes the buffer
    log = open(log_path, "w")
    proc = start_daemon(c, log)
    procs.append(proc)
    time.sleep(0.5)
    r.check(proc.poll() is None and c.path(f"{RUN}/notify.sock").exists(),
            "nuvlabox-eventd runs as nuvlabox-event, unconfigured", log_path.read_text().strip())
    r.check(owner(c, f"{STATE}/events.db").startswith(f"{USER}:{USER} "),
            "the daemon made the buffer", owner(c, f"{STATE}/events.db"))
    p = c.sh("nuvlabox-event record nuvlabox.activate --message 'first'")
    r.check(p.returncode == 0 and re.fullmatch(r"[0-9a-f-]{36}\n", p.stdout) is not None,
            "root records: the id alone on stdout", p.stdout.strip())
    first_id = p.stdout.strip()
    st = json.loads(c.sh("nuvlabox-event status --json").stdout or "{}")
    r.check(st.get("uploader_running") is True and st.get("pending") == 1,
            "status: the daemon holds the upload lock; the event is pending", str(st))

    # a buffer that root makes before the daemon ever ran (an image build,
    # early boot), in a second state directory made like the first
    probe = "/var/lib/nbe-probe"
    c.sh(f"install -d -m 2770 -o {USER} -g {USER} {probe} && "
         f"nuvlabox-event --state-dir {probe} record nuvlabox.activate", check=True)
    p = c.sh(f"nuvlabox-event --state-dir {probe} record nuvlabox.reboot", user=USER)
    o = owner(c, f"{probe}/events.db")
    if p.returncode == 0:
        r.ok("the daemon's user can write a buffer that root made", o)
    else:
        r.knownissue("the daemon's user can write a buffer that root made",
                     f"events.db is {o}: the daemon would fail to start (exit 74) on it; "
                     "needs the C change (new files 0660, owned like the state directory)")

    # the CLI as root and as a member of the group
    for who in (None, "producer"):
        name = "root" if who is None else "a group member"
        p = c.sh("nuvlabox-event record nuvlabox.reboot --job job/0b8f7e4c-2d1a-4f5e-8c3b-"
                 f"9a6d5e4f3c2b --message 'by {name}'", user=who)
        if p.returncode == 0:
            r.ok(f"{name} records", p.stdout.strip())
        else:
            good, o = check_db_modes(r, c, name)
            if who and not good:
                r.knownissue(f"{name} records", f"exit {p.returncode}: events.db is {o}")
            else:
                r.fail(f"{name} records", f"exit {p.returncode} {p.stderr.strip()}")
        for cmd in ("list", "list --json", "status", f"show {first_id}", "export"):
            p = c.sh(f"nuvlabox-event {cmd}", user=who)
            r.check(p.returncode == 0, f"{name}: nuvlabox-event {cmd}", p.stderr.strip())
    p = c.sh("nuvlabox-event list", user="outsider")
    r.check(p.returncode != 0, "someone outside the group cannot read the buffer",
            f"exit {p.returncode}")
    p = c.sh("nuvlabox-event record nuvlabox.reboot", user="outsider")
    r.check(p.returncode != 0, "someone outside the group cannot record",
            f"exit {p.returncode}")
    p = c.sh("nuvlabox-event doctor")
    r.check(p.returncode not in (0, 72) and "config" in p.stdout,
            "doctor runs the network helper from the package (fails: no network, "
            "not configured)", f"exit {p.returncode}")

    # an edited configuration, reloaded
    c.sh(f"printf '%s\\n' '# edited by the test' 'max_in_flight = 4' >> {CONF}", check=True)
    edited = c.path(CONF).read_text()
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    r.check("reloaded" in log_path.read_text() and "max_in_flight" in log_path.read_text(),
            "SIGHUP reloads the edited configuration")
    before = json.loads(c.sh("nuvlabox-event list --json").stdout)

    # upgrade with the daemon running (no systemd: nothing restarts it)
    p = c.sh(f"dpkg -i {PKGDIR}/{deb(V2).name}")
    r.check(p.returncode == 0, f"upgrade: dpkg -i {deb(V2).name}")
    r.check(c.path(CONF).read_text() == edited, "upgrade keeps the edited configuration")
    after = json.loads(c.sh("nuvlabox-event list --json").stdout or "[]")
    r.check([e["id"] for e in after] == [e["id"] for e in before] and len(before) >= 2,
            "upgrade keeps the buffer", f"{len(before)} events before, {len(after)} after")
    r.check(V2 in c.sh("nuvlabox-event --version").stdout, f"nuvlabox-event is {V2}")
    rc = stop_daemon(proc)
    r.check(rc == 0, "SIGTERM stops the daemon (exit 0)", str(rc))
    proc = start_daemon(c, log)
    procs.append(proc)
    time.sleep(0.5)
    r.check(proc.poll() is None and f"nuvlabox-eventd {V2} starting" in log_path.read_text(),
            f"the {V2} daemon starts on the old buffer")
    r.check(len(json.loads(c.sh("nuvlabox-event list --json").stdout or "[]")) == len(before),
            "the new daemon sees every event")
    stop_daemon(proc)

    # remove: the buffer and the configuration stay
    p = c.sh(f"dpkg -r {PKG}")
    r.check(p.returncode == 0, "dpkg -r")
    r.check(not c.path("/usr/bin/nuvlabox-event").exists()
            and not c.path("/usr/sbin/nuvlabox-eventd").exists(), "remove: the programs are gone")
    r.check(c.path(f"{STATE}/events.db").exists(), "remove: the buffer stays")
    r.check(c.path(CONF).exists() and c.path(CONF).read_text() == edited,
            "remove: the configuration stays")
    r.check(c.sh(f"getent passwd {USER}").returncode == 0, "remove: the system user stays")

    # reinstall after remove: the buffer is picked up again
    p = c.sh(f"dpkg -i {PKGDIR}/{deb(V2).name}")
    r.check(p.returncode == 0 and len(json.loads(
        c.sh("nuvlabox-event list --json").stdout or "[]")) == len(before),
        "reinstalling after remove finds the buffer")

    # purge: the buffer and the configuration go
    p = c.sh(f"dpkg -P {PKG}")
    r.check(p.returncode == 0, "dpkg -P")
    r.check(not c.path(STATE).exists(), "purge deletes the state directory")
    r.check(not c.path(CONF).exists(), "purge deletes the configuration")
    r.check(c.sh(f"dpkg-query -W -f='${{Status}}' {PKG}").stdout.strip() in
            ("", "unknown ok not-installed"), "dpkg says not installed")


# ---- the .deb under systemd -----------------------------------------------------


class Container:
    """The root booted with systemd-nspawn, without network; commands run in
    its namespaces with nsenter."""

    def __init__(self, root, log_path):
        self.root = root
        self.log = open(log_path, "w")
        self.proc = None
        self.leader = None

    def boot(self, timeout=90):
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
             "--boot", "-D", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            kids = run(["pgrep", "-P", str(self.proc.pid)], check=False, quiet=True).stdout.split()
            if kids:
                self.leader = kids[0]
                p = self.sh("systemctl is-system-running --wait", quiet=True, timeout=60)
                state = p.stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.3)
        return None

    def sh(self, cmd, quiet=False, timeout=120, check=False):
        p = run(["nsenter", "-t", self.leader, "-m", "-u", "-i", "-n", "-p", "--",
                 "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                 "SYSTEMD_PAGER=", "/bin/sh", "-c", cmd], check=False, timeout=timeout, quiet=True)
        if not quiet:
            print(f"# {cmd}", flush=True)
            for line in (p.stdout + p.stderr).splitlines():
                print(f"  | {line}", flush=True)
        if check and p.returncode != 0:
            raise Failed(f"{cmd}: exit {p.returncode}")
        return p

    def show(self, prop):
        return self.sh(f"systemctl show -p {prop} --value {UNIT}", quiet=True).stdout.strip()

    def shutdown(self):
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader:
            self.sh("systemctl poweroff", quiet=True, timeout=30)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def step_boot(r):
    need_packages()
    if not shutil.which("systemd-nspawn"):
        r.fail("systemd-nspawn", "not installed (.ci/install-deps installs systemd-container)")
        return
    root = fresh_root("root-boot")
    ct = Container(root, WORK / "boot-console.log")
    nspawn_run = Path("/run/systemd/nspawn")
    had_run = nspawn_run.exists()
    try:
        state = ct.boot()
        if state is None:
            console = (WORK / "boot-console.log").read_text()[-2000:]
            if os.environ.get("NBE_PKG_REQUIRE_BOOT") == "1":
                r.fail("the Debian root boots under systemd-nspawn", console)
            else:
                # no container support here (the chroot test still ran)
                r.info("SKIPPED: the Debian root does not boot under systemd-nspawn", console)
            return
        r.ok("the Debian 12 root boots with systemd", state)
        _boot_flow(r, ct)
    finally:
        ct.shutdown()
        rmtree(root)
        if not had_run and nspawn_run.exists():
            # the empty bookkeeping directories systemd-nspawn left on the host
            run(["find", str(nspawn_run), "-depth", "-type", "d", "-empty", "-delete"],
                check=False, quiet=True)


def ssh_keys(d):
    """Two fresh public keys and the SHA256 fingerprint of the second."""
    keys = []
    for n in ("a", "b"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pkgtest-{n}",
             "-f", f"{d}/{n}"], quiet=True)
        keys.append(Path(f"{d}/{n}.pub").read_text().strip())
    fp = run(["ssh-keygen", "-l", "-f", f"{d}/b.pub"], quiet=True).stdout.split()[1]
    return keys, fp


def _boot_flow(r, ct):
    # root's authorized_keys, which the daemon watches through ProtectHome=read-only
    with tempfile.TemporaryDirectory(prefix="nbe-keys-") as d:
        (key_a, key_b), fp_b = ssh_keys(d)
    ct.sh(f"install -d -m 0700 /root/.ssh && echo '{key_a}' > /root/.ssh/authorized_keys && "
          "chmod 600 /root/.ssh/authorized_keys", check=True)
    p = ct.sh(f"dpkg -i {PKGDIR}/{deb(V1).name}")
    if not r.check(p.returncode == 0, f"dpkg -i {deb(V1).name} (systemd running)"):
        return
    r.check(ct.sh(f"getent passwd {USER}", quiet=True).returncode == 0,
            "postinst made the user (systemd-sysusers)")
    r.check(ct.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled",
            "postinst enabled the unit")
    time.sleep(3)  # longer than a failed start takes; RestartSec is 10 s
    r.check(ct.show("ActiveState") == "active" and ct.show("SubState") == "running",
            "postinst started the unit", ct.show("StatusText"))
    r.check(ct.show("NRestarts") == "0", "an unconfigured device does not crash-loop",
            f"NRestarts={ct.show('NRestarts')}, status: {ct.show('StatusText')}")
    for path, want in ((STATE, f"{USER}:{USER} 2770"), (RUN, f"{USER}:{USER} 750")):
        got = ct.sh(f"stat -c '%U:%G %a' {path}", quiet=True).stdout.strip()
        r.check(got == want, f"{path} is {want}", got)
    pid = ct.show("MainPID")
    status = ct.sh(f"cat /proc/{pid}/status", quiet=True).stdout
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    uid = ct.sh(f"id -u {USER}", quiet=True).stdout.strip()
    r.check(fields.get("Uid", "").split()[:1] == [uid], "the daemon runs as nuvlabox-event")
    r.check(fields.get("CapEff") == "0000000000000004" and fields.get("CapBnd") ==
            "0000000000000004", "its only capability is CAP_DAC_READ_SEARCH",
            f"CapEff={fields.get('CapEff')} CapBnd={fields.get('CapBnd')}")
    r.check(fields.get("NoNewPrivs") == "1" and fields.get("Seccomp") == "2",
            "no new privileges, a seccomp filter")
    r.check(ct.show("WatchdogUSec") not in ("", "0", "infinity"), "the watchdog is armed",
            ct.show("WatchdogUSec"))
    p = ct.sh(f"systemd-analyze verify --man=no {UNIT}")
    r.check(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
            "systemd-analyze verify of the installed unit", (p.stdout + p.stderr).strip())
    p = ct.sh(f"systemd-analyze security --no-pager {UNIT} | tail -1")
    m = re.search(r"exposure level for \S+: ([0-9.]+)", p.stdout)
    r.check(m is not None and float(m.group(1)) <= EXPOSURE_MAX,
            f"systemd-analyze security of the running unit <= {EXPOSURE_MAX}",
            m.group(1) if m else p.stdout)

    # the key detector reads root's authorized_keys (CAP_DAC_READ_SEARCH, inotify
    # under the system-call filter), when this build has it
    daemon_bin = (tree(V1) / "usr/sbin/nuvlabox-eventd").read_bytes()
    if b"nuvlabox.add-ssh-key" in daemon_bin:
        ct.sh(f"echo '{key_b}' >> /root/.ssh/authorized_keys", check=True)
        found = ""
        for _ in range(50):
            found = ct.sh("nuvlabox-event export", quiet=True).stdout
            if "nuvlabox.add-ssh-key.completed" in found and fp_b in found:
                break
            time.sleep(0.2)
        r.check("nuvlabox.add-ssh-key.completed" in found and fp_b in found,
                "a key added to /root/.ssh/authorized_keys becomes an event", fp_b)
    else:
        r.info("no ssh-key detector in this build: authorized_keys not exercised")
    journal = ct.sh(f"journalctl -u {UNIT} --no-pager -o cat", quiet=True).stdout
    denied = [l for l in journal.splitlines()
              if re.search(r"Permission denied|Operation not permitted|Bad system call", l)]
    r.check(not denied, "the daemon's log shows no permission or system-call denial",
            "; ".join(denied))

    ct.sh(f"useradd -m -G {USER} producer", check=True)
    p = ct.sh("nuvlabox-event record nuvlabox.reboot --message 'as root'")
    r.check(p.returncode == 0, "root records while the daemon runs")
    p = ct.sh("setpriv --reuid=producer --regid=producer --init-groups "
              "nuvlabox-event record nuvlabox.reboot.completed --message 'as a group member'")
    if p.returncode == 0:
        r.ok("a group member records while the daemon runs")
    else:
        o = ct.sh(f"stat -c '%U:%G %a' {STATE}/events.db", quiet=True).stdout.strip()
        if o.endswith(" 640"):
            r.knownissue("a group member records while the daemon runs",
                         f"exit {p.returncode}: the daemon made events.db {o}; "
                         "needs the C change (0660)")
        else:
            r.fail("a group member records while the daemon runs", p.stderr.strip())
    p = ct.sh("setpriv --reuid=producer --regid=producer --init-groups "
              "nuvlabox-event status --json")
    st = json.loads(p.stdout or "{}")
    r.check(p.returncode == 0 and st.get("pending", 0) >= 1, "a group member sees the status")
    lock = ct.sh(f"stat -c '%U:%G %a' {STATE}/upload.lock", quiet=True).stdout.strip()
    if st.get("uploader_running") is True:
        r.ok("a group member's status sees the daemon holding the upload lock")
    elif lock.endswith(" 640"):
        r.knownissue("a group member's status sees the daemon holding the upload lock",
                     f"upload.lock is {lock} and status opens it for writing; needs the C "
                     "change (probe the lock through a read-only descriptor)")
    else:
        r.fail("a group member's status sees the daemon holding the upload lock", str(st))

    p = ct.sh(f"systemctl reload {UNIT}")
    time.sleep(0.5)
    journal = ct.sh(f"journalctl -u {UNIT} --no-pager -o cat", quiet=True).stdout
    r.check(p.returncode == 0 and "reloaded" in journal, "systemctl reload (SIGHUP)")

    # configured, with nothing listening: the upload path runs under the unit's
    # sandbox (root's 0600 secret file, libcurl's resolver thread, sockets)
    ct.sh("install -m 0600 /dev/null /etc/nuvlabox-event/api-secret && "
          "echo not-a-real-secret > /etc/nuvlabox-event/api-secret", check=True)
    ct.sh(f"cp {CONF} {CONF}.orig && printf '%s\\n' 'endpoint = https://localhost:9' "
          "'nuvlabox_id = nuvlabox/1c56d2f0-4b7e-4a4e-9d0e-2f4c1a7b9e33' "
          "'api_key = credential/0b8f7e4c-2d1a-4f5e-8c3b-9a6d5e4f3c2b' "
          f"'api_secret_file = /etc/nuvlabox-event/api-secret' >> {CONF} && "
          f"systemctl reload {UNIT}", check=True)
    st = {}
    for _ in range(50):
        st = json.loads(ct.sh("nuvlabox-event status --json", quiet=True).stdout or "{}")
        if st.get("upload_state") == "offline" and st.get("nuvlabox_id"):
            break
        time.sleep(0.2)
    r.check(st.get("upload_state") == "offline" and ct.show("ActiveState") == "active"
            and not re.search(r"not permitted|denied|secret", str(st.get("last_error"))),
            "configured: an upload attempt runs in the sandbox and finds nobody listening",
            f"{st.get('upload_state')}: {st.get('last_error')}")
    ct.sh(f"mv {CONF}.orig {CONF} && rm /etc/nuvlabox-event/api-secret", check=True)

    # no configuration file at all (and no NuvlaEdge): still up
    ct.sh(f"mv {CONF} {CONF}.away && systemctl restart {UNIT}", check=True)
    time.sleep(1)
    r.check(ct.show("ActiveState") == "active" and ct.show("NRestarts") == "0",
            "without any configuration file the daemon stays up", ct.show("StatusText"))
    ct.sh(f"mv {CONF}.away {CONF} && systemctl reload {UNIT}", check=True)

    ct.sh(f"printf '%s\\n' '# edited by the test' 'max_in_flight = 4' >> {CONF}", check=True)
    edited = ct.sh(f"cat {CONF}", quiet=True).stdout
    before = json.loads(ct.sh("nuvlabox-event list --json", quiet=True).stdout or "[]")
    start1 = ct.show("ExecMainStartTimestampMonotonic")
    p = ct.sh(f"dpkg -i {PKGDIR}/{deb(V2).name}")
    r.check(p.returncode == 0, f"upgrade: dpkg -i {deb(V2).name}")
    time.sleep(1)
    r.check(ct.show("ExecMainStartTimestampMonotonic") != start1 and ct.show("ActiveState") ==
            "active", "upgrade restarts the daemon")
    journal = ct.sh(f"journalctl -u {UNIT} --no-pager -o cat", quiet=True).stdout
    r.check(f"nuvlabox-eventd {V2} starting" in journal, f"the running daemon is {V2}")
    r.check(ct.sh(f"cat {CONF}", quiet=True).stdout == edited,
            "upgrade keeps the edited configuration")
    after = json.loads(ct.sh("nuvlabox-event list --json", quiet=True).stdout or "[]")
    r.check([e["id"] for e in after] == [e["id"] for e in before] and before,
            "upgrade keeps the buffer", f"{len(before)} events before, {len(after)} after")

    p = ct.sh(f"dpkg -r {PKG}")
    r.check(p.returncode == 0, "dpkg -r")
    r.check(ct.sh(f"systemctl is-active {UNIT}", quiet=True).stdout.strip() != "active",
            "remove stops the daemon")
    r.check(ct.sh(f"test -f {STATE}/events.db && test -f {CONF}").returncode == 0,
            "remove keeps the buffer and the configuration")
    p = ct.sh(f"dpkg -P {PKG}")
    r.check(p.returncode == 0, "dpkg -P")
    r.check(ct.sh(f"test ! -e {STATE} && test ! -e {CONF}").returncode == 0,
            "purge deletes the buffer and the configuration")
    r.check(ct.sh(f"systemctl list-unit-files {UNIT} --no-legend", quiet=True).stdout.strip()
            == "", "purge leaves no unit behind")


# ---- the .rpm --------------------------------------------------------------------


def rpm_in(root, *args):
    """rpm --root @root, with /proc mounted in it (rpm runs the scriptlets
    chrooted there) in a private mount namespace."""
    script = 'mount -t proc proc "$1/proc" && shift && exec rpm "$@"'
    p = run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
             "sh", str(root), "--root", str(root)] + list(args), check=False)
    print(p.stdout + p.stderr)
    return p


def step_rpm(r):
    need_packages()
    f = str(rpmfile(V1))
    p = run(["rpm", "-qp", "--scripts", "--configfiles", "--requires", f])
    print(p.stdout)
    scripts = run(["rpm", "-qp", "--scripts", f], quiet=True).stdout
    for what, needle in (("%post makes the user with systemd-sysusers", "systemd-sysusers"),
                         ("%post falls back to useradd", "useradd -r"),
                         ("%post makes the state directory", "systemd-tmpfiles --create"),
                         ("%post enables and starts on install", "systemctl enable --now"),
                         ("%preun stops and disables on erase", "disable --now"),
                         ("%postun restarts on upgrade", "try-restart"),
                         ("scriptlets act only when systemd runs", "/run/systemd/system")):
        r.check(needle in scripts, what)
    conf = run(["rpm", "-qp", "--configfiles", f], quiet=True).stdout.split()
    r.check(conf == [CONF], "the one configuration file", str(conf))
    flags = run(["rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", f],
                quiet=True).stdout
    line = [l for l in flags.splitlines() if l.endswith(" " + CONF)]
    r.check(line and "c" in line[0].split()[0] and "n" in line[0].split()[0],
            "%config(noreplace) agent.conf", line[0] if line else "missing")
    req = run(["rpm", "-qp", "--requires", f], quiet=True).stdout
    for lib in ("libc.so.6", "libcurl.so.4", "libsqlite3.so.0", "libcjson.so.1",
                "libmbedcrypto.so", "libmbedx509.so"):
        r.check(lib in req, f"autoreq: {lib}")

    # every file where the unit and the programs expect it
    with tempfile.TemporaryDirectory(prefix="nbe-rpmroot-") as d:
        root = Path(d)
        p = run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-i", "--nodeps",
                 "--noscripts", f], check=False)
        print(p.stdout + p.stderr)
        r.check(p.returncode == 0, "rpm -i --root DIR --nodeps --noscripts")
        unit = root / "usr/lib/systemd/system" / UNIT
        r.check(unit.exists(), f"the unit is in /usr/lib/systemd/system")
        keys = unit_keys(unit.read_text()) if unit.exists() else {}
        for k in ("ExecStart",):
            exe = keys.get(k, ["?"])[0].split()[0]
            path = root / exe.lstrip("/")
            r.check(path.exists() and os.access(path, os.X_OK), f"{k} {exe} is there")
        users = (root / "usr/lib/sysusers.d/nuvlabox-event.conf").read_text()
        r.check(re.search(rf"^u {keys.get('User', ['?'])[0]} ", users, re.M) is not None,
                "sysusers.d declares the unit's User=")
        tmpf = (root / "usr/lib/tmpfiles.d/nuvlabox-event.conf").read_text()
        r.check(f"/var/lib/{keys.get('StateDirectory', ['?'])[0]} " in tmpf,
                "tmpfiles.d makes the unit's StateDirectory=")
        r.check((root / "etc" / keys.get("ConfigurationDirectory", ["?"])[0] / "agent.conf")
                .exists(), "agent.conf is in the unit's ConfigurationDirectory=")
        for doc in keys.get("Documentation", [""])[0].split():
            m = re.fullmatch(r"man:(.+)\((\d)\)", doc)
            r.check(m is not None and (root / f"usr/share/man/man{m.group(2)}/"
                                       f"{m.group(1)}.{m.group(2)}.gz").exists(),
                    f"Documentation {doc} is installed")
        cli = (root / "usr/bin/nuvlabox-event").read_bytes()
        helper = re.search(rb"(/usr/libexec/[a-z/-]*?)(?:/nuvlabox-event-net)?\x00", cli)
        helper_dir = helper.group(1).decode() if helper else "?"
        r.check((root / helper_dir.lstrip("/") / "nuvlabox-event-net").exists(),
                "the CLI's network helper is where the CLI looks for it", helper_dir)
        p = run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-V",
                 "--nodeps", PKG], check=False)
        r.check(p.returncode == 0 or not re.search(r"^(missing|\S*5)", p.stdout, re.M),
                "rpm -V: the files are as packaged", p.stdout.strip())

    # the scriptlets, run in a Debian root (rpm chroots to run them)
    root = fresh_root("root-rpm")
    try:
        run(["rpm", "--root", str(root), "--initdb"], check=False)
        c = Chroot(root)
        p = rpm_in(root, "-i", "--nodeps", f"{root}{PKGDIR}/{rpmfile(V1).name}")
        r.check(p.returncode == 0, "rpm -i runs %post")
        r.check(c.sh(f"getent passwd {USER}").returncode == 0, "%post made the user")
        r.check(owner(c, STATE) == f"{USER}:{USER} 2770", "%post made the state directory",
                owner(c, STATE))
        c.sh("nuvlabox-event record nuvlabox.activate", check=True)
        c.sh(f"echo 'max_in_flight = 2' >> {CONF}", check=True)
        p = rpm_in(root, "-U", "--nodeps", f"{root}{PKGDIR}/{rpmfile(V2).name}")
        r.check(p.returncode == 0, "rpm -U to the next version")
        r.check("max_in_flight = 2" in c.path(CONF).read_text(),
                "rpm -U keeps the edited configuration (noreplace)")
        r.check(c.path(f"{STATE}/events.db").exists(), "rpm -U keeps the buffer")
        p = rpm_in(root, "-e", "--nodeps", PKG)
        r.check(p.returncode == 0, "rpm -e runs %preun and %postun")
        r.check(c.path(f"{STATE}/events.db").exists(), "rpm -e keeps the buffer")
        r.check(not c.path("/usr/sbin/nuvlabox-eventd").exists(), "rpm -e removes the programs")
    finally:
        rmtree(root)


STEPS = {
    "build": step_build, "root": step_root, "lintian": step_lintian, "rpmlint": step_rpmlint,
    "unit": step_unit, "man": step_man, "rpm": step_rpm, "install": step_install,
    "boot": step_boot,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in STEPS:
        print(__doc__)
        return 64
    if os.geteuid() != 0 and sys.argv[1] in ("root", "install", "boot", "rpm"):
        print(f"{sys.argv[1]}: needs root (chroots, namespaces)")
        return 77
    step = sys.argv[1]
    WORK.mkdir(parents=True, exist_ok=True)
    r = Report(step)
    t0 = time.time()
    try:
        STEPS[step](r)
    except (Failed, subprocess.TimeoutExpired, OSError, ValueError) as e:
        r.fail(f"{step} stopped", str(e))
    print(f"({time.time() - t0:.0f} s)")
    return r.done()


if __name__ == "__main__":
    sys.exit(main())
