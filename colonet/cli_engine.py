"""`colonet primary` and `colonet secondary`: the engine with the embedded guest."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

from colonet.checkpoint.hooks import ControlSocketHooks, CountingHooks, FilterHooks
from colonet.checkpoint.primary import CheckpointStats, EngineConfig, PrimaryEngine
from colonet.checkpoint.protocol import PrimaryProtocol, SecondaryProtocol
from colonet.checkpoint.secondary import SecondaryEngine
from colonet.checkpoint.transport import Channel, ChannelConfig, PeerLost
from colonet.control.protocol import Request
from colonet.control.server import ControlServer
from colonet.errors import ColonetError, UsageError
from colonet.guest.embedded import EmbeddedGuest, EmbeddedGuestConfig


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} must be ADDR:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_engine_parsers(sub: argparse._SubParsersAction) -> None:
    sec = sub.add_parser("secondary", help="receive checkpoints from a primary")
    sec.add_argument("--listen", required=True, metavar="ADDR:PORT")
    sec.add_argument("--heartbeat-timeout-ms", type=int, default=1000)
    sec.add_argument(
        "--ram-digests", action="store_true", help="report sha256 of RAM at each applied checkpoint"
    )
    sec.add_argument("--json", action="store_true")

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
    pri.add_argument("--guest-netns", metavar="NS", help="namespace of the guest's service")
    pri.add_argument("--guest-ip", default="0.0.0.0")
    pri.add_argument("--guest-port", type=int, default=7070)
    pri.add_argument("--ram-mib", type=int, default=16)
    pri.add_argument("--checkpoint-delay-ms", type=int, default=100)
    pri.add_argument(
        "--strict", action="store_true", help="keep the guest paused until the secondary has loaded"
    )
    pri.add_argument("--release-at", choices=("received", "loaded"), default="received")
    pri.add_argument("--heartbeat-timeout-ms", type=int, default=1000)
    pri.add_argument("--socket", metavar="PATH", help="control socket (checkpoint, status)")
    pri.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    pri.add_argument(
        "--ram-digests", action="store_true", help="report sha256 of RAM at each checkpoint"
    )
    pri.add_argument("--json", action="store_true")

    for name, helptext in (
        ("checkpoint", "ask a running primary for a checkpoint now"),
        ("status", "engine and filter state of a running primary"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--socket", required=True, metavar="PATH")
        p.add_argument("--json", action="store_true")


def _emit(args: argparse.Namespace, event: dict[str, Any], text: str) -> None:
    print(json.dumps(event) if args.json else text, flush=True)


def _channel_config(args: argparse.Namespace) -> ChannelConfig:
    interval = max(10, args.heartbeat_timeout_ms // 5)
    return ChannelConfig(
        heartbeat_interval_ms=interval, heartbeat_timeout_ms=args.heartbeat_timeout_ms
    )


def run_secondary(args: argparse.Namespace) -> int:
    addr = parse_address(args.listen, "--listen")
    with socket.create_server(addr) as listener:
        _emit(
            args,
            {"event": "listening", "address": list(listener.getsockname()[:2])},
            f"secondary: listening on {listener.getsockname()[0]}:{listener.getsockname()[1]}",
        )
        conn, peer = listener.accept()
    engine = SecondaryEngine(
        Channel(conn, SecondaryProtocol(), _channel_config(args)),
        on_applied=lambda epoch, cache: _emit(
            args,
            {"event": "applied", "epoch": epoch}
            | ({"ram_sha256": cache.digest().hex()} if args.ram_digests else {}),
            f"secondary: checkpoint {epoch} applied",
        ),
    )
    result = engine.serve()
    conn.close()
    _emit(
        args,
        {"event": "exit", **dataclasses.asdict(result)},
        f"secondary: {result.reason} ({result.detail}); last applied checkpoint "
        f"{result.last_applied}",
    )
    return 0


class _EngineControl:
    """The primary's control socket, served from its own thread."""

    def __init__(self, path: str, engine: PrimaryEngine, filter_sock: str | None) -> None:
        self.engine, self.filter_sock = engine, filter_sock
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(path, self.handle)
        self.server.open(self.selector)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def handle(self, request: Request) -> dict[str, Any]:
        if request.op == "checkpoint":
            self.engine.request_early_checkpoint()
            return {"requested": True}
        if request.op == "status":
            history = self.engine.history
            status: dict[str, Any] = {
                "checkpoints": len(history),
                "last": _stats_json(history[-1]) if history else None,
            }
            if self.filter_sock:
                from colonet.control.client import request as ask

                status["filters"] = ask(self.filter_sock, {"op": "status"})
            return status
        raise UsageError(f"op {request.op!r} is not served by the engine's socket")

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.2):
                key.data()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.server.close()
        self.selector.close()


