"""The `colonet` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from colonet.errors import ColonetError, UsageError

log = logging.getLogger("colonet")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _add_socket(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, metavar="PATH", help="control socket path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colonet", description="Output commit on the network for checkpointed guests."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    filt = sub.add_parser("filter", help="buffer filters on a guest's netdevs")
    fsub = filt.add_subparsers(dest="filter_command", required=True)

    run = fsub.add_parser("run", help="run filters in the foreground until SIGINT/SIGTERM")
    run.add_argument(
        "--netdev",
        action="append",
        required=True,
        metavar="IF",
        help="host netdev carrying guest output (repeat for each)",
    )
    _add_socket(run)
    run.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "tap", "nfqueue"),
        help="tap: every Ethernet frame; nfqueue: IP packets only; auto (default): tap "
        "where the kernel allows it, else nfqueue",
    )
    run.add_argument(
        "--max-packets",
        type=int,
        default=50_000,
        metavar="N",
        help="hard limit of held packets per netdev (default 50000)",
    )
    run.add_argument(
        "--max-bytes",
        type=int,
        default=64 * 1024 * 1024,
        metavar="B",
        help="hard limit of held bytes per netdev (default 64 MiB)",
    )
    run.add_argument(
        "--high-water",
        type=float,
        default=0.8,
        metavar="RATIO",
        help="fraction of a limit that asks for an early checkpoint",
    )
    run.add_argument(
        "--no-batch-release",
        "--no-batch-verdict",
        dest="no_batch_release",
        action="store_true",
        help="release packet by packet instead of in batches (slower)",
    )
    run.add_argument(
        "--retain-payloads",
        action="store_true",
        help="nfqueue: keep each held packet's bytes so `filter dump` can write them",
    )
    run.add_argument(
        "--capture-released",
        metavar="FILE",
        help="append every released epoch to this pcapng file (epoch in each comment)",
    )
    run.add_argument(
        "--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics here (off by default)"
    )
    _add_json(run)

    for name, helptext in (
        ("checkpoint", "seal the open epoch on every netdev; prints its number"),
        ("status", "held/released/discarded/tail-dropped per netdev and epoch"),
    ):
        p = fsub.add_parser(name, help=helptext)
        _add_socket(p)
        _add_json(p)
    dump = fsub.add_parser("dump", help="write the packets held now to a pcapng file")
    _add_socket(dump)
    dump.add_argument("--out", required=True, metavar="FILE", help="e.g. held.pcapng")
    _add_json(dump)
    commit = fsub.add_parser("commit", help="release sealed epochs up to EPOCH (default: all)")
    _add_socket(commit)
    commit.add_argument("epoch", nargs="?", type=int, metavar="EPOCH")
    _add_json(commit)
    failover = fsub.add_parser("failover", help="settle held packets and stop buffering")
    _add_socket(failover)
    failover.add_argument(
        "--role",
        required=True,
        choices=("primary", "secondary"),
        help="primary: go on alone (release); secondary: peer took over (discard)",
    )
    _add_json(failover)

    cleanup = sub.add_parser("cleanup", help="remove kernel state a crashed colonet left")
    cleanup.add_argument(
        "--force", action="store_true", help="also remove rules of colonet processes still running"
    )
    _add_json(cleanup)

    from colonet.cli_engine import add_engine_parsers

    add_engine_parsers(sub)

    from colonet.cli_demo import add_demo_parser
    from colonet.cli_keys import add_keys_parser

    add_keys_parser(sub)

    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _dispatch(args)
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


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "filter":
        if args.filter_command == "run":
            from colonet.cli_filter_run import run_filters

            return run_filters(args)
        return _filter_request(args)
    if args.command == "cleanup":
        return _cleanup(args)
    if args.command == "primary":
        from colonet.cli_primary import run_primary

        return run_primary(args)
    if args.command == "secondary":
        from colonet.cli_secondary import run_secondary

        return run_secondary(args)
    if args.command in ("checkpoint", "status", "failover"):
        return _engine_request(args)
    if args.command == "keys":
        from colonet.cli_keys import run_keys

        return run_keys(args)
    if args.command == "demo":
        from colonet.cli_demo import run_demo

        return run_demo(args)
    if args.command == "report":
        from colonet.cli_demo import run_report

        return run_report(args)
    raise UsageError(f"unknown command {args.command}")


def _filter_request(args: argparse.Namespace) -> int:
    from colonet.control.client import request

    body: dict[str, Any] = {"op": args.filter_command}
    if args.filter_command == "commit" and args.epoch is not None:
        body["epoch"] = args.epoch
    if args.filter_command == "failover":
        body["role"] = args.role
    if args.filter_command == "dump":
        body["path"] = os.path.abspath(args.out)
    result = request(args.socket, body)
    if args.json:
        print(json.dumps({"ok": True, "result": result}))
    elif args.filter_command == "checkpoint":
        print(result["epoch"])
    elif args.filter_command == "commit":
        print(
            f"committed up to epoch {result['epoch']}: "
            f"{result['released_packets']} packet(s) released"
        )
    elif args.filter_command == "dump":
        print(f"{result['packets']} held packet(s) written to {result['path']}")
    elif args.filter_command == "failover":
        verb = "released" if args.role == "primary" else "discarded"
        count = result[f"{verb}_packets"]
        print(f"failover as {args.role}: {count} held packet(s) {verb}; buffering stopped")
    else:
        print(format_status(result))
    return 0


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"open epoch {status['open_epoch']}, last sealed {status['last_sealed']}, "
        f"last released {status['last_released']}, "
        f"high-water requests {status.get('high_water_requests', 0)}"
    ]
    head = (
        f"{'netdev':<12}{'backend':<9}{'state':<12}{'held pkts':>10}{'held B':>11}"
        f"{'released':>10}{'discarded':>10}{'tail-drop':>10}"
    )
    lines.append(head)
    for n in status["netdevs"]:
        lines.append(
            f"{n['netdev']:<12}{n['backend']:<9}{n['state']:<12}{n['held_packets']:>10}"
            f"{n['held_bytes']:>11}{n['released_packets']:>10}{n['discarded_packets']:>10}"
            f"{n['tail_dropped_packets']:>10}"
        )
        for e in n["epochs"]:
            tag = "sealed" if e["sealed"] else "open"
            lines.append(
                f"  epoch {e['epoch']:<6} {tag:<7}{e['held_packets']:>10} pkts "
                f"{e['held_bytes']:>10} B  tail-dropped {e['tail_dropped_packets']}"
            )
    return "\n".join(lines)


def _cleanup(args: argparse.Namespace) -> int:
    from colonet.buffer import iptables, tc_steering
    from colonet.net.privilege import require_net_admin

    require_net_admin("colonet cleanup")
    removed = iptables.cleanup(force=args.force) + tc_steering.cleanup(force=args.force)
    if args.json:
        print(json.dumps({"ok": True, "result": {"removed": removed}}))
    else:
        for line in removed:
            print(f"removed {line}")
        print(f"{len(removed)} colonet item(s) removed")
    return 0


def _engine_request(args: argparse.Namespace) -> int:
    from colonet.control.client import request

    result = request(args.socket, {"op": args.command})
    if args.json:
        print(json.dumps({"ok": True, "result": result}))
    elif args.command == "checkpoint":
        print("checkpoint requested")
    elif args.command == "failover":
        mode = result.get("mode", "secondary")
        print(f"failover requested ({mode}); state now: {result.get('state', 'required')}")
    elif result.get("role") == "secondary":
        print(
            f"secondary: last applied checkpoint {result['last_applied']}, "
            f"failover {result['failover'].get('state')}"
        )
    else:
        last = result.get("last") or {}
        print(
            f"checkpoints: {result['checkpoints']}; last: epoch {last.get('epoch')}, "
            f"pause {last.get('pause_ms')} ms, transfer {last.get('transfer_ms')} ms"
        )
        if "filters" in result:
            print(format_status(result["filters"]))
    return 0
