"""Noticing a stall, and what a stalled secondary may still do. No root."""

from __future__ import annotations

import threading
import time

import pytest

from colonet.checkpoint.stall import StaleGuard, StallWatch, StallWatchThread


def test_a_gap_over_the_limit_is_a_stall() -> None:
    watch = StallWatch(0.25)
    assert watch.tick(100.0) is None  # the first tick only starts the clock
    assert watch.tick(100.01) is None
    assert watch.tick(100.26) is None  # exactly at the limit is not yet a stall
    assert watch.tick(108.26) == pytest.approx(8.0)
    assert watch.tick(108.27) is None
    assert watch.longest_s == pytest.approx(8.0)


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        StallWatch(0)


def test_the_thread_reports_a_jump_of_its_clock() -> None:
    now = [0.0]
    seen: list[float] = []
    done = threading.Event()

    def clock() -> float:
        now[0] += 0.01
        if now[0] > 0.05 and not seen:
            now[0] += 5.0  # the process "slept" 5 s between two wake-ups
        return now[0]

    def on_stall(gap: float) -> None:
        seen.append(gap)
        done.set()

    watch = StallWatchThread(0.5, on_stall, clock).start()
    assert done.wait(5)
    watch.stop()
    assert seen[0] == pytest.approx(5.01)


def test_a_real_pause_of_the_thread_is_not_needed_to_stay_quiet() -> None:
    seen: list[float] = []
    watch = StallWatchThread(0.5, seen.append).start()
    time.sleep(0.2)
    watch.stop()
    assert seen == []


def test_a_stall_is_answered_only_by_a_round_trip_begun_after_it() -> None:
    guard = StaleGuard()
    guard.loaded(4)  # before any stall: nothing to answer
    assert not guard.suspect
    guard.stalled(8.0)
    assert guard.suspect and guard.stalled_s == 8.0
    guard.requested(5)  # read after waking, but sent before: proves nothing
    assert guard.suspect
    guard.loaded(5)  # our acknowledgement, sent after waking
    guard.requested(5)  # the same epoch again is not an answer to it
    assert guard.suspect
    guard.requested(6)  # the primary asked for more after reading it
    assert not guard.suspect and guard.stalled_s is None


def test_a_second_stall_voids_an_acknowledgement_sent_before_it() -> None:
    guard = StaleGuard()
    guard.stalled(1.0)
    guard.loaded(7)
    guard.stalled(3.0)
    guard.requested(8)
    assert guard.suspect and guard.stalled_s == 3.0
    guard.loaded(8)
    guard.requested(9)
    assert not guard.suspect
