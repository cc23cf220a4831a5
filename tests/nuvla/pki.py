#!/usr/bin/env python3
"""Test PKI for the mTLS gateway, generated at test time with the openssl CLI.

Makes, in one directory:

  ca.pem / ca.key                  the test CA (trusted by nginx and by the agent)
  server.pem / server.key          server certificate: localhost, 127.0.0.1, ::1
  server-wronghost.pem / .key      server certificate for wrong.example (same CA)
  client.pem / client.key          valid client certificate, CN = the nuvlabox id
  client-expired.pem / .key        same CA, valid 2020-01-01 .. 2021-01-01
  client-future.pem / .key         same CA, not valid before 2099 (clock tests)
  other-ca.pem / other-ca.key      an unrelated CA
  client-other-ca.pem / .key       client certificate signed by that other CA
  pki.json                         manifest: role -> absolute path, plus the CN

All keys are EC P-256 (fast to make; both OpenSSL and mbedTLS 2.28 handle them)
and mode 0600. Debian 12's OpenSSL 3.0 has no `x509 -not_before`, so every
certificate is signed with `openssl ca`, whose -startdate/-enddate can backdate.

Usage: python3 pki.py DIR [--nuvlabox-id nuvlabox/<uuid>]
Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid

OPENSSL = "openssl"

# openssl ca needs a config; everything a signing run needs lives in [ca_sect].
# policy_any accepts any subject; copy_extensions=none means only the
# extensions section named on the command line ends up in the certificate.
_CA_CONF = """\
[ ca ]
default_ca = ca_sect

[ ca_sect ]
dir             = {workdir}
database        = $dir/index.txt
new_certs_dir   = $dir/newcerts
certificate     = {ca_cert}
private_key     = {ca_key}
rand_serial     = yes
default_md      = sha256
default_days    = 825
policy          = policy_any
unique_subject  = no
copy_extensions = none
email_in_dn     = no

[ policy_any ]
commonName             = supplied
organizationName       = optional
organizationalUnitName = optional

