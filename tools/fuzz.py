#!/usr/bin/env python3
"""Fuzz what a replication peer can reach: frame decoder, both protocol state
machines, checkpoint body decoder, PSK record layer.

    .venv/bin/python tools/fuzz.py [--examples 100000] [--target NAME ...]

Runs tests/fuzz/test_fuzz.py under pytest with COLONET_FUZZ_EXAMPLES set, so
the targets are the ones CI runs with fewer examples. Every input must end
in a result, a clean protocol error or "need more bytes"; the first other
exception (or a buffer past its bound) is shrunk by hypothesis and printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("frame_decoder", "state_machines", "checkpoint_body", "record_layer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--target", action="append", choices=TARGETS)
    args = parser.parse_args()
    env = dict(os.environ, COLONET_FUZZ_EXAMPLES=str(args.examples))
    failed = 0
    print("| target | examples | result | seconds |\n|---|---|---|---|")
    for target in args.target or TARGETS:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "--timeout", "0", f"tests/fuzz/test_fuzz.py::test_{target}"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        ok = done.returncode == 0
        failed += not ok
        print(
            f"| {target} | {args.examples:,} | {'no failure' if ok else 'FAILED'} | "
            f"{time.monotonic() - started:.0f} |",
            flush=True,
        )
        if not ok:
            print(done.stdout[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
