"""The primary's checkpoint engine: owns the guest, the clock and the socket.

One checkpoint (docs/DESIGN.md, "Checkpoint protocol"):

    CHECKPOINT_REQUEST -> wait CHECKPOINT_REPLY
    pause the guest; seal epoch N on every filter (begin_checkpoint)
    encode dirty pages + device state into the send buffer
    resume the guest (speculative) -- or after LOADED (strict)
    send the body -> wait VMSTATE_RECEIVED -> release epoch N (commit)
    wait VMSTATE_LOADED (and release only now with release_at="loaded")
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from colonet.buffer.hooks import CommitResult, EpochMismatchError, FilterHooks
from colonet.checkpoint.messages import (
    CheckpointLoaded,
    CheckpointReceived,
    Event,
    HeartbeatReceived,
    HelloReceived,
    ReplyReceived,
    SecondaryReady,
    ShutdownReceived,
)
from colonet.checkpoint.pages import CheckpointSnapshot, snapshot_checkpoint
from colonet.checkpoint.protocol import PrimaryProtocol
from colonet.checkpoint.transport import Channel, PeerLost
from colonet.errors import ColonetError
from colonet.guest.base import Guest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    checkpoint_delay_ms: int = 100
    chunk_size: int = 1 << 20
    speculative: bool = True  # resume once the checkpoint is in the send buffer
    release_at: str = "received"  # or "loaded": the stricter mode
    compress: bool = False
    # How long the secondary may take to answer while it is heard from (its
    # heartbeats go on): the deadline for progress. Silence is the channel's
    # heartbeat timeout, at every stage.
    reply_timeout_ms: int = 30_000
    record_ram_digest: bool = False  # sha256 of RAM per checkpoint (tests)

    def __post_init__(self) -> None:
        if self.checkpoint_delay_ms <= 0:
            raise ValueError(f"checkpoint_delay_ms {self.checkpoint_delay_ms} must be positive")
        if self.release_at not in ("received", "loaded"):
            raise ValueError(f"release_at must be 'received' or 'loaded', not {self.release_at!r}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size {self.chunk_size} must be positive")


class TakenOver(ColonetError):
    """The secondary took the guest over: this primary must stand down."""

    exit_code = 8


@dataclass(frozen=True)
class CheckpointStats:
    epoch: int
    full: bool
    dirty_pages: int
    body_bytes: int
    pause_ms: float
    transfer_ms: float  # body sent -> VMSTATE_RECEIVED
    total_ms: float
    released_packets: int | None = None  # what the filters let go at commit
    ram_digest: bytes | None = None


class PrimaryEngine:
    def __init__(
        self,
        guest: Guest,
        channel: Channel,
        hooks: FilterHooks,
        config: EngineConfig | None = None,
        on_checkpoint: Callable[[CheckpointStats], None] | None = None,
        high_water: Callable[[], bool] | None = None,
    ) -> None:
        if not isinstance(channel.proto, PrimaryProtocol):
            raise TypeError("the primary engine needs a PrimaryProtocol channel")
        self.guest = guest
        self.channel = channel
        self.proto: PrimaryProtocol = channel.proto
        self.hooks = hooks
        self.config = config or EngineConfig()
        self.on_checkpoint = on_checkpoint
        # Asked between checkpoints: True when a filter reached its
        # high-water mark since the last call (docs/DESIGN.md invariant 6).
        self.high_water = high_water
        self.early_checkpoints = 0
        self.history: list[CheckpointStats] = []
        self._early = threading.Event()
        self._stop = threading.Event()
        self._go_alone = threading.Event()

    # -- public ---------------------------------------------------------

    def connect(self, guest_name: str = "guest") -> None:
        """HELLO both ways, then the full first checkpoint, then READY."""
        self.proto.send_hello(self.guest.page_size, self.guest.ram_pages, guest_name)
        self.channel.flush()
        self._wait(HelloReceived)
        self.checkpoint(full=True)
        self._wait(SecondaryReady)

    def request_early_checkpoint(self) -> None:
        """From any thread (a filter's high-water mark, a CLI call)."""
        self._early.set()

    def stop(self) -> None:
        self._stop.set()
        self._early.set()

    def wait_stopped(self, timeout_s: float | None = None) -> bool:
        """Block until `stop()` (e.g. while the guest runs on alone)."""
        return self._stop.wait(timeout_s)

    def request_failover(self) -> None:
        """From any thread: drop the secondary and go on alone.

        Taken between checkpoints; the secondary is told with GUEST_SHUTDOWN
        so it stands down instead of taking over as well.
        """
        self._go_alone.set()
        self._early.set()

    def run(self, max_checkpoints: int | None = None) -> None:
        """Checkpoint every `checkpoint_delay_ms` (or early) until stopped."""
        done = 0
        delay = self.config.checkpoint_delay_ms / 1000
        while not self._stop.is_set() and (max_checkpoints is None or done < max_checkpoints):
            deadline = time.monotonic() + delay
            while not self._early.is_set() and time.monotonic() < deadline:
                # Waiting also answers heartbeats and notices a dead peer.
                event = self.channel.next_event(min(0.05, deadline - time.monotonic()))
                if event is not None and not isinstance(event, HeartbeatReceived):
                    self._unexpected(event, "between checkpoints")
                if self.high_water is not None and self.high_water():
                    self.early_checkpoints += 1
                    break  # a filter is filling up: checkpoint now
            self._early.clear()
            # Frames already read but not yet handled (a takeover notice
            # read together with heartbeats) come before the next checkpoint.
            self._take_pending("between checkpoints")
            if self._go_alone.is_set():
                self.shutdown("the primary goes on alone: failover requested")
                raise PeerLost("request", "failover requested on the primary")
            if self._stop.is_set():
                break
            self.checkpoint()
            done += 1

    def checkpoint(self, full: bool = False) -> CheckpointStats:
        """One checkpoint, the transaction of docs/DESIGN.md: request, pause,
        seal + copy out, resume (speculative), send, commit when safe."""
        started = time.perf_counter()
        epoch = (self.proto.last_epoch or 0) + 1
        self.proto.request_checkpoint(epoch)
        self.channel.flush()
        self._wait(ReplyReceived)

        self.guest.pause()
        paused_at, paused = time.perf_counter(), True
        try:
            with self.channel.busy():  # heartbeats go on while we copy, encode, frame
                snapshot, dirty_pages, digest = self._capture(epoch, full)
                if self.config.speculative:
                    self.guest.resume()
                    paused = False
                pause_ms = (time.perf_counter() - paused_at) * 1000
                body = snapshot.encode()
                # A takeover notice may have come in with the reply: it wins
                # (TakenOver), and this epoch is never released.
                self._take_pending("before sending a checkpoint")
                self.proto.send_checkpoint(epoch, body, self.config.chunk_size)
            transfer_ms, released = self._commit_when_safe(epoch)
        finally:
            if paused:  # strict mode: until loaded, or until it failed
                self.guest.resume()
        stats = CheckpointStats(
            epoch=epoch,
            full=full,
            dirty_pages=dirty_pages,
            body_bytes=len(body),
            pause_ms=pause_ms,
            transfer_ms=transfer_ms,
            total_ms=(time.perf_counter() - started) * 1000,
            released_packets=None if released is None else released.released_packets,
            ram_digest=digest,
        )
        self.history.append(stats)
        if self.on_checkpoint:
            self.on_checkpoint(stats)
        log.info(
            "checkpoint %d: %d dirty pages, %d bytes, pause %.1f ms, transfer %.1f ms",
            epoch,
            dirty_pages,
            stats.body_bytes,
            pause_ms,
            transfer_ms,
        )
        return stats

    def _capture(self, epoch: int, full: bool) -> tuple[CheckpointSnapshot, int, bytes | None]:
        """While the guest is paused: seal epoch `epoch` on the filters, then
        copy the dirty pages (all of them if `full`) and the devices out."""
        # One number: the filters seal exactly this checkpoint's epoch or
        # refuse (EpochMismatchError), and nothing of it is ever released.
        sealed = self.hooks.begin_checkpoint(epoch)
        if sealed != epoch:
            raise EpochMismatchError(
                f"the filters sealed epoch {sealed} for checkpoint {epoch}: "
                "stopping before anything is released"
            )
        dirty = self.guest.collect_dirty()
        ram = self.guest.ram_view()
        try:
            # Only the copy out of the guest happens while it is paused;
            # hashing and framing the body come after it resumed.
            snapshot = snapshot_checkpoint(
                epoch,
                ram,
                None if full else dirty,
                self.guest.save_devices(),
                compress=self.config.compress,
            )
            digest = hashlib.sha256(ram).digest() if self.config.record_ram_digest else None
        finally:
            ram.release()
        return snapshot, self.guest.ram_pages if full else len(dirty), digest

    def _commit_when_safe(self, epoch: int) -> tuple[float, CommitResult | None]:
        """Send what is queued; release epoch `epoch` once the secondary has
        it (RECEIVED, or LOADED in the stricter mode). (transfer ms, commit)."""
        sent = time.perf_counter()
        self.channel.flush()
        self._wait(CheckpointReceived)
        transfer_ms = (time.perf_counter() - sent) * 1000
        released: CommitResult | None = None
        if self.config.release_at == "received":
            released = self.hooks.commit(epoch)
        self._wait(CheckpointLoaded)
        if self.config.release_at == "loaded":
            released = self.hooks.commit(epoch)
        return transfer_ms, released

    def shutdown(self, reason: str = "primary stopping") -> None:
        self.proto.send_shutdown(reason)
        self.channel.flush()

    def leave_stand_down_notice(self, reason: str) -> bool:
        """Before going on alone: queue GUEST_SHUTDOWN for the secondary, which
        reads it before anything it could act on, however long it slept
        (docs/DESIGN.md invariant 8). False if it cannot be queued whole (the
        connection broke, or a frame was cut half-sent); the secondary's own
        stall watch is then what keeps it from taking over."""
        if not self.channel.intact or self.proto.local_hello is None:
            return False
        if self.proto.state.name in ("SHUT_DOWN", "CLOSED", "ERROR"):
            return self.proto.state.name == "SHUT_DOWN"
        try:
            self.proto.send_stand_down(reason)
            self.channel.flush()
        except (PeerLost, ColonetError, OSError) as exc:
            log.info("could not leave the secondary a stand-down notice: %s", exc)
            return False
        return True

    # -- helpers ----------------------------------------------------------

    def _wait(self, kind: type[Event]) -> Event:
        deadline = time.monotonic() + self.config.reply_timeout_ms / 1000
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerLost(
                    "heartbeat", f"no {kind.__name__} within {self.config.reply_timeout_ms} ms"
                )
            event = self.channel.next_event(remaining)
            if event is None or isinstance(event, HeartbeatReceived):
                continue
            if isinstance(event, kind):
                return event
            self._unexpected(event, f"while waiting for {kind.__name__}")

    def _take_pending(self, where: str) -> None:
        """Handle frames already read: heartbeats pass, anything else ends us."""
        while (event := self.channel.next_event(0)) is not None:
            if not isinstance(event, HeartbeatReceived):
                self._unexpected(event, where)

    def _unexpected(self, event: Event, where: str) -> NoReturn:
        if isinstance(event, ShutdownReceived):
            raise TakenOver(f"the secondary took the guest over ({event.reason})")
        raise PeerLost("error", f"unexpected {type(event).__name__} {where}")
