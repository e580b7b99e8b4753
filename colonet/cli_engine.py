"""The engine commands' arguments and the pieces `colonet primary` and
`colonet secondary` share: addresses, event output, the control socket."""

from __future__ import annotations

import argparse
import json
import logging
import selectors
import threading
from collections.abc import Callable
from typing import Any

from colonet.checkpoint.link_security import add_security_args
from colonet.checkpoint.transport import ChannelConfig
from colonet.control.protocol import Request
from colonet.control.server import ControlServer
from colonet.errors import UsageError
from colonet.guest.factory import add_guest_kind_args
from colonet.metrics import EngineMetrics, serve_metrics

log = logging.getLogger("colonet.engine")

Handler = Callable[[Request], dict[str, Any]]


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} must be ADDR:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _add_guest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guest-netns", metavar="NS", help="namespace of the guest's service")
    p.add_argument("--guest-ip", default="0.0.0.0")
    p.add_argument("--guest-port", type=int, default=7070)
    p.add_argument(
        "--guest-nic",
        metavar="IF",
        help="the guest's own NIC in its namespace: brought up and announced when it starts",
    )
    p.add_argument("--heartbeat-timeout-ms", type=int, default=1000)
    p.add_argument("--socket", metavar="PATH", help="control socket (status, failover, ...)")
    p.add_argument(
        "--ram-digests", action="store_true", help="report sha256 of RAM at each checkpoint"
    )
    p.add_argument(
        "--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics here (off by default)"
    )
    p.add_argument("--json", action="store_true")
    add_guest_kind_args(p)
    add_security_args(p)


def add_engine_parsers(sub: argparse._SubParsersAction) -> None:
    sec = sub.add_parser(
        "secondary", help="receive checkpoints; take the guest over when the primary is lost"
    )
    sec.add_argument("--listen", required=True, metavar="ADDR:PORT")
    sec.add_argument(
        "--no-takeover",
        action="store_true",
        help="only keep checkpoints: exit instead of starting the guest on failover",
    )
    _add_guest_args(sec)

    pri = sub.add_parser("primary", help="run the embedded guest, checkpointed to a secondary")
    pri.add_argument("--peer", required=True, metavar="ADDR:PORT")
    pri.add_argument(
        "--netdev",
        action="append",
        default=[],
        metavar="IF",
        help="host netdev carrying the guest's output (buffered)",
    )
    pri.add_argument("--backend", default="auto", choices=("auto", "tap", "nfqueue"))
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
    _add_guest_args(pri)

    for name, helptext in (
        ("checkpoint", "ask a running primary for a checkpoint now"),
        ("status", "engine and filter state of a running primary or secondary"),
        (
            "failover",
            "fail over now: a secondary takes the guest over, a primary goes on alone",
        ),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--socket", required=True, metavar="PATH")
        p.add_argument("--json", action="store_true")


def emit(args: argparse.Namespace, event: dict[str, Any], text: str) -> None:
    """One event: a JSON line (--json) or a sentence, on stdout and in the log.

    Failover events are also counted in the metrics, when they are served."""
    print(json.dumps(event) if args.json else text, flush=True)
    if event.get("event") == "failover":
        log.warning("%s", json.dumps(event))
        metrics = getattr(args, "engine_metrics", None)
        if metrics is not None and "reason" in event:
            metrics.failover(event["mode"], event["reason"])


def start_metrics(args: argparse.Namespace, status=None) -> EngineMetrics | None:  # type: ignore[no-untyped-def]
    """Serve --metrics if asked; the engine's metrics (also kept on args)."""
    if not args.metrics:
        return None
    _, metrics = serve_metrics(parse_address(args.metrics, "--metrics"), status)
    args.engine_metrics = metrics
    return metrics


def channel_config(args: argparse.Namespace) -> ChannelConfig:
    interval = max(10, args.heartbeat_timeout_ms // 5)
    return ChannelConfig(
        heartbeat_interval_ms=interval, heartbeat_timeout_ms=args.heartbeat_timeout_ms
    )


class EngineControl:
    """An engine's control socket, served from its own thread."""

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(path, self.handle)
        self.server.open(self.selector)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="engine-control")
        self.thread.start()

    def handle(self, request: Request) -> dict[str, Any]:
        handler = self.handlers.get(request.op)
        if handler is None:
            served = ", ".join(sorted(self.handlers))
            raise UsageError(f"op {request.op!r} is not served here (this engine serves {served})")
        if request.op == "failover" and request.role is not None:
            raise UsageError("an engine knows its own role: send failover without one")
        return handler(request)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.2):
                key.data()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.server.close()
        self.selector.close()
