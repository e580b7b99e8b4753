"""Small pieces every command's parser and output share."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_socket(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--socket", required=required, metavar="PATH", help="control socket path")


def print_ok(result: Any) -> None:
    """`{"ok": true, "result": ...}` for --json; `result` is a record with to_json."""
    body = result.to_json() if hasattr(result, "to_json") else result
    print(json.dumps({"ok": True, "result": body}))