def _stats_json(stats: CheckpointStats) -> dict[str, Any]:
    body = dataclasses.asdict(stats)
    digest = body.pop("ram_digest")
    if digest is not None:
        body["ram_sha256"] = digest.hex()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in body.items()}


def run_primary(args: argparse.Namespace) -> int:
    peer = parse_address(args.peer, "--peer")
    tmpdir = tempfile.mkdtemp(prefix="colonet-primary-")
    filt: subprocess.Popen | None = None
    hooks: FilterHooks = CountingHooks()
    filter_sock = None
    guest = EmbeddedGuest(
        EmbeddedGuestConfig(
            ram_pages=args.ram_mib * 256,
            service_ip=args.guest_ip,
            service_port=args.guest_port,
            netns=args.guest_netns,
            netdevs=tuple(args.netdev),
        )
    )
    control: _EngineControl | None = None
    engine: PrimaryEngine | None = None
    signal.signal(signal.SIGTERM, lambda *_: engine.stop() if engine else None)
    try:
        if args.netdev:
            filter_sock = os.path.join(tmpdir, "filter.sock")
            argv = [
                sys.executable,
                "-m",
                "colonet",
                "filter",
                "run",
                "--socket",
                filter_sock,
                "--backend",
                args.backend,
                "--json",
            ]
            argv += [a for n in args.netdev for a in ("--netdev", n)]
            filt = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            assert filt.stdout is not None
            if not filt.stdout.readline():
                raise ColonetError("the filter process did not start (see its error above)")
            hooks = ControlSocketHooks(filter_sock)
        try:
            conn = socket.create_connection(peer, timeout=10)
        except OSError as exc:
            raise PeerLost("error", f"cannot reach the secondary at {args.peer}: {exc}") from None
        engine = PrimaryEngine(
            guest,
            Channel(conn, PrimaryProtocol(), _channel_config(args)),
            hooks,
            EngineConfig(
                checkpoint_delay_ms=args.checkpoint_delay_ms,
                speculative=not args.strict,
                release_at=args.release_at,
                record_ram_digest=args.ram_digests,
            ),
            on_checkpoint=lambda s: _emit(
                args,
                {"event": "checkpoint", **_stats_json(s)},
                f"checkpoint {s.epoch:>5}: {s.dirty_pages:>6} dirty pages {s.body_bytes:>9} B "
                f"pause {s.pause_ms:6.2f} ms transfer {s.transfer_ms:6.2f} ms",
            ),
        )
        guest.activate()
        engine.connect()
        if args.socket:
            control = _EngineControl(args.socket, engine, filter_sock)
        if args.duration:
            threading.Timer(args.duration, engine.stop).start()
        try:
            engine.run()
            engine.shutdown()
        except PeerLost as exc:
            # The secondary is gone: go on alone, unprotected, and say so.
            hooks.failover("primary")
            _emit(
                args,
                {
                    "event": "failover",
                    "mode": "primary",
                    "reason": exc.reason,
                    "detail": str(exc),
                    "last_committed": engine.history[-1].epoch if engine.history else 0,
                },
                f"primary: secondary lost ({exc.reason}: {exc}); released held packets, "
                "continuing unprotected",
            )
    except KeyboardInterrupt:
        return 130
    finally:
        if control is not None:
            control.close()
        if filt is not None:
            filt.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                filt.communicate(timeout=10)
        guest.shutdown()
        with contextlib.suppress(OSError):
            os.rmdir(tmpdir)
    return 0
