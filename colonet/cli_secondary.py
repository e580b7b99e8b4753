"""`colonet secondary`: keep the primary's checkpoints; take over when it is lost.

Takeover (DESIGN "Failover"): once failover is required (heartbeat loss, a
broken connection, or `colonet failover --socket`), the embedded guest is
built from the last applied checkpoint, its NIC in its own namespace (same
MAC and addresses as on the primary) is brought up, and its addresses are
announced so the network finds it. The guest then runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from colonet.checkpoint.auth import AuthError
from colonet.checkpoint.link_security import LinkSecurity, security_from_args
from colonet.checkpoint.protocol import SecondaryProtocol
from colonet.checkpoint.ram_cache import RamCache
from colonet.checkpoint.secondary import NothingToTakeOver, SecondaryEngine
from colonet.checkpoint.transport import Channel
from colonet.cli_engine import (
    EngineControl,
    channel_config,
    emit,
    parse_address,
    start_metrics,
)
from colonet.control.protocol import Request
from colonet.errors import ColonetError
from colonet.guest.embedded import EmbeddedGuest
from colonet.guest.factory import make_guest
from colonet.guest.qemu import QemuGuest
from colonet.net.owner import only_in_this_process

log = logging.getLogger("colonet.secondary")


class _Secondary:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine: SecondaryEngine | None = None
        self.guest: EmbeddedGuest | QemuGuest | None = None
        self.failover_event: dict[str, Any] | None = None
        self.restored_counter: int | None = None
        self.conn: socket.socket | None = None
        self.stopped = threading.Event()

    def status(self, _: Request) -> dict[str, Any]:
        if self.engine is None:
            return {"role": "secondary", "last_applied": None, "failover": {"state": "none"}}
        status = self.engine.status()
        if self.failover_event is not None:
            status["failover"] = self.failover_event
        return status

    def failover(self, _: Request) -> dict[str, Any]:
        if self.engine is None:
            raise ColonetError("no primary has connected yet: there is nothing to take over")
        return self.engine.request_failover("requested on the control socket")

    def activate(self, cache: RamCache) -> None:
        """Build the guest from the applied checkpoint and start it."""
        guest = make_guest(self.args, ram_pages=cache.ram_pages)
        sections = list(cache.sections.values())
        if isinstance(guest, EmbeddedGuest):
            view = cache.view()
            try:
                guest.restore(view, sections)
            finally:
                view.release()
            self.restored_counter = guest.counter
        else:  # QEMU: the whole VM is in a device section
            guest.load_devices(sections)
        guest.activate()
        self.guest = guest


def run_secondary(args: argparse.Namespace) -> int:
    addr = parse_address(args.listen, "--listen")
    node = _Secondary(args)
    control = (
        EngineControl(args.socket, {"status": node.status, "failover": node.failover})
        if args.socket
        else None
    )

    def on_term(*_: object) -> None:
        node.stopped.set()
        if node.guest is None:  # not running the guest: just leave
            raise SystemExit(143)

    signal.signal(signal.SIGTERM, only_in_this_process(on_term))
    try:
        return _serve_then_take_over(args, node, addr)
    except KeyboardInterrupt:
        return 130
    finally:
        if control is not None:
            control.close()
        if node.guest is not None:
            node.guest.shutdown()
        if node.conn is not None:
            node.conn.close()


def _counting(on_applied, metrics):  # type: ignore[no-untyped-def]
    def applied(epoch, cache):  # type: ignore[no-untyped-def]
        metrics.applied.inc()
        if on_applied is not None:
            on_applied(epoch, cache)

    return applied


def _cache_factory(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The RAM cache; for fault-injection tests, COLONET_FAULT_APPLY_DELAY_MS
    makes every apply announce itself ("applying" event) and take that long."""
    delay_ms = int(os.environ.get("COLONET_FAULT_APPLY_DELAY_MS", "0"))
    if delay_ms <= 0:
        return RamCache

    class SlowApplyCache(RamCache):
        def apply(self, staged):  # type: ignore[no-untyped-def]
            emit(
                args,
                {"event": "applying", "epoch": staged.epoch},
                f"secondary: applying {staged.epoch}",
            )
            time.sleep(delay_ms / 1000)
            super().apply(staged)

    return SlowApplyCache


def _accept_authenticated(
    args: argparse.Namespace, listener: socket.socket, security: LinkSecurity
) -> tuple[socket.socket, Channel]:
    """The first peer that proves it holds the key; others are refused and
    reported, before anything they send reaches the protocol."""
    while True:
        conn, peer = listener.accept()
        try:
            conn = security.wrap(conn, server_side=True)
            channel = Channel(
                conn, SecondaryProtocol(), channel_config(args), auth=security.session("secondary")
            )
            channel.handshake()
        except AuthError as exc:
            conn.close()
            emit(
                args,
                {"event": "refused", "peer": list(peer[:2]), "reason": str(exc)},
                f"secondary: refused {peer[0]}:{peer[1]}: {exc}",
            )
            log.warning("refused replication peer %s: %s", peer[0], exc)
            continue
        return conn, channel


def _serve_then_take_over(args: argparse.Namespace, node: _Secondary, addr) -> int:  # type: ignore[no-untyped-def]
    security = security_from_args(args, server_side=True)  # bad keys: fail before listening
    with socket.create_server(addr) as listener:
        host, port = listener.getsockname()[:2]
        emit(
            args,
            {"event": "listening", "address": [host, port]},
            f"secondary: listening on {host}:{port}",
        )
        conn, channel = _accept_authenticated(args, listener, security)
    engine = node.engine = SecondaryEngine(
        channel,
        cache_factory=_cache_factory(args),
        on_applied=lambda epoch, cache: emit(
            args,
            {"event": "applied", "epoch": epoch}
            | ({"ram_sha256": cache.digest().hex()} if args.ram_digests else {}),
            f"secondary: checkpoint {epoch} applied",
        ),
    )
    metrics = start_metrics(args)
    if metrics is not None:
        engine.on_applied = _counting(engine.on_applied, metrics)
    result = engine.serve()
    # The connection stays open while the guest runs here: a primary that
    # was only stalled reads the takeover notice, not a reset, and stands down.
    node.conn = conn
    emit(
        args,
        {"event": "exit", **dataclasses.asdict(result)},
        f"secondary: {result.reason} ({result.detail}); last applied checkpoint "
        f"{result.last_applied}",
    )
    if not result.needs_takeover or args.no_takeover:
        return 0
    try:
        event = engine.take_over(node.activate)
    except NothingToTakeOver as exc:
        emit(
            args,
            {"event": "failover", "mode": "secondary", "state": "failed", "detail": str(exc)},
            f"secondary: failover failed: {exc}",
        )
        return exc.exit_code
    assert node.guest is not None
    node.failover_event = event.to_json() | {"guest_counter": node.restored_counter}
    emit(
        args,
        node.failover_event,
        f"secondary: took the guest over from checkpoint {event.last_committed} "
        f"({event.reason}: {event.detail}) in {event.failover_ms:.1f} ms; counter "
        f"{node.restored_counter}",
    )
    with contextlib.suppress(KeyboardInterrupt):
        node.stopped.wait()
    return 0