[ ext_ca ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ ext_server ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
subjectAltName         = {server_san}

[ ext_client ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
"""

# A request config per subject: prompt=no takes the DN from the section, so a
# CN holding a slash ("nuvlabox/<uuid>") needs no -subj escaping.
_REQ_CONF = """\
[ req ]
prompt             = no
distinguished_name = dn
[ dn ]
O  = nuvlabox-event-agent tests
CN = {cn}
"""

# Validity windows as YYYYMMDDHHMMSSZ (GeneralizedTime; openssl ca accepts it).
_EXPIRED = ("20200101000000Z", "20210101000000Z")
_FUTURE = ("20990101000000Z", "20991231000000Z")


class PkiError(RuntimeError):
    """An openssl command failed; the message carries its stderr."""


def _run(args, cwd=None):
    """Runs openssl quietly; raises PkiError with its stderr on failure."""
    proc = subprocess.run([OPENSSL] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise PkiError("openssl %s failed: %s" % (" ".join(args[:2]),
                                                   proc.stderr.decode(errors="replace").strip()))
    return proc.stdout


def _new_key(path):
    """Makes an EC P-256 private key readable only by its owner."""
    _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-pkeyopt", "ec_param_enc:named_curve", "-out", path])
    os.chmod(path, 0o600)


def _new_csr(workdir, key, cn, out):
    conf = os.path.join(workdir, "req-%s.cnf" % uuid.uuid4().hex)
    with open(conf, "w") as f:
        f.write(_REQ_CONF.format(cn=cn))
    _run(["req", "-new", "-config", conf, "-key", key, "-out", out])


class _Ca:
    """One certificate authority: its key, self-signed cert and `openssl ca` state."""

    def __init__(self, workdir, name, cn, key, cert, server_san):
        self.dir = os.path.join(workdir, "ca-" + name)
        os.makedirs(os.path.join(self.dir, "newcerts"))
        open(os.path.join(self.dir, "index.txt"), "w").close()
        self.conf = os.path.join(self.dir, "ca.cnf")
        self.key, self.cert = key, cert
        with open(self.conf, "w") as f:
            f.write(_CA_CONF.format(workdir=self.dir, ca_cert=cert, ca_key=key,
                                    server_san=server_san))
        _new_key(key)
        csr = os.path.join(self.dir, "ca.csr")
        _new_csr(self.dir, key, cn, csr)
        # -selfsign: the CA signs its own request; backdated one day so a
        # slightly slow clock on either side does not make it "not yet valid".
        _run(["ca", "-batch", "-notext", "-config", self.conf, "-selfsign",
              "-keyfile", key, "-in", csr, "-out", cert, "-extensions", "ext_ca",
              "-startdate", _utc_offset(-86400), "-days", "3650"])

    def issue(self, cn, key, cert, ext, window=None, san=None):
        """Makes a key and a certificate for `cn`, signed by this CA."""
        _new_key(key)
        csr = os.path.join(self.dir, "%s.csr" % uuid.uuid4().hex)
        _new_csr(self.dir, key, cn, csr)
        conf = self.conf
        if san is not None:
            # A per-certificate config only to change subjectAltName.
            conf = os.path.join(self.dir, "ca-%s.cnf" % uuid.uuid4().hex)
            with open(conf, "w") as f:
                f.write(_CA_CONF.format(workdir=self.dir, ca_cert=self.cert,
                                        ca_key=self.key, server_san=san))
        args = ["ca", "-batch", "-notext", "-config", conf, "-in", csr, "-out", cert,
                "-extensions", ext]
        if window:
            args += ["-startdate", window[0], "-enddate", window[1]]
        else:
            args += ["-startdate", _utc_offset(-86400), "-days", "825"]
        _run(args)


def _utc_offset(seconds):
    import datetime
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y%m%d%H%M%SZ")


def _is_ip(name):
    import ipaddress
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def generate(out_dir, nuvlabox_id=None, extra_ips=()):
    """Generates the whole test PKI into out_dir; returns the manifest dict.

    nuvlabox_id is the client certificates' CN (default: a random
    nuvlabox/<uuid>). extra_ips (addresses or host names) are added to the
    server certificate's names (a gateway reached through a veth pair). Existing files in out_dir are
    overwritten.
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if nuvlabox_id is None:
        nuvlabox_id = "nuvlabox/%s" % uuid.uuid4()
    p = lambda name: os.path.join(out_dir, name)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="pki-work-", dir=out_dir) as work:
        ca = _Ca(work, "main", "nuvlabox-event test CA", p("ca.key"), p("ca.pem"),
                 "DNS:localhost, IP:127.0.0.1, IP:::1" +
                 "".join(", %s:%s" % ("IP" if _is_ip(n) else "DNS", n) for n in extra_ips))
        ca.issue("localhost", p("server.key"), p("server.pem"), "ext_server")
        ca.issue("wrong.example", p("server-wronghost.key"), p("server-wronghost.pem"),
                 "ext_server", san="DNS:wrong.example")
        ca.issue(nuvlabox_id, p("client.key"), p("client.pem"), "ext_client")
        ca.issue(nuvlabox_id, p("client-expired.key"), p("client-expired.pem"),
                 "ext_client", window=_EXPIRED)
        ca.issue(nuvlabox_id, p("client-future.key"), p("client-future.pem"),
                 "ext_client", window=_FUTURE)
        other = _Ca(work, "other", "some other CA", p("other-ca.key"), p("other-ca.pem"),
                    "DNS:localhost")
        other.issue(nuvlabox_id, p("client-other-ca.key"), p("client-other-ca.pem"),
                    "ext_client")
    manifest = {
        "dir": out_dir,
        "client_cn": nuvlabox_id,
        "ca": p("ca.pem"), "ca_key": p("ca.key"),
        "server_cert": p("server.pem"), "server_key": p("server.key"),
        "server_wronghost_cert": p("server-wronghost.pem"),
        "server_wronghost_key": p("server-wronghost.key"),
        "client_cert": p("client.pem"), "client_key": p("client.key"),
        "client_expired_cert": p("client-expired.pem"),
        "client_expired_key": p("client-expired.key"),
        "client_future_cert": p("client-future.pem"),
        "client_future_key": p("client-future.key"),
        "other_ca": p("other-ca.pem"), "other_ca_key": p("other-ca.key"),
        "client_other_ca_cert": p("client-other-ca.pem"),
        "client_other_ca_key": p("client-other-ca.key"),
    }
    with open(p("pki.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate the test PKI for the mTLS gateway.")
    ap.add_argument("dir", help="output directory (created if missing)")
    ap.add_argument("--nuvlabox-id", help="client certificate CN (default: random nuvlabox/<uuid>)")
    args = ap.parse_args(argv)
    try:
        manifest = generate(args.dir, args.nuvlabox_id)
    except (PkiError, OSError) as e:
        print("pki: %s" % e, file=sys.stderr)
        return 1
    json.dump(manifest, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
