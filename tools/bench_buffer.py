#!/usr/bin/env python3
"""Benchmark colonet's buffer filters in throwaway namespaces: the entry point.

Run from the repository root, as root:

    .venv/bin/python tools/bench_buffer.py [--link veth|tap|both]
        [--backend nfqueue|tap|both] [--quick] [--rate PPS] [--json]

What it measures, and how, is described in bench_buffer/__init__.py; the code
is the bench_buffer/ package beside this file (Python imports the package,
not this script, for `import bench_buffer`: a package directory takes
precedence over a module of the same name). The worker processes are this
script run again with `--worker KIND NS JSON`.
"""

from bench_buffer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
