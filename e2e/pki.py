"""Certificates for the e2e control plane, made with the `openssl` command line.

One throw-away CA signs everything: the API server's serving certificate and the client
certificates of the test driver (system:masters), kube-controller-manager and the test node
agent (system:node:<name>). Keys are P-256 (fast to make); certificates last two days.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "2"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "ca") -> KeyPair:
    ca = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(ca.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(ca.key), "-out", str(ca.cert), "-days", _DAYS,
        "-subj", "/CN=octavo-e2e-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    return ca


def issue(
    directory: Path,
    ca: KeyPair,
    name: str,
    common_name: str,
    organizations: tuple[str, ...] = (),
    ip_sans: tuple[str, ...] = (),
    dns_sans: tuple[str, ...] = (),
    server: bool = False,
) -> KeyPair:
    """A leaf certificate signed by `ca`: a server certificate when `server`, else a client one.

    For client certificates the API server reads the user name from CN and groups from O.
    """
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(pair.key)
    subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", "-key", str(pair.key), "-out", str(csr), "-subj", subject)
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
    ]
    sans = [f"IP:{ip}" for ip in ip_sans] + [f"DNS:{dns}" for dns in dns_sans]
    if sans:
        extensions.append("subjectAltName=" + ",".join(sans))
    extfile = directory / f"{name}.ext"
    extfile.write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(pair.cert), "-days", _DAYS, "-extfile", str(extfile),
    )
    csr.unlink()
    extfile.unlink()
    return pair


def make_signing_key(directory: Path, name: str) -> KeyPair:
    """A bare key pair (no certificate): `cert` holds the public key. Used to sign and verify
    service account tokens."""
    pair = KeyPair(directory / f"{name}.pub", directory / f"{name}.key")
    _new_key(pair.key)
    _openssl("pkey", "-in", str(pair.key), "-pubout", "-out", str(pair.cert))
    return pair
