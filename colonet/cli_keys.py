"""`colonet keys`: make the replication link's keys for a test or a pair of hosts.

    colonet keys --out DIR          DIR/psk (32 random bytes, hex, mode 0600)
    colonet keys --out DIR --tls    also a private CA and a certificate for each end
                                    (DIR/ca.pem, DIR/{primary,secondary}.{pem,key}),
                                    made with the openssl command

Copy DIR/psk to both hosts (or the CA and each end's certificate and key).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess

from colonet.errors import ColonetError, UsageError


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make a pre-shared key (and TLS certificates) for replication")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tls", action="store_true", help="also a CA and a certificate per end")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--json", action="store_true")


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


def run_keys(args: argparse.Namespace) -> int:
    os.makedirs(args.out, mode=0o700, exist_ok=True)
    psk = os.path.join(args.out, "psk")
    if os.path.exists(psk):
        raise UsageError(f"{psk} exists: keys are never overwritten, pick another --out")
    _private_file(psk, secrets.token_hex(32).encode() + b"\n")
    made = [psk] + (make_tls(args.out, args.days) if args.tls else [])
    if args.json:
        print(json.dumps({"ok": True, "result": {"files": made}}))
    else:
        for path in made:
            print(path)
    return 0
