#!/usr/bin/env python3
"""Kill the primary at many random times; check the client never saw a rollback.

Run from the repository root as root (it builds namespaces):

    .venv/bin/python tools/consistency_check.py [--runs 100] [--no-buffer-runs 20] [--json]

Each run is one `colonet demo` (colonet.demo.run_once) with its kill time
drawn uniformly from [--min-kill, --max-kill] seconds after the first
checkpoint: the primary gets SIGKILL, the secondary takes over, and the
client's replies are checked (no value goes back or repeats; the secondary
resumes at or above the last counter the client saw). The negative control
runs the same harness without output buffering and must find violations.
Measured per run: the verdict, the failover gap the client saw (last reply
from the primary -> first reply from the secondary) and the secondary's own
takeover time (trigger -> guest running). Progress on stderr, a Markdown
table (or --json) on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from colonet.demo.run import DemoConfig, run_once  # noqa: E402
from colonet.net.privilege import require_net_admin  # noqa: E402


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run_series(args: argparse.Namespace, buffered: bool, runs: int) -> dict[str, Any]:
    rng = random.Random(args.seed + (0 if buffered else 1))
    results = []
    for i in range(runs):
        kill = round(rng.uniform(args.min_kill, args.max_kill), 3)
        summary = run_once(
            DemoConfig(
                duration_s=kill + args.after_kill,
                kill_after_s=kill,
                period_ms=args.period_ms,
                buffered=buffered,
            )
        )
        results.append(summary)
        print(
            f"{'buffered' if buffered else 'no-buffer'} run {i + 1}/{runs}: kill at {kill:.3f} s, "
            f"{summary['verdict']}, gap {summary['failover_gap_ms']} ms, "
            f"{len(summary['violations'])} violation(s)",
            file=sys.stderr,
            flush=True,
        )
    gaps = [r["failover_gap_ms"] for r in results if r["failover_gap_ms"] is not None]
    takeovers = [r["takeover_ms"] for r in results if r["takeover_ms"] is not None]
    return {
        "buffered": buffered,
        "runs": runs,
        "kill_points": sorted({r["kill_after_s"] for r in results}),
        "passed": sum(r["verdict"] == "pass" for r in results),
        "with_violations": sum(bool(r["violations"]) for r in results),
        "failover_gap_ms_median": _pct(gaps, 0.5),
        "failover_gap_ms_p99": _pct(gaps, 0.99),
        "failover_gap_ms_max": max(gaps, default=None),
        "takeover_ms_median": _pct(takeovers, 0.5),
        "requests_answered": sum(r["answered"] for r in results),
        "first_violations": [v for r in results for v in r["violations"][:1]][:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--no-buffer-runs", type=int, default=20)
    parser.add_argument("--min-kill", type=float, default=0.3)
    parser.add_argument("--max-kill", type=float, default=3.0)
    parser.add_argument("--after-kill", type=float, default=1.2, help="client time after the kill")
    parser.add_argument("--period-ms", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    require_net_admin("tools/consistency_check.py")
    series = [run_series(args, True, args.runs)]
    if args.no_buffer_runs:
        series.append(run_series(args, False, args.no_buffer_runs))
    if args.json:
        print(json.dumps(series))
    else:
        print(
            f"Consistency over random kill times (SIGKILL of the primary, kill "
            f"{args.min_kill}-{args.max_kill} s after the first checkpoint, checkpoint "
            f"every {args.period_ms} ms, client INC every 5 ms)\n"
        )
        print(
            "| buffering | runs | passed | runs with violations | failover gap ms "
            "median / p99 / max | takeover ms median | replies checked |"
        )
        print("|---|---|---|---|---|---|---|")
        for s in series:
            print(
                f"| {'on' if s['buffered'] else 'off (negative control)'} | {s['runs']} | "
                f"{s['passed']} | {s['with_violations']} | {s['failover_gap_ms_median']} / "
                f"{s['failover_gap_ms_p99']} / {s['failover_gap_ms_max']} | "
                f"{s['takeover_ms_median']} | {s['requests_answered']} |"
            )
        for s in series:
            for v in s["first_violations"]:
                print(f"\n{'buffered' if s['buffered'] else 'no-buffer'} violation e.g.: {v}")
    buffered_ok = series[0]["passed"] == series[0]["runs"]
    control_ok = len(series) < 2 or series[1]["with_violations"] > 0
    return 0 if buffered_ok and control_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
