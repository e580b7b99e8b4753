"""The secondary's checkpoint engine: stage, verify, acknowledge, apply.

A checkpoint is acknowledged (VMSTATE_RECEIVED, which lets the primary
release the epoch) only after it is complete and verified in the staging
area; it is applied to the RAM cache whole, then VMSTATE_LOADED follows.
A connection that breaks mid-transfer leaves the cache on the last applied
checkpoint (docs/DESIGN.md invariant 5).

Failover: heartbeat loss or a broken connection ends `serve()` with failover
REQUIRED; so does `request_failover()` from any thread, which the serve
loop notices between events, never in the middle of applying a checkpoint.
`take_over()` then hands the last applied checkpoint to the caller, which
starts the guest from it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from colonet.checkpoint.failover import Failover, FailoverEvent, reason_of_peer_loss
from colonet.checkpoint.messages import (
    CheckpointBodyComplete,
    CheckpointRequested,
    CheckpointStarted,
    HeartbeatReceived,
    HelloReceived,
    ShutdownReceived,
)
from colonet.checkpoint.pages import CheckpointFormatError
from colonet.checkpoint.protocol import SecondaryProtocol
from colonet.checkpoint.ram_cache import RamCache
from colonet.checkpoint.transport import Channel, PeerLost
from colonet.errors import ColonetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecondaryExit:
    """Why serving ended: the primary shut the guest down, or was lost."""

    reason: str  # "shutdown", "request", "heartbeat", "closed", "error"
    detail: str
    last_applied: int | None

    @property
    def needs_takeover(self) -> bool:
        """Anything but an orderly guest shutdown leaves the guest to us."""
        return self.reason != "shutdown"


class NothingToTakeOver(ColonetError):
    """Failover before the first checkpoint was applied: no guest state here."""


class SecondaryEngine:
    def __init__(
        self,
        channel: Channel,
        guest_name: str = "secondary",
        on_applied: Callable[[int, RamCache], None] | None = None,
        cache_factory: Callable[[int, int], RamCache] = RamCache,
    ) -> None:
        if not isinstance(channel.proto, SecondaryProtocol):
            raise TypeError("the secondary engine needs a SecondaryProtocol channel")
        self.channel = channel
        self.proto: SecondaryProtocol = channel.proto
        self.guest_name = guest_name
        self.on_applied = on_applied
        self.cache_factory = cache_factory
        self.cache: RamCache | None = None
        self.applied = 0
        self.failover = Failover("secondary")
        self._lock = threading.Lock()  # failover state vs. the serve thread
        self._applying = False

    def request_failover(self, detail: str = "requested by an operator") -> dict[str, object]:
        """From any thread: take the guest over at the next safe point."""
        with self._lock:
            first = self.failover.require("request", detail, time.monotonic())
            return {
                "accepted": first,
                "state": self.failover.state.value,
                "waiting_for_apply": self._applying,
            }

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                "role": "secondary",
                "last_applied": self._last(),
                "applying": self._applying,
                "failover": self.failover.status(),
            }

    def serve(self) -> SecondaryExit:
        try:
            while True:
                if self.failover.required:  # asked for by an operator
                    return SecondaryExit("request", self.failover.detail, self._last())
                event = self.channel.next_event(timeout_s=0.05)
                if event is None:
                    continue
                if isinstance(event, HelloReceived):
                    hello = event.hello
                    self.cache = self.cache_factory(hello.page_size, hello.ram_pages)
                    self.proto.send_hello(hello.page_size, hello.ram_pages, self.guest_name)
                elif isinstance(event, CheckpointRequested):
                    self.proto.send_reply(event.epoch)
                elif isinstance(event, CheckpointBodyComplete):
                    self._take(event)
                elif isinstance(event, ShutdownReceived):
                    return SecondaryExit("shutdown", event.reason, self._last())
                elif isinstance(event, CheckpointStarted | HeartbeatReceived):
                    pass
                self.channel.flush()
        except PeerLost as exc:
            log.warning(
                "primary lost (%s): %s; staying on checkpoint %s", exc.reason, exc, self._last()
            )
            with self._lock:
                self.failover.require(reason_of_peer_loss(exc.reason), str(exc), time.monotonic())
            return SecondaryExit(exc.reason, str(exc), self._last())

    def _tell_primary_to_stand_down(self, detail: str) -> None:
        """Best effort: a primary that is only stalled (not dead) reads this
        when it wakes and stands down instead of going on alone."""
        try:
            if self.proto.local_hello is not None:
                self.proto.send_takeover(f"secondary takes over: {detail}")
                self.channel.flush()
        except (PeerLost, ColonetError, OSError) as exc:
            log.info("could not tell the primary to stand down: %s", exc)

    def take_over(self, activate: Callable[[RamCache], None]) -> FailoverEvent:
        """Start the guest from the last applied checkpoint (after serve())."""
        with self._lock:
            if not self.failover.start(applying=self._applying):
                raise ColonetError("failover cannot start while a checkpoint is being applied")
        if self.cache is None or self.cache.applied_epoch is None:
            raise NothingToTakeOver(
                "failover before the first checkpoint was applied: there is no guest state "
                "on this secondary to resume from"
            )
        self._tell_primary_to_stand_down(self.failover.detail)
        activate(self.cache)
        event = self.failover.complete(self.cache.applied_epoch, time.monotonic())
        log.warning(
            "took over the guest from checkpoint %d (%s: %s) in %.1f ms",
            event.last_committed,
            event.reason,
            event.detail,
            event.failover_ms,
        )
        return event

    def _take(self, event: CheckpointBodyComplete) -> None:
        assert self.cache is not None
        try:
            staged = self.cache.stage(event.body)
        except CheckpointFormatError as exc:
            raise PeerLost("error", f"checkpoint {event.epoch} is malformed: {exc}") from exc
        self.proto.send_received(event.epoch, hashlib.sha256(event.body).digest())
        self.channel.flush()
        # A failover asked for from now on waits until the apply is whole.
        with self._lock:
            self._applying = True
        try:
            self.cache.apply(staged)
        finally:
            with self._lock:
                self._applying = False
        self.proto.send_loaded(event.epoch)
        self.applied += 1
        if self.applied == 1:
            self.proto.send_ready()
        if self.on_applied:
            self.on_applied(event.epoch, self.cache)

    def _last(self) -> int | None:
        return self.cache.applied_epoch if self.cache else None
