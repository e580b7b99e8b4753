"""`colonet primary`, `colonet secondary` and the requests to a running one.

Parsers, turning arguments into node configs, signals, and printing: the
nodes themselves live in `colonet.node`.
"""

from __future__ import annotations

import argparse
import os
import signal

from colonet.checkpoint.link_security import SecurityFiles
from colonet.cli.common import add_json, add_socket, print_ok
from colonet.cli.filters import format_status
from colonet.control.client import EngineClient
from colonet.guest import registry as guests
from colonet.net.owner import only_in_this_process
from colonet.node.config import NodeConfig, PrimaryConfig, SecondaryConfig, parse_address
from colonet.node.primary import PrimaryNode
from colonet.node.secondary import SecondaryNode


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sec = sub.add_parser(
        "secondary", help="receive checkpoints; take the guest over when the primary is lost"
    )
    sec.add_argument("--listen", required=True, metavar="ADDR:PORT")
    sec.add_argument(
        "--no-takeover",
        action="store_true",
        help="only keep checkpoints: exit instead of starting the guest on failover",
    )
    _add_node_args(sec)
    sec.set_defaults(handler=run_secondary)

    pri = sub.add_parser("primary", help="run a guest, checkpointed to a secondary")
    pri.add_argument("--peer", required=True, metavar="ADDR:PORT")
    pri.add_argument(
        "--netdev",
        action="append",
        default=[],
        metavar="IF",
        help="host netdev carrying the guest's output (buffered)",
    )
    from colonet.backends import registry as backends

    pri.add_argument("--backend", default=backends.AUTO, choices=backends.choices())
    pri.add_argument("--max-packets", type=int, help="filter limit per netdev (packets)")
    pri.add_argument("--max-bytes", type=int, help="filter limit per netdev (bytes)")
    pri.add_argument(
        "--high-water", type=float, help="fraction of a limit that asks for an early checkpoint"
    )
    pri.add_argument("--checkpoint-delay-ms", type=int, default=100)
    pri.add_argument(
        "--strict", action="store_true", help="keep the guest paused until the secondary has loaded"
    )
    pri.add_argument("--release-at", choices=("received", "loaded"), default="received")
    pri.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    _add_node_args(pri)
    pri.set_defaults(handler=run_primary)

    for name, helptext, handler in (
        ("checkpoint", "ask a running primary for a checkpoint now", _request_checkpoint),
        ("status", "engine and filter state of a running primary or secondary", _status),
        (
            "failover",
            "fail over now: a secondary takes the guest over, a primary goes on alone",
            _request_failover,
        ),
    ):
        p = sub.add_parser(name, help=helptext)
        add_socket(p)
        add_json(p)
        p.set_defaults(handler=handler)


def _add_node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guest-netns", metavar="NS", help="namespace of the guest's service")
    p.add_argument("--guest-ip", default="0.0.0.0")
    p.add_argument("--guest-port", type=int, default=7070)
    p.add_argument(
        "--guest-nic",
        metavar="IF",
        help="the guest's own NIC in its namespace: brought up and announced when it starts",
    )
    p.add_argument("--heartbeat-timeout-ms", type=int, default=1000)
    add_socket(p, required=False)
    p.add_argument(
        "--ram-digests", action="store_true", help="report sha256 of RAM at each checkpoint"
    )
    p.add_argument(
        "--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics here (off by default)"
    )
    add_json(p)
    p.add_argument("--guest", choices=guests.names(), default=guests.DEFAULT)
    p.add_argument("--ram-mib", type=int, default=16, help="guest RAM (QEMU: -m)")
    for name in guests.names():
        kind = guests.get(name)
        if not kind.options:
            continue
        g = p.add_argument_group(f"{name} guest (--guest {name}): {kind.summary}")
        for o in kind.options:
            g.add_argument(f"--{o.name}", default=o.default, metavar=o.metavar, help=o.help)
    g = p.add_argument_group("replication link security (colonet keys makes these)")
    g.add_argument(
        "--psk-file",
        metavar="FILE",
        default=os.environ.get("COLONET_PSK_FILE"),
        help="pre-shared key: HMAC on every record (default: $COLONET_PSK_FILE)",
    )
    g.add_argument("--tls-cert", metavar="FILE", help="this end's certificate (PEM)")
    g.add_argument("--tls-key", metavar="FILE", help="this end's private key (PEM)")
    g.add_argument("--tls-ca", metavar="FILE", help="CA that signed the peer's certificate")


