"""Keys for the replication link: a pre-shared key, and TLS certificates.

    make_psk(DIR)        DIR/psk (32 random bytes, hex, mode 0600)
    make_tls(DIR, days)  a private CA and a certificate for each end
                         (DIR/ca.pem, DIR/{primary,secondary}.{pem,key}),
                         made with the openssl command

Copy DIR/psk to both hosts (or the CA and each end's certificate and key).
Keys are never overwritten.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

from colonet.errors import ColonetError, UsageError


def _private_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ColonetError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_tls(out: str, days: int) -> list[str]:
    if shutil.which("openssl") is None:
        raise ColonetError("--tls needs the openssl command (Debian package openssl)")
    ca_key, ca = os.path.join(out, "ca.key"), os.path.join(out, "ca.pem")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=colonet replication CA",
        "-days", str(days), "-out", ca,
    )  # fmt: skip
    made = [ca]
    for end in ("primary", "secondary"):
        key, csr, pem = (os.path.join(out, f"{end}.{x}") for x in ("key", "csr", "pem"))
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        _openssl("req", "-new", "-key", key, "-subj", f"/CN=colonet {end}", "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", str(days), "-out", pem,
        )  # fmt: skip
        os.unlink(csr)
        os.chmod(key, 0o600)
        made += [pem, key]
    os.chmod(ca_key, 0o600)
    return made


def make_psk(out: str) -> str:
    os.makedirs(out, mode=0o700, exist_ok=True)
    psk = os.path.join(out, "psk")
    if os.path.exists(psk):
        raise UsageError(f"{psk} exists: keys are never overwritten, pick another --out")
    _private_file(psk, secrets.token_hex(32).encode() + b"\n")
    return psk
