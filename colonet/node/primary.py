"""The primary node: the guest, buffered and checkpointed to a secondary.

    guest --(netdevs)--> filter process <--hooks (control socket)-- engine --> secondary
                              |  released at commit N                 ^
                              v                                       |
                           network                      control socket (status, ...)

The guest's netdevs are buffered by a `colonet filter run` child driven
through its control socket (`FilterClient`, the hooks). When the secondary
is lost (heartbeat, broken connection, or `colonet failover` here) the
primary goes on alone: it releases what the filters hold, removes them and
keeps the guest running unprotected. When the secondary says it took the
guest over, the primary stands down (fenced): the guest stops first, then
held packets are discarded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from typing import Any

from colonet.buffer.hooks import CountingHooks, FailoverRole, FilterHooks
from colonet.buffer.status import FilterSetStatus
from colonet.checkpoint.failover import Failover, FailoverEvent, reason_of_peer_loss
from colonet.checkpoint.link_security import UNPROTECTED_WARNING, load_security
from colonet.checkpoint.primary import CheckpointStats, EngineConfig, PrimaryEngine, TakenOver
from colonet.checkpoint.protocol import PrimaryProtocol
from colonet.checkpoint.transport import Channel, PeerLost
from colonet.control.client import FilterClient
from colonet.control.protocol import DumpRequest, EngineStatus, FailoverAccepted, Request
from colonet.errors import ColonetError, UsageError
from colonet.guest.base import Guest
from colonet.guest.registry import make_guest
from colonet.node.config import PrimaryConfig
from colonet.node.engine_control import EngineControl
from colonet.node.events import EventSink
from colonet.node.filter_process import FilterProcess
from colonet.node.metrics import EngineMetrics, serve_metrics
from colonet.workdir import Workdir, sweep_stale_workdirs


def stats_json(stats: CheckpointStats) -> dict[str, Any]:
    body = dataclasses.asdict(stats)
    digest = body.pop("ram_digest")
    if digest is not None:
        body["ram_sha256"] = digest.hex()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in body.items()}


class NeverProtected(ColonetError):
    """The secondary went away before it held a first checkpoint."""

    exit_code = PeerLost.exit_code


@dataclasses.dataclass(frozen=True)
class Requested:
    requested: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested}


class PrimaryNode:
    def __init__(self, config: PrimaryConfig, events: EventSink | None = None) -> None:
        self.config = config
        self.events = events or EventSink(config.node.json_events)
        self.engine: PrimaryEngine | None = None
        self.filters: FilterClient | None = None
        self.failover: Failover | None = None
        self.failover_event: dict[str, Any] | None = None
        self.metrics: EngineMetrics | None = None
        self._stop = threading.Event()

    # -- control socket -----------------------------------------------------

    def status(self, _: Request | None = None) -> EngineStatus:
        history = self.engine.history if self.engine else []
        filters = None
        if self.filters is not None and os.path.exists(self.filters.path):
            with contextlib.suppress(ColonetError):
                filters = self.filters.status()
        return EngineStatus(
            role="primary",
            checkpoints=len(history),
            early_checkpoints=self.engine.early_checkpoints if self.engine else 0,
            last_checkpoint=stats_json(history[-1]) if history else None,
            failover=self.failover_event
            or (self.failover.status() if self.failover else {"state": "none"}),
            filters=filters,
        )

    def _require_protecting(self, what: str) -> PrimaryEngine:
        if self.engine is None:
            raise ColonetError("the engine is not running yet")
        if self.failover_event is not None:
            mode = self.failover_event.get("mode")
            raise UsageError(f"cannot {what}: failover already completed (mode {mode})")
        return self.engine

    def request_checkpoint(self, _: Request | None = None) -> Requested:
        self._require_protecting("checkpoint")
        assert self.engine is not None
        self.engine.request_early_checkpoint()
        return Requested()

    def dump(self, request: Request) -> Any:
        if self.filters is None or not os.path.exists(self.filters.path):
            raise ColonetError("no filters are running: nothing is held")
        assert isinstance(request, DumpRequest)
        return self.filters.dump(request.path)

    def go_alone(self, _: Request | None = None) -> FailoverAccepted:
        self._require_protecting("fail over")
        assert self.engine is not None
        self.engine.request_failover()
        return FailoverAccepted(accepted=True, mode="primary", state="required")

    def stop(self) -> None:
        """From any thread or a signal handler: stop checkpointing and exit."""
        self._stop.set()
        if self.engine is not None:
            self.engine.stop()

    # -- run ------------------------------------------------------------------

    def run(self) -> int:
        config, node = self.config, self.config.node
        security = load_security(node.security, server_side=False)
        if security.mode == "none":
            self.events.warn(UNPROTECTED_WARNING)
        guest = make_guest(node.guest_kind, dataclasses.replace(node.guest, netdevs=config.netdevs))
        sweep_stale_workdirs()  # what SIGKILLed colonets (and their QEMUs) left
        workdir = Workdir()
        filt: FilterProcess | None = None
        control: EngineControl | None = None
        try:
            hooks: FilterHooks = CountingHooks()
            if config.netdevs:
                filt = FilterProcess.start(config, workdir.join("filter.sock"))
                hooks = self.filters = filt.client
            self._serve_metrics()
            # The guest runs (a VM has booted) before the secondary hears
            # from us: its heartbeat timer starts with the connection.
            guest.activate()
            engine = self.engine = self._connect(guest, hooks, security)
            if node.control_socket:
                control = EngineControl(
                    node.control_socket,
                    {
                        "status": self.status,
                        "checkpoint": self.request_checkpoint,
                        "failover": self.go_alone,
                        "dump": self.dump,
                    },
                )
            if config.duration_s:
                threading.Timer(config.duration_s, self.stop).start()
            if self._stop.is_set():
                engine.stop()
            try:
                self._first_sync(engine)
                engine.run()
                engine.shutdown()
            except PeerLost as exc:
                self._go_on_alone(hooks, exc)
                if filt is not None:
                    filt.stop()  # the filters are removed: unprotected from now on
                    filt = None
                engine.wait_stopped()  # the guest runs on until the duration or a stop
            except TakenOver as exc:
                self._stand_down(hooks, guest, exc)
        finally:
            if control is not None:
                control.close()
            # The guest stops before its filters go: nothing it says after
            # the last commit may leave unbuffered.
            guest.shutdown()
            if filt is not None:
                filt.stop()
            workdir.remove()
        return 0

    def _first_sync(self, engine: PrimaryEngine) -> None:
        """HELLO and the full first checkpoint. Lost here, the guest was never
        protected: that is an error to report, not a failover to go through."""
        try:
            engine.connect()
        except PeerLost as exc:
            hint = ""
            if exc.reason in ("closed", "error"):
                hint = " (does it expect a key? --psk-file or --tls-cert/--tls-key/--tls-ca)"
            raise NeverProtected(
                f"the secondary was lost before the first checkpoint: {exc}{hint}"
            ) from None

    def _serve_metrics(self) -> None:
        address = self.config.node.metrics_address
        if address is None:
            return
        filters = self.filters

        def filter_status() -> FilterSetStatus | None:
            if filters is None or not os.path.exists(filters.path):
                return None
            return filters.status()

        _, self.metrics = serve_metrics(address, filter_status if filters else None)
        self.events.metrics = self.metrics

    def _connect(self, guest: Guest, hooks: FilterHooks, security) -> PrimaryEngine:  # type: ignore[no-untyped-def]
        config, node = self.config, self.config.node
        peer = config.peer
        try:
            conn = socket.create_connection(peer, timeout=10)
        except OSError as exc:
            raise PeerLost(
                "error", f"cannot reach the secondary at {peer[0]}:{peer[1]}: {exc}"
            ) from None
        conn = security.wrap(conn, server_side=False)
        channel = Channel(
            conn, PrimaryProtocol(), node.channel_config(), auth=security.session("primary")
        )
        channel.handshake()  # a secondary without our key is refused here
        return PrimaryEngine(
            guest,
            channel,
            hooks,
            EngineConfig(
                checkpoint_delay_ms=config.checkpoint_delay_ms,
                speculative=not config.strict,
                release_at=config.release_at,
                record_ram_digest=node.ram_digests,
            ),
            high_water=_high_water_probe(self.filters) if self.filters else None,
            on_checkpoint=self._checkpointed,
        )

    def _checkpointed(self, s: CheckpointStats) -> None:
        if self.metrics is not None:
            self.metrics.checkpoint(s.pause_ms, s.transfer_ms, s.dirty_pages, s.body_bytes)
        self.events.emit(
            {"event": "checkpoint", **stats_json(s)},
            f"checkpoint {s.epoch:>5}: {s.dirty_pages:>6} dirty pages {s.body_bytes:>9} B "
            f"pause {s.pause_ms:6.2f} ms transfer {s.transfer_ms:6.2f} ms",
        )

    # -- failover ---------------------------------------------------------------

    def _last_committed(self) -> int | None:
        history = self.engine.history if self.engine else []
        return history[-1].epoch if history else None

    def _settle(
        self, hooks: FilterHooks, mode: str, reason: str, detail: str
    ) -> tuple[FailoverEvent, int]:
        """Run one failover on the primary: the filters settle as `mode` says."""
        failover = self.failover = Failover(mode)
        failover.require(reason, detail, time.monotonic())
        failover.start(applying=False)
        role = FailoverRole.PRIMARY if mode == "primary" else FailoverRole.SECONDARY
        settled = hooks.failover(role)
        event = failover.complete(self._last_committed(), time.monotonic())
        self.failover_event = event.to_json() | settled.to_json()
        return event, settled.settled_packets

    def _go_on_alone(self, hooks: FilterHooks, exc: PeerLost) -> None:
        """The secondary is gone: tell it to stand down (it may only be stalled),
        then release everything held and stop buffering."""
        assert self.engine is not None
        notice = self.engine.leave_stand_down_notice(f"the primary goes on alone: {exc}")
        event, released = self._settle(hooks, "primary", reason_of_peer_loss(exc.reason), str(exc))
        self.failover_event = (self.failover_event or {}) | {"stand_down_notice": notice}
        self.events.emit(
            self.failover_event,
            f"primary: secondary lost ({event.reason}: {exc}); released {released} held "
            "packet(s), filters removed, continuing unprotected"
            + ("" if notice else " (no stand-down notice could be left for it)"),
        )

    def _stand_down(self, hooks: FilterHooks, guest: Guest, exc: TakenOver) -> None:
        """The secondary runs the guest now: never release, never run on."""
        guest.pause()
        _, discarded = self._settle(hooks, "fenced", "request", str(exc))
        self.events.emit(
            self.failover_event or {},
            f"primary: {exc}; standing down, {discarded} held packet(s) discarded",
        )


def _high_water_probe(filters: FilterClient):  # type: ignore[no-untyped-def]
    """True when the filter process counted a new high-water crossing."""
    seen = [0]

    def crossed() -> bool:
        try:
            count = filters.status().high_water_requests
        except (ColonetError, KeyError, ValueError):
            return False
        new, seen[0] = count > seen[0], count
        return new

    return crossed
