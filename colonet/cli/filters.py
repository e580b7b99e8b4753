"""`colonet filter ...` and `colonet cleanup`: parsers and their handlers."""

from __future__ import annotations

import argparse
import json
import os

from colonet.backends import registry
from colonet.buffer.epoch_queue import BufferLimitError, BufferLimits
from colonet.buffer.status import FilterSetStatus
from colonet.cli.common import add_json, add_socket, print_ok
from colonet.control.client import FilterClient
from colonet.errors import UsageError
from colonet.net.privilege import require_net_admin
from colonet.node.config import FilterConfig, parse_address
from colonet.node.filter_node import run_filter_node
from colonet.workdir import sweep_stale_workdirs


def add_parsers(sub: argparse._SubParsersAction) -> None:
    filt = sub.add_parser("filter", help="buffer filters on a guest's netdevs")
    fsub = filt.add_subparsers(dest="filter_command", required=True)
    _add_run(fsub)

    p = fsub.add_parser("checkpoint", help="seal the open epoch on every netdev; prints its number")
    add_socket(p)
    p.add_argument(
        "--epoch", type=int, metavar="N", help="refuse unless N is the open epoch (one count)"
    )
    add_json(p)
    p.set_defaults(handler=_checkpoint)
    p = fsub.add_parser("status", help="held/released/discarded/tail-dropped per netdev and epoch")
    add_socket(p)
    add_json(p)
    p.set_defaults(handler=_status)
    p = fsub.add_parser("dump", help="write the packets held now to a pcapng file")
    add_socket(p)
    p.add_argument(
        "--out", required=True, metavar="FILE", help="a new file, e.g. held.pcapng (mode 0600)"
    )
    add_json(p)
    p.set_defaults(handler=_dump)
    p = fsub.add_parser("commit", help="release sealed epochs up to EPOCH (default: all)")
    add_socket(p)
    p.add_argument("epoch", nargs="?", type=int, metavar="EPOCH")
    add_json(p)
    p.set_defaults(handler=_commit)
    p = fsub.add_parser("failover", help="settle held packets and stop buffering")
    add_socket(p)
    p.add_argument(
        "--role",
        required=True,
        choices=("primary", "secondary"),
        help="primary: go on alone (release); secondary: peer took over (discard)",
    )
    add_json(p)
    p.set_defaults(handler=_failover)

    cleanup = sub.add_parser("cleanup", help="remove kernel state a crashed colonet left")
    cleanup.add_argument(
        "--force", action="store_true", help="also remove rules of colonet processes still running"
    )
    add_json(cleanup)
    cleanup.set_defaults(handler=_cleanup)


def _add_run(fsub: argparse._SubParsersAction) -> None:
    run = fsub.add_parser("run", help="run filters in the foreground until SIGINT/SIGTERM")
    run.add_argument(
        "--netdev",
        action="append",
        required=True,
        metavar="IF",
        help="host netdev carrying guest output (repeat for each)",
    )
    add_socket(run)
    kinds = "; ".join(f"{n}: {registry.get(n).summary}" for n in registry.names())
    run.add_argument(
        "--backend",
        default=registry.AUTO,
        choices=registry.choices(),
        help=f"{kinds}; auto (default): the first of {', '.join(registry.AUTO_ORDER)} "
        "the kernel allows",
    )
    defaults = BufferLimits()
    run.add_argument(
        "--max-packets",
        type=int,
        default=defaults.max_held_packets,
        metavar="N",
        help=f"hard limit of held packets per netdev (default {defaults.max_held_packets})",
    )
    run.add_argument(
        "--max-bytes",
        type=int,
        default=defaults.max_held_bytes,
        metavar="B",
        help="hard limit of held bytes per netdev (default 64 MiB)",
    )
    run.add_argument(
        "--high-water",
        type=float,
        default=defaults.high_water_ratio,
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
        help="write every released epoch to this new pcapng file, mode 0600 (epoch in each "
        "comment; refused if FILE exists)",
    )
    run.add_argument(
        "--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics here (off by default)"
    )
    add_json(run)
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        limits = BufferLimits(
            max_held_packets=args.max_packets,
            max_held_bytes=args.max_bytes,
            high_water_ratio=args.high_water,
        )
    except BufferLimitError as exc:
        raise UsageError(str(exc)) from None
    return run_filter_node(
        FilterConfig(
            netdevs=tuple(args.netdev),
            control_socket=args.socket,
            backend=args.backend,
            limits=limits,
            batch_release=not args.no_batch_release,
            retain_payloads=args.retain_payloads,
            capture_released=os.path.abspath(args.capture_released)
            if args.capture_released
            else None,
            metrics_address=parse_address(args.metrics, "--metrics") if args.metrics else None,
            json_events=args.json,
        )
    )


def _checkpoint(args: argparse.Namespace) -> int:
    epoch = FilterClient(args.socket).begin_checkpoint(args.epoch)
    if args.json:
        print_ok({"epoch": epoch})
    else:
        print(epoch)
    return 0


def _commit(args: argparse.Namespace) -> int:
    result = FilterClient(args.socket).commit(args.epoch)
    if args.json:
        print_ok(result)
    else:
        print(f"committed up to epoch {result.epoch}: {result.released_packets} packet(s) released")
    return 0


def _failover(args: argparse.Namespace) -> int:
    result = FilterClient(args.socket).failover(args.role)
    if args.json:
        print_ok(result)
    else:
        print(
            f"failover as {args.role}: {result.settled_packets} held packet(s) {result.verb}; "
            "buffering stopped"
        )
    return 0


def _dump(args: argparse.Namespace) -> int:
    result = FilterClient(args.socket).dump(os.path.abspath(args.out))
    if args.json:
        print_ok(result)
    else:
        print(f"{result.packets} held packet(s) written to {result.path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = FilterClient(args.socket).status()
    if args.json:
        print_ok(status)
    else:
        print(format_status(status))
    return 0


def format_status(status: FilterSetStatus) -> str:
    lines = [
        f"open epoch {status.open_epoch}, last sealed {status.last_sealed}, "
        f"last released {status.last_released}, "
        f"high-water requests {status.high_water_requests}"
    ]
    lines.append(
        f"{'netdev':<12}{'backend':<9}{'state':<14}{'held pkts':>10}{'held B':>11}"
        f"{'released':>10}{'discarded':>10}{'tail-drop':>10}"
    )
    for n in status.netdevs:
        q = n.queue
        lines.append(
            f"{n.netdev:<12}{n.backend:<9}{n.state:<14}{q.held_packets:>10}"
            f"{q.held_bytes:>11}{q.released_packets:>10}{q.discarded_packets:>10}"
            f"{q.tail_dropped_packets:>10}"
        )
        if n.reason:
            lines.append(f"  {n.state}: {n.reason}")
        for e in q.epochs:
            tag = "sealed" if e.sealed else "open"
            lines.append(
                f"  epoch {e.epoch:<6} {tag:<7}{e.held_packets:>10} pkts "
                f"{e.held_bytes:>10} B  tail-dropped {e.tail_dropped_packets}"
            )
    return "\n".join(lines)


def _cleanup(args: argparse.Namespace) -> int:
    require_net_admin("colonet cleanup")
    removed = registry.cleanup_all(force=args.force)
    removed += [f"directory {path} of a dead colonet" for path in sweep_stale_workdirs()]
    if args.json:
        print(json.dumps({"ok": True, "result": {"removed": removed}}))
    else:
        for line in removed:
            print(f"removed {line}")
        print(f"{len(removed)} colonet item(s) removed")
    return 0
