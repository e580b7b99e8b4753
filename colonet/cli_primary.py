"""`colonet primary`: the embedded guest, buffered and checkpointed.

The guest's netdevs are buffered by a `colonet filter run` child driven
through its control socket. When the secondary is lost (heartbeat, broken
connection, or `colonet failover` here) the primary goes on alone: it
releases what the filters hold, removes them and keeps the guest running
unprotected. When the secondary says it took the guest over, the primary
stands down (fenced): held packets are discarded, the guest is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from colonet.checkpoint.failover import Failover, FailoverEvent, reason_of_peer_loss
from colonet.checkpoint.hooks import ControlSocketHooks, CountingHooks, FilterHooks
from colonet.checkpoint.link_security import security_from_args
from colonet.checkpoint.primary import CheckpointStats, EngineConfig, PrimaryEngine, TakenOver
from colonet.checkpoint.protocol import PrimaryProtocol
from colonet.checkpoint.transport import Channel, PeerLost
from colonet.cli_engine import (
    EngineControl,
    channel_config,
    emit,
    parse_address,
    start_metrics,
)
from colonet.control.protocol import Request
from colonet.errors import ColonetError
from colonet.guest.base import Guest
from colonet.guest.factory import make_guest
from colonet.metrics import EngineMetrics
from colonet.net.owner import die_with_parent, only_in_this_process


def stats_json(stats: CheckpointStats) -> dict[str, Any]:
    body = dataclasses.asdict(stats)
    digest = body.pop("ram_digest")
    if digest is not None:
        body["ram_sha256"] = digest.hex()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in body.items()}


def _start_filters(args: argparse.Namespace, socket_path: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "colonet", "filter", "run", "--socket", socket_path]
    argv += ["--backend", args.backend, "--json"]
    for flag, value in (
        ("--max-packets", args.max_packets),
        ("--max-bytes", args.max_bytes),
        ("--high-water", args.high_water),
    ):
        if value is not None:
            argv += [flag, str(value)]
    argv += [a for n in args.netdev for a in ("--netdev", n)]
    filt = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    assert filt.stdout is not None
    if not filt.stdout.readline():
        raise ColonetError("the filter process did not start (see its error above)")
    return filt


def _stop_filters(filt: subprocess.Popen | None) -> None:
    if filt is not None and filt.poll() is None:
        filt.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            filt.communicate(timeout=10)


class _Primary:
    """State the control socket reads while the main thread runs the engine."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine: PrimaryEngine | None = None
        self.filter_sock: str | None = None
        self.failover: Failover | None = None
        self.failover_event: dict[str, Any] | None = None

    def status(self, _: Request) -> dict[str, Any]:
        history = self.engine.history if self.engine else []
        status: dict[str, Any] = {
            "role": "primary",
            "checkpoints": len(history),
            "early_checkpoints": self.engine.early_checkpoints if self.engine else 0,
            "last": stats_json(history[-1]) if history else None,
            "failover": self.failover_event
            or (self.failover.status() if self.failover else {"state": "none"}),
        }
        if self.filter_sock and os.path.exists(self.filter_sock):
            from colonet.control.client import request as ask

            with contextlib.suppress(ColonetError):
                status["filters"] = ask(self.filter_sock, {"op": "status"})
        return status

    def checkpoint(self, _: Request) -> dict[str, Any]:
        if self.engine is None:
            raise ColonetError("the engine is not running yet")
        self.engine.request_early_checkpoint()
        return {"requested": True}

    def dump(self, request: Request) -> dict[str, Any]:
        if not self.filter_sock or not os.path.exists(self.filter_sock):
            raise ColonetError("no filters are running: nothing is held")
        from colonet.control.client import request as ask

        return ask(self.filter_sock, {"op": "dump", "path": request.path})

    def go_alone(self, _: Request) -> dict[str, Any]:
        if self.engine is None:
            raise ColonetError("the engine is not running yet")
        self.engine.request_failover()
        return {"accepted": True, "mode": "primary"}


