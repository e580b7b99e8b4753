"""Command line: parse the flags, run every measurement per link, print the result.

Also the dispatch for worker processes: `--worker KIND NS JSON` as the first
arguments runs one worker (see `workers`) instead of the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import __doc__ as PACKAGE_DOC
from .colonet_api import REPO, Topology, colonet_version, run_prefix
from .common import COMMIT_PERIOD_S, DEFAULT, QUICK, Params, log
from .latency import run_release_latency
from .memory import run_memory
from .results import Results, render
from .rtt import run_rtt
from .throughput import run_throughput
from .workers import worker_main


def run_link(res: Results, link: str, backends: list[str], p: Params) -> None:
    """Build one topology, run all four measurements on it, always tear it down."""
    topo = Topology(run_prefix(), link=link)  # type: ignore[arg-type]
    raw: dict[str, Any] = {}
    res.raw[link] = raw
    try:
        log(f"building {link} topology ({topo.prefix}*)")
        topo.build()
        link_label = f"{link} ({topo.mode})"
        run_throughput(res, topo, link_label, backends, p, raw)
        for backend in backends:
            r = raw[backend]
            r["release_latency"] = run_release_latency(res, topo, link_label, backend, p)
            r["memory"] = run_memory(res, topo, link_label, backend, p)
        raw["rtt"] = run_rtt(res, topo, link_label, backends, p)
    finally:
        log(f"tearing down {link} topology")
        topo.destroy()


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "colonet": colonet_version(),
        "git": commit or "?",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(PACKAGE_DOC or "").split("\n\n")[0])
    ap.add_argument(
        "--link",
        choices=("veth", "tap", "both"),
        default="veth",
        help="topology: routed veth (default), bridged tap with relay, or both",
    )
    ap.add_argument(
        "--backend",
        choices=("nfqueue", "tap", "both"),
        default="both",
        help="filter backend(s) to measure (default: both)",
    )
    ap.add_argument(
        "--rate",
        type=int,
        default=0,
        metavar="PPS",
        help="pace the throughput sender (default 0: blast as fast as it can)",
    )
    ap.add_argument("--quick", action="store_true", help="smaller counts (~30 s per link)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return ap


def _print_json(res: Results) -> None:
    body = {
        "config": res.config,
        "rows": [{**r.__dict__, "ratio": r.ratio} for r in res.rows],
        "oddities": res.oddities,
        "raw": res.raw,
    }
    print(json.dumps(body, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tools/bench_buffer.py`; the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("bench_buffer: needs root (network namespaces, iptables, tc)", file=sys.stderr)
        return 2
    p = dataclasses.replace(QUICK if args.quick else DEFAULT, rate=max(0, args.rate))
    links = ["veth", "tap"] if args.link == "both" else [args.link]
    backends = ["nfqueue", "tap"] if args.backend == "both" else [args.backend]
    res = Results(
        config={
            "machine": machine_info(),
            "params": p.__dict__,
            "links": links,
            "backends": backends,
            "mode": "quick" if args.quick else "default",
            "commit_period_s": COMMIT_PERIOD_S,
        }
    )
    t0 = time.monotonic()
    try:
        for link in links:
            run_link(res, link, backends, p)
    except KeyboardInterrupt:
        log("interrupted; everything built so far was torn down")
        return 130
    res.config["runtime_s"] = round(time.monotonic() - t0, 1)
    log(f"done in {res.config['runtime_s']} s")
    if args.json:
        _print_json(res)
    else:
        print(render(res))
    return 0
