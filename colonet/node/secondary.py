"""The secondary node: keep the primary's checkpoints; take over when it is lost.

Takeover (docs/DESIGN.md, "Failover"): once failover is required (heartbeat
loss, a broken connection, or `colonet failover --socket`), the guest is
built from the last applied checkpoint (`Guest.restore`), its NIC in its
own namespace (same MAC and addresses as on the primary) is brought up,
and its addresses are announced so the network finds it. The guest then
runs until `stop()` (SIGTERM from the CLI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from colonet.checkpoint.auth import AuthError
from colonet.checkpoint.link_security import UNPROTECTED_WARNING, LinkSecurity, load_security
from colonet.checkpoint.protocol import SecondaryProtocol
from colonet.checkpoint.ram_cache import RamCache
from colonet.checkpoint.secondary import SecondaryEngine, SecondaryExit
from colonet.checkpoint.transport import Channel
from colonet.control.protocol import EngineStatus, FailoverAccepted, Request
from colonet.errors import ColonetError, UsageError
from colonet.guest.base import Guest
from colonet.guest.registry import check_guest, make_guest
from colonet.node.config import SecondaryConfig
from colonet.node.engine_control import EngineControl
from colonet.node.events import EventSink
from colonet.node.metrics import serve_metrics
from colonet.workdir import sweep_stale_workdirs

log = logging.getLogger("colonet.secondary")

# How long a connecting peer has to prove it holds the key (TLS or PSK).
HANDSHAKE_TIMEOUT_S = 3.0

# `colonet secondary` exits with this when it refused a takeover after a
# stall (the guest runs nowhere here; a person must look).
STALE_EXIT_CODE = 10

# Fault injection for tests: every apply announces itself ("applying") and
# takes this long, so a test can kill the secondary inside one.
FAULT_APPLY_DELAY_ENV = "COLONET_FAULT_APPLY_DELAY_MS"


class SecondaryNode:
    def __init__(self, config: SecondaryConfig, events: EventSink | None = None) -> None:
        self.config = config
        self.events = events or EventSink(config.node.json_events)
        self.engine: SecondaryEngine | None = None
        self.guest: Guest | None = None
        self.failover_event: dict[str, Any] | None = None
        self.conn: socket.socket | None = None
        self.address: tuple[str, int] | None = None  # where it listens, once it does
        self.listening = threading.Event()
        self.stopped = threading.Event()

    # -- control socket -----------------------------------------------------

    def status(self, _: Request | None = None) -> EngineStatus:
        if self.engine is None:
            return EngineStatus(role="secondary", failover={"state": "none"})
        s = self.engine.status()
        return EngineStatus(
            role="secondary",
            last_applied=s["last_applied"],  # type: ignore[arg-type]
            applying=bool(s["applying"]),
            failover=self.failover_event or s["failover"],  # type: ignore[arg-type]
        )

    def request_failover(self, _: Request | None = None) -> FailoverAccepted:
        if self.engine is None:
            raise ColonetError("no primary has connected yet: there is nothing to take over")
        r = self.engine.request_failover("requested on the control socket")
        return FailoverAccepted(
            accepted=bool(r["accepted"]),
            mode="secondary",
            state=str(r["state"]),
            waiting_for_apply=bool(r["waiting_for_apply"]),
        )

    def stop(self) -> None:
        """From any thread or a signal handler: a running guest stops."""
        self.stopped.set()

    # -- run ------------------------------------------------------------------

    def run(self) -> int:
        node = self.config.node
        control = (
            EngineControl(
                node.control_socket, {"status": self.status, "failover": self.request_failover}
            )
            if node.control_socket
            else None
        )
        try:
            return self._serve_then_take_over()
        except StoppedWaiting:
            return 0
        finally:
            if control is not None:
                control.close()
            if self.guest is not None:
                self.guest.shutdown()
            if self.conn is not None:
                self.conn.close()

    def prepare_guest(self, cache: RamCache) -> None:
        """Build the guest from the applied checkpoint; it does not run yet."""
        node = self.config.node
        settings = dataclasses.replace(node.guest, ram_pages=cache.ram_pages)
        guest = make_guest(node.guest_kind, settings)
        view = cache.view()
        try:
            guest.restore(view, list(cache.sections.values()))
        finally:
            view.release()
        self.guest = guest

    def start_guest(self) -> None:
        assert self.guest is not None
        self.guest.activate()

    def _serve_then_take_over(self) -> int:
        node = self.config.node
        sweep_stale_workdirs()  # what SIGKILLed colonets (and their QEMUs) left
        if self.config.takeover:
            # Everything a takeover needs is checked now, not when the primary
            # is gone: a typo found then would leave the guest running nowhere.
            check_guest(node.guest_kind, node.guest)
        security = load_security(node.security, server_side=True)  # bad keys: fail first
        if security.mode == "none":
            self.events.warn(UNPROTECTED_WARNING)
        if node.metrics_address is not None:
            _, metrics = serve_metrics(node.metrics_address)
            self.events.metrics = metrics
        with self._listen() as listener:
            host, port = listener.getsockname()[:2]
            self.address = (host, port)
            self.events.emit(
                {"event": "listening", "address": [host, port]},
                f"secondary: listening on {host}:{port}",
            )
            self.listening.set()
            conn, engine, result = self._serve_sessions(listener, security)
        # The connection stays open while the guest runs here: a primary that
        # was only stalled reads the takeover notice, not a reset, and stands down.
        self.conn = conn
        self.events.emit(
            {"event": "exit", **dataclasses.asdict(result)},
            f"secondary: {result.reason} ({result.detail}); last applied checkpoint "
            f"{result.last_applied}",
        )
        if result.stalled_ms is not None and result.reason not in ("shutdown", "request"):
            return self._refuse_stale_takeover(result)
        if not result.needs_takeover or not self.config.takeover:
            return 0
        return self._take_over(engine)

    def _refuse_stale_takeover(self, result: SecondaryExit) -> int:
        """We slept through the time the primary had to decide about us: it may
        have gone on alone and released output past our last checkpoint, so a
        takeover now could roll clients back. Fail closed (invariant 8)."""
        detail = (
            f"this secondary was stalled for {result.stalled_ms:.0f} ms since the primary last "
            f"showed it still replicates here; it may have gone on alone: not taking over "
            f"from checkpoint {result.last_applied} ({result.reason}: {result.detail})"
        )
        self.failover_event = {
            "event": "failover",
            "mode": "secondary",
            "state": "refused",
            "reason": "stalled",
            "detail": detail,
            "last_committed": result.last_applied,
        }
        self.events.emit(self.failover_event, f"secondary: {detail}")
        return STALE_EXIT_CODE

    def _serve_sessions(
        self, listener: socket.socket, security: LinkSecurity
    ) -> tuple[socket.socket, SecondaryEngine, SecondaryExit]:
        """Serve primaries until one has given us a whole checkpoint.

        A session that ends before checkpoint 1 was applied (a port scan, a
        peer sending garbage, a primary killed during its full sync) leaves
        nothing to protect or take over: listen again for the real one."""
        while True:
            conn, channel = self._accept_authenticated(listener, security)
            engine = self.engine = SecondaryEngine(
                channel, cache_factory=self._cache_factory(), on_applied=self._applied
            )
            result = engine.serve()
            # An orderly shutdown, or an operator's failover request, ends
            # serving whatever was applied; anything else before checkpoint 1
            # was not a primary worth waiting on.
            if result.last_applied is not None or result.reason in ("shutdown", "request"):
                return conn, engine, result
            conn.close()
            self.events.emit(
                {"event": "session-ended", "reason": result.reason, "detail": result.detail},
                f"secondary: a session ended before its first checkpoint ({result.reason}: "
                f"{result.detail}); listening again",
            )

    def _take_over(self, engine: SecondaryEngine) -> int:
        try:
            event = engine.take_over(self.prepare_guest, self.start_guest)
        except ColonetError as exc:  # nothing to take over, a guest that cannot run
            self.events.emit(
                {"event": "failover", "mode": "secondary", "state": "failed", "detail": str(exc)},
                f"secondary: failover failed: {exc}",
            )
            return exc.exit_code
        assert self.guest is not None
        details = self.guest.takeover_details()
        self.failover_event = event.to_json() | details
        counter = f"; counter {details['guest_counter']}" if "guest_counter" in details else ""
        self.events.emit(
            self.failover_event,
            f"secondary: took the guest over from checkpoint {event.last_committed} "
            f"({event.reason}: {event.detail}) in {event.failover_ms:.1f} ms{counter}",
        )
        with contextlib.suppress(KeyboardInterrupt):
            self.stopped.wait()
        return 0

    def _listen(self) -> socket.socket:
        host, port = self.config.listen
        try:
            return socket.create_server((host, port))
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None

    def _applied(self, epoch: int, cache: RamCache) -> None:
        if self.events.metrics is not None:
            self.events.metrics.applied.inc()
        digest = {"ram_sha256": cache.digest().hex()} if self.config.node.ram_digests else {}
        self.events.emit(
            {"event": "applied", "epoch": epoch} | digest, f"secondary: checkpoint {epoch} applied"
        )

    def _cache_factory(self) -> Callable[[int, int], RamCache]:
        delay_ms = int(os.environ.get(FAULT_APPLY_DELAY_ENV, "0"))
        if delay_ms <= 0:
            return RamCache
        events = self.events

        class SlowApplyCache(RamCache):
            def apply(self, staged):  # type: ignore[no-untyped-def]
                events.emit(
                    {"event": "applying", "epoch": staged.epoch},
                    f"secondary: applying {staged.epoch}",
                )
                time.sleep(delay_ms / 1000)
                super().apply(staged)

        return SlowApplyCache

    def _accept_authenticated(
        self, listener: socket.socket, security: LinkSecurity
    ) -> tuple[socket.socket, Channel]:
        """The first peer that proves it holds the key; others are refused and
        reported, before anything they send reaches the protocol.

        Handshakes run side by side, each with a short deadline, and a source
        address may have only a few under way: idle or slow connections from
        anyone cannot keep the real primary out (issue 15 item 5)."""
        gate = HandshakeGate()
        listener.settimeout(0.05)
        try:
            while (winner := gate.winner()) is None:
                if self.stopped.is_set():
                    raise StoppedWaiting
                try:
                    conn, peer = listener.accept()
                except TimeoutError:
                    continue
                if not gate.admit(peer[0]):
                    conn.close()
                    self._refused(peer, "too many handshakes under way from this address")
                    continue
                threading.Thread(
                    target=self._handshake,
                    args=(conn, peer, security, gate),
                    daemon=True,
                    name="handshake",
                ).start()
            return winner
        finally:
            gate.close()
            listener.settimeout(None)

    def _handshake(
        self,
        conn: socket.socket,
        peer: tuple,
        security: LinkSecurity,
        gate: HandshakeGate,
    ) -> None:
        try:
            conn = security.wrap(conn, server_side=True, timeout_s=HANDSHAKE_TIMEOUT_S)
            channel = Channel(
                conn,
                SecondaryProtocol(),
                self.config.node.channel_config(),
                auth=security.session("secondary"),
            )
            channel.handshake(HANDSHAKE_TIMEOUT_S)
        except AuthError as exc:
            conn.close()
            self._refused(peer, str(exc))
            return
        finally:
            gate.done(peer[0])
        if not gate.offer((conn, channel)):
            conn.close()  # another primary proved itself first

    def _refused(self, peer: tuple, reason: str) -> None:
        self.events.emit(
            {"event": "refused", "peer": list(peer[:2]), "reason": reason},
            f"secondary: refused {peer[0]}:{peer[1]}: {reason}",
        )
        log.warning("refused replication peer %s: %s", peer[0], reason)


class StoppedWaiting(Exception):
    """`stop()` while no primary was connected."""


class HandshakeGate:
    """Handshakes under way, per source address, and the first to succeed."""

    def __init__(self, per_source: int = 4, total: int = 64) -> None:
        self.per_source = per_source
        self.total = total
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._winner: tuple[socket.socket, Channel] | None = None
        self._closed = False

    def admit(self, source: str) -> bool:
        with self._lock:
            if self._pending.get(source, 0) >= self.per_source:
                return False
            if sum(self._pending.values()) >= self.total:
                return False
            self._pending[source] = self._pending.get(source, 0) + 1
            return True

    def done(self, source: str) -> None:
        with self._lock:
            self._pending[source] -= 1
            if not self._pending[source]:
                del self._pending[source]

    def offer(self, won: tuple[socket.socket, Channel]) -> bool:
        """True if `won` is the first proven peer (and is taken)."""
        with self._lock:
            if self._winner is not None or self._closed:
                return False
            self._winner = won
            return True

    def winner(self) -> tuple[socket.socket, Channel] | None:
        with self._lock:
            return self._winner

    def close(self) -> None:
        with self._lock:
            self._closed = True
