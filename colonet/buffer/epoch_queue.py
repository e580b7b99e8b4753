"""Per-netdev bookkeeping of held guest output, grouped by epoch.

This is the pure core behind every filter backend: it decides which packets
may leave (output commit, docs/DESIGN.md invariant 1), keeps them exactly once and in
order (invariant 2) and bounds what is held (invariant 6). It does no I/O and
no logging, so backends share it and every rule is a plain unit test.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, TypeVar

from colonet.errors import UsageError

__all__ = [
    "BufferLimitError",
    "BufferLimits",
    "EpochError",
    "EpochQueue",
    "EpochStats",
    "QueueStats",
]

P = TypeVar("P")


class BufferLimitError(UsageError, ValueError):
    """A buffer was configured with values that cannot work (our own misuse)."""


class EpochError(UsageError, ValueError):
    """An epoch operation does not match the queue's state, e.g. releasing an unsealed epoch."""


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a limit or size is always a bug.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BufferLimits:
    """Hard and soft bounds on what one filter may hold (docs/DESIGN.md invariant 6).

    The hard limits make a full buffer behave like a full NIC ring (tail drop,
    clients retransmit) instead of growing without bound. The high-water mark
    lets the engine take an early checkpoint before drops begin.
    """

    max_held_packets: int = 50_000
    max_held_bytes: int = 64 * 1024 * 1024
    high_water_ratio: float = 0.8

    def __post_init__(self) -> None:
        for name in ("max_held_packets", "max_held_bytes"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise BufferLimitError(f"{name} must be a positive int, got {value!r}")
        ratio = self.high_water_ratio
        # The chained comparison is also False for NaN; inf fails "<= 1".
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise BufferLimitError(
                f"high_water_ratio must be a number with 0 < ratio <= 1, got {ratio!r}"
            )

    @property
    def high_water_packets(self) -> int:
        """Held-packet count at which the high-water callback fires (at least 1)."""
        return _mark(self.max_held_packets, self.high_water_ratio)

    @property
    def high_water_bytes(self) -> int:
        """Held-byte count at which the high-water callback fires (at least 1)."""
        return _mark(self.max_held_bytes, self.high_water_ratio)


def _mark(limit: int, ratio: float) -> int:
    # Work on the ratio as written (0.29, not 0.28999...) so 0.29 of 100 is 29,
    # not 28 or 30; rounding up keeps the mark >= 1 and equal to the limit at 1.0.
    return math.ceil(Fraction(repr(float(ratio))) * limit)


@dataclass(frozen=True)
class EpochStats:
    """What one held epoch (open, or sealed and not yet released) contains."""

    epoch: int
    sealed: bool
    held_packets: int
    held_bytes: int
    tail_dropped_packets: int
    tail_dropped_bytes: int


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of one queue, for status reports and tests.

    The counters are cumulative since the queue was made, so that accepted
    packets always equal held + released + discarded.
    """

    open_epoch: int
    last_sealed: int
    last_released: int
    held_packets: int
    held_bytes: int
    released_packets: int
    released_bytes: int
    discarded_packets: int
    discarded_bytes: int
    tail_dropped_packets: int
    tail_dropped_bytes: int
    high_water_hits: int
    epochs: tuple[EpochStats, ...]


class _Epoch(Generic[P]):
    """Packets of one epoch.

    Epochs only ever leave the queue whole, so packets need no per-packet size:
    the epoch's byte total is enough to keep the queue's totals exact.
    """

    __slots__ = ("epoch", "packets", "bytes", "dropped_packets", "dropped_bytes")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.packets: list[P] = []
        self.bytes = 0
        self.dropped_packets = 0
        self.dropped_bytes = 0


class EpochQueue(Generic[P]):
    """Holds one netdev's guest output until the epoch it belongs to commits.

    Packets go into the open epoch; `seal` closes it at a checkpoint and
    `release` hands back whole committed epochs in arrival order. Work per
    packet is O(1) amortised, and held totals are kept as running counts so
    the hot path never scans.
    """

    def __init__(
        self,
        limits: BufferLimits = BufferLimits(),  # noqa: B008 - frozen, so sharing is safe
        on_high_water: Callable[[], None] | None = None,
        first_epoch: int = 1,
    ) -> None:
        if not isinstance(limits, BufferLimits):
            raise BufferLimitError(f"limits must be a BufferLimits, got {limits!r}")
        if not _is_int(first_epoch) or first_epoch < 1:
            # 0 means "none" for last_sealed / last_released, so epochs start at 1.
            raise BufferLimitError(f"first_epoch must be an int >= 1, got {first_epoch!r}")
        self._limits = limits
        self._max_packets = limits.max_held_packets
        self._max_bytes = limits.max_held_bytes
        self._hw_packets = limits.high_water_packets
        self._hw_bytes = limits.high_water_bytes
        self._on_high_water = on_high_water
        self._first_epoch = first_epoch
        self._epochs: deque[_Epoch[P]] = deque([_Epoch(first_epoch)])
        self._open: _Epoch[P] = self._epochs[-1]
        self._last_sealed = 0
        self._last_released = 0
        self._held_packets = 0
        self._held_bytes = 0
        self._released_packets = 0
        self._released_bytes = 0
        self._discarded_packets = 0
        self._discarded_bytes = 0
        self._dropped_packets = 0
        self._dropped_bytes = 0
        self._high_water_hits = 0
        self._high_water_armed = True

    @property
    def limits(self) -> BufferLimits:
        return self._limits

    @property
    def open_epoch(self) -> int:
        """The epoch that packets appended now belong to."""
        return self._open.epoch

    @property
    def last_sealed(self) -> int:
        """The newest sealed epoch, or 0 if none has been sealed."""
        return self._last_sealed

    @property
    def last_released(self) -> int:
        """The newest epoch released (committed), or 0 if none."""
        return self._last_released

    @property
    def held_packets(self) -> int:
        return self._held_packets

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def append(self, packet: P, size: int) -> bool:
        """Hold `packet` in the open epoch; False if it was tail-dropped.

        Dropping the newest packet, not the oldest, keeps the held epochs
        intact: an old packet may already belong to a checkpoint in flight.
        """
        if not _is_int(size) or size < 0:
            raise ValueError(f"packet size must be an int >= 0, got {size!r}")
        epoch = self._open
        packets = self._held_packets + 1
        nbytes = self._held_bytes + size
        if packets > self._max_packets or nbytes > self._max_bytes:
            self._dropped_packets += 1
            self._dropped_bytes += size
            epoch.dropped_packets += 1
            epoch.dropped_bytes += size
            return False
        epoch.packets.append(packet)
        epoch.bytes += size
        self._held_packets = packets
        self._held_bytes = nbytes
        if self._high_water_armed and (packets >= self._hw_packets or nbytes >= self._hw_bytes):
            # Edge-triggered so that one burst asks for one early checkpoint,
            # not one per packet while the buffer stays full.
            self._high_water_armed = False
            self._high_water_hits += 1
            if self._on_high_water is not None:
                self._on_high_water()
        return True

    def seal(self) -> int:
        """Close the open epoch at a checkpoint and start the next one.

        Empty epochs are sealed too: the checkpoint numbering must stay in
        step with the engine's, whether or not the guest sent anything.
        """
        sealed = self._open
        self._last_sealed = sealed.epoch
        self._open = _Epoch(sealed.epoch + 1)
        self._epochs.append(self._open)
        return sealed.epoch

    def release(self, upto: int) -> list[P]:
        """Hand back every packet of sealed epochs <= `upto`, in arrival order.

        Called when checkpoint `upto` commits. Repeating a commit returns []
        so a duplicated acknowledgement can never send a packet twice.
        """
        if not _is_int(upto):
            raise EpochError(f"epoch must be an int, got {upto!r}")
        if upto <= self._last_released:
            return []
        if upto > self._last_sealed:
            raise EpochError(f"epoch {upto} is not sealed; {self._describe_epochs()}")
        out: list[P] = []
        epochs = self._epochs
        released_packets = 0
        released_bytes = 0
        while epochs[0] is not self._open and epochs[0].epoch <= upto:
            record = epochs.popleft()
            out.extend(record.packets)
            released_packets += len(record.packets)
            released_bytes += record.bytes
        self._released_packets += released_packets
        self._released_bytes += released_bytes
        self._last_released = upto
        self._forget(released_packets, released_bytes)
        return out

    def release_all(self) -> list[P]:
        """Hand back everything held, open epoch included, in arrival order.

        For when the secondary is lost and the primary goes on unprotected
        (docs/DESIGN.md invariant 3): nothing is left to wait for. Every sealed epoch
        counts as released; the open epoch stays open, now empty.
        """
        out, packets, nbytes = self._take_all()
        self._released_packets += packets
        self._released_bytes += nbytes
        self._last_released = max(self._last_released, self._last_sealed)
        return out

    def discard(self) -> list[P]:
        """Forget everything held and return it so the caller can drop it.

        For failover to the secondary: the primary's uncommitted output must
        never leave (docs/DESIGN.md invariant 3). The packets are returned so a
        backend can tell the kernel to drop them rather than leak them.
        """
        out, packets, nbytes = self._take_all()
        self._discarded_packets += packets
        self._discarded_bytes += nbytes
        return out

    def held(self) -> list[tuple[int, list[P]]]:
        """(epoch, packets) of every held epoch, oldest first (a copy)."""
        return [(e.epoch, list(e.packets)) for e in self._epochs if e.packets]

    def stats(self) -> QueueStats:
        """Snapshot the counters; O(held epochs), meant for status, not the hot path."""
        last_sealed = self._last_sealed
        epochs = tuple(
            EpochStats(
                epoch=e.epoch,
                sealed=e.epoch <= last_sealed,
                held_packets=len(e.packets),
                held_bytes=e.bytes,
                tail_dropped_packets=e.dropped_packets,
                tail_dropped_bytes=e.dropped_bytes,
            )
            for e in self._epochs
        )
        return QueueStats(
            open_epoch=self._open.epoch,
            last_sealed=last_sealed,
            last_released=self._last_released,
            held_packets=self._held_packets,
            held_bytes=self._held_bytes,
            released_packets=self._released_packets,
            released_bytes=self._released_bytes,
            discarded_packets=self._discarded_packets,
            discarded_bytes=self._discarded_bytes,
            tail_dropped_packets=self._dropped_packets,
            tail_dropped_bytes=self._dropped_bytes,
            high_water_hits=self._high_water_hits,
            epochs=epochs,
        )

    def _take_all(self) -> tuple[list[P], int, int]:
        out: list[P] = []
        for record in self._epochs:
            out.extend(record.packets)
        packets, nbytes = self._held_packets, self._held_bytes
        # The open epoch keeps its number and its tail-drop counts; its
        # packets are gone like everyone else's.
        self._open.packets = []
        self._open.bytes = 0
        self._epochs = deque([self._open])
        self._forget(packets, nbytes)
        return out, packets, nbytes

    def _forget(self, packets: int, nbytes: int) -> None:
        self._held_packets -= packets
        self._held_bytes -= nbytes
        if self._held_packets < self._hw_packets and self._held_bytes < self._hw_bytes:
            self._high_water_armed = True

    def _describe_epochs(self) -> str:
        if self._last_sealed == 0:
            sealed = "no epoch has been sealed yet"
        else:
            sealed = f"sealed epochs are {self._first_epoch}..{self._last_sealed}"
            if len(self._epochs) > 1:  # the open epoch is always the last record
                sealed += f" ({self._epochs[0].epoch}..{self._epochs[-2].epoch} held)"
        return f"{sealed}; open epoch is {self._open.epoch}; last released is {self._last_released}"

    def __repr__(self) -> str:
        return (
            f"EpochQueue(open_epoch={self._open.epoch}, last_sealed={self._last_sealed}, "
            f"last_released={self._last_released}, held_packets={self._held_packets}, "
            f"held_bytes={self._held_bytes})"
        )
