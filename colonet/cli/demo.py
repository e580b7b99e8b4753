"""`colonet demo`: run the failover demo once and print its summary."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from colonet.demo.run import DemoConfig, run_once
from colonet.errors import UsageError
from colonet.net.owner import only_in_this_process
from colonet.net.privilege import require_net_admin


def add_parsers(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="end-to-end failover demo in namespaces it builds and removes"
    )
    demo.add_argument(
        "--duration", type=float, default=6.0, metavar="S", help="client run time (default 6)"
    )
    demo.add_argument(
        "--kill-after",
        type=float,
        default=3.0,
        metavar="S",
        help="SIGKILL the primary this long after the first checkpoint (default 3)",
    )
    demo.add_argument(
        "--period-ms", type=int, default=100, metavar="MS", help="checkpoint period (default 100)"
    )
    demo.add_argument(
        "--heartbeat-timeout-ms", type=int, default=500, metavar="MS", help="(default 500)"
    )
    demo.add_argument(
        "--no-buffer",
        action="store_true",
        help="negative control: no output buffering, so the check must find violations",
    )
    demo.add_argument(
        "--guest",
        choices=("embedded", "qemu"),
        default="embedded",
        help="qemu: a real VM (Debian kernel + busybox, built by tools/build_guest.sh)",
    )
    demo.add_argument(
        "--out-dir",
        default="colonet-demo",
        metavar="DIR",
        help="where the run log (run.jsonl) and its timeline (timeline.png) go "
        "(default: ./colonet-demo; '' for none)",
    )
    demo.add_argument("--json", action="store_true", help="summary as one JSON line")
    demo.set_defaults(handler=run_demo)

    report = sub.add_parser("report", help="draw a run's timeline from its event log")
    report.add_argument("log", metavar="RUN.jsonl")
    report.add_argument("--out", required=True, metavar="FILE.png")
    report.set_defaults(handler=run_report)


def run_demo(args: argparse.Namespace) -> int:
    require_net_admin("colonet demo")
    try:
        config = DemoConfig(
            duration_s=args.duration,
            kill_after_s=args.kill_after,
            period_ms=args.period_ms,
            buffered=not args.no_buffer,
            heartbeat_timeout_ms=args.heartbeat_timeout_ms,
            guest=args.guest,
            out_dir=os.path.abspath(args.out_dir) if args.out_dir else None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    old_term = signal.signal(signal.SIGTERM, only_in_this_process(_interrupt))
    try:
        summary = run_once(config, out=sys.stderr if args.json else sys.stdout)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    if "write_error" in summary:
        # Said, but the exit code stays the verdict's: 1 must mean "violation".
        print(f"colonet: error: {summary['write_error']}", file=sys.stderr)
    return 0 if summary["verdict"] == "pass" else 1


def run_report(args: argparse.Namespace) -> int:
    from colonet.demo.report import render
    from colonet.demo.run_log import load_events

    events = load_events(args.log)
    try:
        drawn = render(events, args.out)
    except (ArithmeticError, ValueError) as exc:
        # load_events bounds every value the picture reads; this is the net
        # under it, so a log it missed still ends in a message, not a traceback.
        raise UsageError(f"cannot draw a timeline from {args.log}: {exc}") from None
    print(
        f"{args.out}: {drawn['checkpoints']} checkpoints, {drawn['applied']} applied, "
        f"{drawn['held_samples']} held samples, {drawn['failovers']} failover event(s)"
    )
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def print_summary(s: dict[str, Any]) -> None:
    rows = [
        ("guest", s["guest"]),
        ("output buffering", "on" if s["buffered"] else "OFF (negative control)"),
        ("requests sent / answered", f"{s['requests_sent']} / {s['answered']}"),
        (
            "answered by primary / by secondary",
            f"{s['answered_by_primary']} / {s['answered_by_secondary']}",
        ),
        (
            "checkpoints (primary / applied on secondary)",
            f"{s['checkpoints']} / {s['applied_on_secondary']}",
        ),
        ("checkpoint period ms", s["period_ms"]),
        ("guest pause ms median / p99", f"{s['pause_ms_median']} / {s['pause_ms_p99']}"),
        ("transfer ms median", s["transfer_ms_median"]),
        ("packets released", s["packets_released"]),
        ("packets held at the kill (discarded)", s["packets_held_at_kill"]),
        ("primary killed after s", s["kill_after_s"]),
        ("failover trigger", f"{s['failover_reason']} ({s['failover_detail']})"),
        ("resumed from checkpoint", s["last_committed"]),
        ("takeover ms (trigger -> guest running)", s["takeover_ms"]),
        ("failover ms (last primary reply -> first secondary reply)", s["failover_gap_ms"]),
        (
            "counter: last seen from primary / secondary resumed at",
            f"{s['last_value_from_primary']} / {s['takeover_counter']}",
        ),
        (
            "reply RTT ms median / p99 (via the primary)",
            f"{s['rtt_ms_median']} / {s['rtt_ms_p99']}",
        ),
        ("consistency check", "PASS" if s["verdict"] == "pass" else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nsummary")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for violation in s["violations"][:10]:
        print(f"  violation: {violation}")
    if len(s["violations"]) > 10:
        print(f"  ... and {len(s['violations']) - 10} more violation(s)")
