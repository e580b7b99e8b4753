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
builds the guest from it; the primary is told to stand down; the guest
starts.
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
from colonet.checkpoint.protocol import SecondaryProtocol, State
from colonet.checkpoint.ram_cache import RamCache
from colonet.checkpoint.stall import StaleGuard, StallWatchThread
from colonet.checkpoint.transport import Channel, PeerLost
from colonet.errors import ColonetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecondaryExit:
    """Why serving ended: the primary shut the guest down, or was lost."""

    reason: str  # "shutdown", "request", "heartbeat", "closed", "error"
    detail: str
    last_applied: int | None
    # Set when this secondary was stalled since it last proved the primary
    # still replicates to it: the primary may have gone on alone meanwhile.
    stalled_ms: float | None = None

    @property
    def needs_takeover(self) -> bool:
        """Anything but an orderly guest shutdown leaves the guest to us, unless
        we were stalled since the primary last showed it still counts on us
        (fail closed); an operator's explicit request still goes ahead."""
        if self.reason == "shutdown":
            return False
        return self.stalled_ms is None or self.reason == "request"


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
        self.stale = StaleGuard()

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
                "stalled_ms": None
                if self.stale.stalled_s is None
                else round(self.stale.stalled_s * 1000, 1),
            }

    def serve(self) -> SecondaryExit:
        # A stall longer than half the silence the primary tolerates may
        # already have made it give up on us.
        limit_s = self.channel.config.heartbeat_timeout_ms / 2000
        watch = StallWatchThread(limit_s, self._on_stall).start()
        try:
            return self._serve()
        finally:
            watch.stop()

    def _on_stall(self, gap_s: float) -> None:
        with self._lock:
            self.stale.stalled(gap_s)
        log.warning("this secondary was stalled for %.0f ms", gap_s * 1000)

    def _serve(self) -> SecondaryExit:
        try:
            while True:
                if self.failover.required:  # asked for by an operator
                    return SecondaryExit("request", self.failover.detail, self._last())
                event = self.channel.next_event(timeout_s=0.05)
                if event is None:
                    continue
                if self.proto.state is State.SHUT_DOWN and not isinstance(event, ShutdownReceived):
                    # Read in the same batch as a stand-down that follows it:
                    # the stand-down wins, nothing is answered or applied.
                    continue
                if isinstance(event, HelloReceived):
                    hello = event.hello
                    self.cache = self.cache_factory(hello.page_size, hello.ram_pages)
                    self.proto.send_hello(hello.page_size, hello.ram_pages, self.guest_name)
                elif isinstance(event, CheckpointRequested):
                    with self._lock:
                        self.stale.requested(event.epoch)
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
                stalled_s = self.stale.stalled_s
                if stalled_s is None:
                    self.failover.require(
                        reason_of_peer_loss(exc.reason), str(exc), time.monotonic()
                    )
            stalled_ms = None if stalled_s is None else round(stalled_s * 1000, 1)
            return SecondaryExit(exc.reason, str(exc), self._last(), stalled_ms)

    def _tell_primary_to_stand_down(self, detail: str) -> None:
        """Best effort: a primary that is only stalled (not dead) reads this
        when it wakes and stands down instead of going on alone."""
        try:
            if self.proto.local_hello is not None:
                self.proto.send_takeover(f"secondary takes over: {detail}")
                self.channel.flush()
        except (PeerLost, ColonetError, OSError) as exc:
            log.info("could not tell the primary to stand down: %s", exc)

    def take_over(
        self,
        prepare: Callable[[RamCache], None],
        start: Callable[[], None] | None = None,
    ) -> FailoverEvent:
        """Start the guest from the last applied checkpoint (after serve()).

        `prepare` builds the guest from the checkpoint without running it;
        only once that worked is the primary told to stand down, and then
        `start` runs the guest. A guest that cannot be built must never
        leave a primary standing down for nothing."""
        with self._lock:
            if not self.failover.start(applying=self._applying):
                raise ColonetError("failover cannot start while a checkpoint is being applied")
        if self.cache is None or self.cache.applied_epoch is None:
            raise NothingToTakeOver(
                "failover before the first checkpoint was applied: there is no guest state "
                "on this secondary to resume from"
            )
        prepare(self.cache)
        self._tell_primary_to_stand_down(self.failover.detail)
        if start is not None:
            start()
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
            with self.channel.busy():  # decoding and verifying a large body takes a while
                staged = self.cache.stage(event.body)
        except CheckpointFormatError as exc:
            raise PeerLost("error", f"checkpoint {event.epoch} is malformed: {exc}") from exc
        self.proto.send_received(event.epoch, hashlib.sha256(event.body).digest())
        self.channel.flush()
        # A failover asked for from now on waits until the apply is whole.
        with self._lock:
            self._applying = True
        try:
            with self.channel.busy():
                self.cache.apply(staged)
        finally:
            with self._lock:
                self._applying = False
        self.proto.send_loaded(event.epoch)
        with self._lock:
            self.stale.loaded(event.epoch)
        self.applied += 1
        if self.applied == 1:
            self.proto.send_ready()
        if self.on_applied:
            self.on_applied(event.epoch, self.cache)

    def _last(self) -> int | None:
        return self.cache.applied_epoch if self.cache else None
