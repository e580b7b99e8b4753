"""Noticing that this process was stalled (SIGSTOP, a frozen VM, swap).

A peer that was stopped for longer than the heartbeat timeout cannot know
what the other side did meanwhile: a secondary that wakes may find the
primary has gone on alone and released output past the secondary's last
checkpoint. Taking over then would show clients time going backwards
(docs/DESIGN.md invariant 8). So each side keeps a watch: a thread that
wakes every few milliseconds; a gap between two wake-ups longer than the
limit means the whole process stood still.

`StallWatch` is the pure part (fed the time, never reads a clock);
`StallWatchThread` feeds it from a daemon thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

TICK_S = 0.01


class StallWatch:
    def __init__(self, limit_s: float) -> None:
        if limit_s <= 0:
            raise ValueError(f"stall limit {limit_s} s must be positive")
        self.limit_s = limit_s
        self._last: float | None = None
        self.longest_s = 0.0  # the longest stall seen so far

    def tick(self, now: float) -> float | None:
        """Record a wake-up at `now`; the gap since the last one if it was a stall."""
        last, self._last = self._last, now
        if last is None:
            return None
        gap = now - last
        if gap <= self.limit_s:
            return None
        self.longest_s = max(self.longest_s, gap)
        return gap


class StallWatchThread:
    """Calls `on_stall(gap_s)` (from its own thread) after each stall."""

    def __init__(
        self,
        limit_s: float,
        on_stall: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watch = StallWatch(limit_s)
        self.on_stall = on_stall
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stall-watch")

    def start(self) -> StallWatchThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        self.watch.tick(self.clock())
        while not self._stop.wait(TICK_S):
            gap = self.watch.tick(self.clock())
            if gap is not None:
                self.on_stall(gap)


class StaleGuard:
    """Whether a secondary's picture of the primary may be stale after a stall.

    After a stall, frames still queued in the socket were sent before it,
    possibly before the primary gave up on us: they prove nothing. What
    proves the primary still replicates to us is a round trip begun after
    the stall: we acknowledge checkpoint E (LOADED, sent after waking), and
    the primary, which asks for E+1 only after reading that, asks for it.
    """

    def __init__(self) -> None:
        self.stalled_s: float | None = None  # the longest stall not yet answered for
        self._loaded_after: int | None = None

    @property
    def suspect(self) -> bool:
        return self.stalled_s is not None

    def stalled(self, gap_s: float) -> None:
        self.stalled_s = max(self.stalled_s or 0.0, gap_s)
        self._loaded_after = None  # an acknowledgement sent before it does not count

    def loaded(self, epoch: int) -> None:
        """We sent LOADED(epoch)."""
        if self.suspect and self._loaded_after is None:
            self._loaded_after = epoch

    def requested(self, epoch: int) -> None:
        """The primary asked for checkpoint `epoch`."""
        if self.suspect and self._loaded_after is not None and epoch > self._loaded_after:
            self.stalled_s = None
            self._loaded_after = None
