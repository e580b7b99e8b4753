"""`colonet keys`: make the replication link's keys (see colonet.checkpoint.keys)."""

from __future__ import annotations

import argparse
import json

from colonet.checkpoint.keys import make_psk, make_tls


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make a pre-shared key (and TLS certificates) for replication")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tls", action="store_true", help="also a CA and a certificate per end")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    made = [make_psk(args.out)] + (make_tls(args.out, args.days) if args.tls else [])
    if args.json:
        print(json.dumps({"ok": True, "result": {"files": made}}))
    else:
        for path in made:
            print(path)
    return 0