def node_config(args: argparse.Namespace) -> NodeConfig:
    kind = guests.get(args.guest)
    return NodeConfig(
        guest_kind=args.guest,
        guest=guests.GuestSettings(
            ram_mib=args.ram_mib,
            service_ip=args.guest_ip,
            service_port=args.guest_port,
            netns=args.guest_netns,
            nic=args.guest_nic,
            options={o.key: getattr(args, o.key) for o in kind.options},
        ),
        heartbeat_timeout_ms=args.heartbeat_timeout_ms,
        control_socket=args.socket,
        ram_digests=args.ram_digests,
        metrics_address=parse_address(args.metrics, "--metrics") if args.metrics else None,
        json_events=args.json,
        security=SecurityFiles(args.psk_file, args.tls_cert, args.tls_key, args.tls_ca),
    )


def run_primary(args: argparse.Namespace) -> int:
    node = PrimaryNode(
        PrimaryConfig(
            node=node_config(args),
            peer=parse_address(args.peer, "--peer"),
            netdevs=tuple(args.netdev),
            backend=args.backend,
            max_packets=args.max_packets,
            max_bytes=args.max_bytes,
            high_water=args.high_water,
            checkpoint_delay_ms=args.checkpoint_delay_ms,
            strict=args.strict,
            release_at=args.release_at,
            duration_s=args.duration,
        )
    )
    return _run_with_handler(node.run, lambda *_: node.stop())


def run_secondary(args: argparse.Namespace) -> int:
    node = SecondaryNode(
        SecondaryConfig(
            node=node_config(args),
            listen=parse_address(args.listen, "--listen"),
            takeover=not args.no_takeover,
        )
    )

    def on_term(*_: object) -> None:
        node.stop()
        if node.guest is None:  # not running the guest: just leave
            raise SystemExit(143)

    return _run_with_handler(node.run, on_term)


def _run_with_handler(run, on_term) -> int:  # type: ignore[no-untyped-def]
    """`run()` with SIGTERM handled by `on_term`; the old handler put back
    after (the command may run inside a longer-lived process, e.g. a test)."""
    old = signal.signal(signal.SIGTERM, only_in_this_process(on_term))
    try:
        return run()
    finally:
        signal.signal(signal.SIGTERM, old)


def _request_checkpoint(args: argparse.Namespace) -> int:
    EngineClient(args.socket).request_checkpoint()
    if args.json:
        print_ok({"requested": True})
    else:
        print("checkpoint requested")
    return 0


def _request_failover(args: argparse.Namespace) -> int:
    accepted = EngineClient(args.socket).request_failover()
    if args.json:
        print_ok(accepted)
    else:
        print(f"failover requested ({accepted.mode}); state now: {accepted.state}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = EngineClient(args.socket).status()
    if args.json:
        print_ok(status)
    elif status.role == "secondary":
        print(
            f"secondary: last applied checkpoint {status.last_applied}, "
            f"failover {status.failover.get('state')}"
        )
    else:
        last = status.last_checkpoint or {}
        print(
            f"checkpoints: {status.checkpoints}; last: epoch {last.get('epoch')}, "
            f"pause {last.get('pause_ms')} ms, transfer {last.get('transfer_ms')} ms"
        )
        if status.filters is not None:
            print(format_status(status.filters))
    return 0