def run_primary(args: argparse.Namespace) -> int:
    peer = parse_address(args.peer, "--peer")
    security = security_from_args(args, server_side=False)
    tmpdir = tempfile.mkdtemp(prefix="colonet-primary-")
    state = _Primary(args)
    filt: subprocess.Popen | None = None
    hooks: FilterHooks = CountingHooks()
    guest = make_guest(args)
    control: EngineControl | None = None
    signal.signal(
        signal.SIGTERM,
        only_in_this_process(lambda *_: state.engine.stop() if state.engine else None),
    )
    try:
        if args.netdev:
            state.filter_sock = os.path.join(tmpdir, "filter.sock")
            filt = _start_filters(args, state.filter_sock)
            hooks = ControlSocketHooks(state.filter_sock)
        metrics = start_metrics(args, _filter_status(state.filter_sock))
        # The guest runs (a VM has booted) before the secondary hears from us:
        # its heartbeat timer starts with the connection.
        guest.activate()
        try:
            conn = socket.create_connection(peer, timeout=10)
        except OSError as exc:
            raise PeerLost("error", f"cannot reach the secondary at {args.peer}: {exc}") from None
        conn = security.wrap(conn, server_side=False)
        channel = Channel(
            conn, PrimaryProtocol(), channel_config(args), auth=security.session("primary")
        )
        channel.handshake()  # a secondary without our key is refused here
        engine = state.engine = PrimaryEngine(
            guest,
            channel,
            hooks,
            EngineConfig(
                checkpoint_delay_ms=args.checkpoint_delay_ms,
                speculative=not args.strict,
                release_at=args.release_at,
                record_ram_digest=args.ram_digests,
            ),
            high_water=_high_water_probe(state.filter_sock) if state.filter_sock else None,
            on_checkpoint=lambda s: _checkpointed(args, metrics, s),
        )
        if args.socket:
            control = EngineControl(
                args.socket,
                {
                    "status": state.status,
                    "checkpoint": state.checkpoint,
                    "failover": state.go_alone,
                    "dump": state.dump,
                },
            )
        if args.duration:
            threading.Timer(args.duration, engine.stop).start()
        try:
            engine.connect()
            engine.run()
            engine.shutdown()
        except PeerLost as exc:
            _go_on_alone(state, hooks, exc)
            _stop_filters(filt)  # the filters are removed: unprotected from now on
            filt = None
            engine.wait_stopped()  # the guest runs on until the duration or SIGTERM
        except TakenOver as exc:
            _stand_down(state, hooks, guest, exc)
    except KeyboardInterrupt:
        return 130
    finally:
        if control is not None:
            control.close()
        # The guest stops before its filters go: nothing it says after the
        # last commit may leave unbuffered.
        guest.shutdown()
        _stop_filters(filt)
        with contextlib.suppress(OSError):
            os.rmdir(tmpdir)
    return 0


def _checkpointed(
    args: argparse.Namespace, metrics: EngineMetrics | None, s: CheckpointStats
) -> None:
    if metrics is not None:
        metrics.checkpoint(s.pause_ms, s.transfer_ms, s.dirty_pages, s.body_bytes)
    emit(
        args,
        {"event": "checkpoint", **stats_json(s)},
        f"checkpoint {s.epoch:>5}: {s.dirty_pages:>6} dirty pages {s.body_bytes:>9} B "
        f"pause {s.pause_ms:6.2f} ms transfer {s.transfer_ms:6.2f} ms",
    )


def _filter_status(filter_sock: str | None):  # type: ignore[no-untyped-def]
    """The filter process's status, for metrics scrapes (None: no filters)."""
    if filter_sock is None:
        return None
    from colonet.control.client import request

    return lambda: request(filter_sock, {"op": "status"}) if os.path.exists(filter_sock) else None


def _high_water_probe(filter_sock: str):  # type: ignore[no-untyped-def]
    """True when the filter process counted a new high-water crossing."""
    from colonet.control.client import request

    seen = [0]

    def crossed() -> bool:
        try:
            count = int(request(filter_sock, {"op": "status"})["high_water_requests"])
        except (ColonetError, KeyError, ValueError):
            return False
        new, seen[0] = count > seen[0], count
        return new

    return crossed


def _last_committed(state: _Primary) -> int | None:
    history = state.engine.history if state.engine else []
    return history[-1].epoch if history else None


def _settle(
    state: _Primary, hooks: FilterHooks, mode: str, reason: str, detail: str
) -> tuple[FailoverEvent, int | None]:
    """Run one failover on the primary: the filters settle as `mode` says."""
    failover = state.failover = Failover(mode)
    failover.require(reason, detail, time.monotonic())
    failover.start(applying=False)
    role, key = (
        ("primary", "released_packets") if mode == "primary" else ("secondary", "discarded_packets")
    )
    settled = hooks.failover(role)
    count = settled.get(key) if isinstance(settled, dict) else None
    event = failover.complete(_last_committed(state), time.monotonic())
    state.failover_event = event.to_json() | {key: count}
    return event, count


def _go_on_alone(state: _Primary, hooks: FilterHooks, exc: PeerLost) -> None:
    """The secondary is gone: release everything held and stop buffering."""
    event, released = _settle(state, hooks, "primary", reason_of_peer_loss(exc.reason), str(exc))
    emit(
        state.args,
        state.failover_event or {},
        f"primary: secondary lost ({event.reason}: {exc}); released {released} held "
        "packet(s), filters removed, continuing unprotected",
    )


def _stand_down(state: _Primary, hooks: FilterHooks, guest: Guest, exc: TakenOver) -> None:
    """The secondary runs the guest now: never release, never run on."""
    guest.pause()
    _, discarded = _settle(state, hooks, "fenced", "request", str(exc))
    emit(
        state.args,
        state.failover_event or {},
        f"primary: {exc}; standing down, {discarded} held packet(s) discarded",
    )
