"""The `colonet` command: one parser per command module, dispatch by handler.

Each module under `colonet.cli` adds its sub-commands with `add_parsers`
and tags each with `set_defaults(handler=...)`; `main` calls the handler.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from colonet.cli import demo, engine, filters, keys
from colonet.errors import ColonetError

log = logging.getLogger("colonet")

COMMAND_MODULES = (filters, engine, keys, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colonet", description="Output commit on the network for checkpointed guests."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.handler(args)
    except ColonetError as exc:
        return _fail(args, exc, exc.exit_code)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    kind = getattr(exc, "kind", type(exc).__name__)
    if getattr(args, "json", False):
        body = {"ok": False, "error": {"kind": kind, "message": str(exc), "exit_code": code}}
        print(json.dumps(body))
    print(f"colonet: error: {exc}", file=sys.stderr)
    return code
