"""Tests for the pure epoch bookkeeping (docs/DESIGN.md invariants 1, 2 and 6)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from colonet.buffer.epoch_queue import (
    BufferLimitError,
    BufferLimits,
    EpochError,
    EpochQueue,
    EpochStats,
)


def make_queue(
    max_packets: int = 100,
    max_bytes: int = 10_000,
    ratio: float = 1.0,
    first_epoch: int = 1,
) -> tuple[EpochQueue[str], list[int]]:
    calls: list[int] = []
    queue: EpochQueue[str] = EpochQueue(
        BufferLimits(
            max_held_packets=max_packets, max_held_bytes=max_bytes, high_water_ratio=ratio
        ),
        on_high_water=lambda: calls.append(1),
        first_epoch=first_epoch,
    )
    return queue, calls


# --- BufferLimits -----------------------------------------------------------


def test_limits_defaults() -> None:
    limits = BufferLimits()
    assert limits.max_held_packets == 50_000
    assert limits.max_held_bytes == 64 * 1024 * 1024
    assert limits.high_water_packets == 40_000
    assert limits.high_water_bytes == 53_687_092  # ceil(0.8 * 64 MiB)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_held_packets", 0),
        ("max_held_packets", -1),
        ("max_held_packets", 1.5),
        ("max_held_packets", True),
        ("max_held_bytes", 0),
        ("max_held_bytes", "64"),
    ],
)
def test_limits_reject_bad_ints(field: str, value: object) -> None:
    with pytest.raises(BufferLimitError, match=rf"{field} must be a positive int, got {value!r}"):
        BufferLimits(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("ratio", [0, 0.0, -0.5, 1.01, float("nan"), float("inf"), True, "0.5"])
def test_limits_reject_bad_ratio(ratio: object) -> None:
    with pytest.raises(BufferLimitError, match="high_water_ratio must be"):
        BufferLimits(high_water_ratio=ratio)  # type: ignore[arg-type]


def test_limit_errors_are_value_errors() -> None:
    assert issubclass(BufferLimitError, ValueError)
    assert issubclass(EpochError, ValueError)


@pytest.mark.parametrize(
    ("limit", "ratio", "mark"),
    [(100, 0.29, 29), (100, 0.8, 80), (10, 1.0, 10), (10, 1, 10), (1, 0.01, 1), (3, 0.5, 2)],
)
def test_high_water_mark_uses_ratio_as_written(limit: int, ratio: float, mark: int) -> None:
    limits = BufferLimits(max_held_packets=limit, max_held_bytes=limit, high_water_ratio=ratio)
    assert limits.high_water_packets == mark
    assert limits.high_water_bytes == mark


@given(
    limit=st.integers(min_value=1, max_value=10**9),
    ratio=st.floats(min_value=1e-6, max_value=1.0),
)
def test_high_water_mark_is_within_limit(limit: int, ratio: float) -> None:
    mark = BufferLimits(max_held_packets=limit, high_water_ratio=ratio).high_water_packets
    assert 1 <= mark <= limit


# --- construction -----------------------------------------------------------


def test_new_queue() -> None:
    queue: EpochQueue[bytes] = EpochQueue()
    assert queue.open_epoch == 1
    assert queue.last_sealed == 0
    assert queue.last_released == 0
    assert queue.held_packets == 0
    assert queue.held_bytes == 0
    stats = queue.stats()
    assert stats.epochs == (EpochStats(1, False, 0, 0, 0, 0),)
    assert stats.high_water_hits == 0


@pytest.mark.parametrize("first", [0, -3, 1.0, True])
def test_first_epoch_must_be_positive_int(first: object) -> None:
    with pytest.raises(BufferLimitError, match=rf"first_epoch must be an int >= 1, got {first!r}"):
        EpochQueue(first_epoch=first)  # type: ignore[arg-type]


def test_limits_must_be_buffer_limits() -> None:
    with pytest.raises(BufferLimitError, match="limits must be a BufferLimits"):
        EpochQueue(limits=100)  # type: ignore[arg-type]


def test_first_epoch_numbers_epochs() -> None:
    queue, _ = make_queue(first_epoch=7)
    assert queue.open_epoch == 7
    assert queue.seal() == 7
    assert queue.open_epoch == 8
    assert queue.last_sealed == 7


# --- append / seal / release ------------------------------------------------


def test_release_returns_sealed_epochs_in_arrival_order() -> None:
    queue, _ = make_queue()
    assert queue.append("a", 10)
    assert queue.append("b", 20)
    assert queue.seal() == 1
    assert queue.append("c", 30)
    assert queue.seal() == 2
    assert queue.append("d", 40)
    assert queue.held_packets == 4
    assert queue.held_bytes == 100

    assert queue.release(1) == ["a", "b"]
    assert queue.last_released == 1
    assert queue.held_packets == 2
    assert queue.held_bytes == 70
    assert queue.release(2) == ["c"]
    assert queue.held_packets == 1
    assert queue.held_bytes == 40
    stats = queue.stats()
    assert stats.released_packets == 3
    assert stats.released_bytes == 60
    assert stats.epochs == (EpochStats(3, False, 1, 40, 0, 0),)


def test_release_several_epochs_at_once() -> None:
    queue, _ = make_queue()
    for name in "abc":
        queue.append(name, 1)
        queue.seal()
    assert queue.release(3) == ["a", "b", "c"]
    assert queue.last_released == 3
    assert [e.epoch for e in queue.stats().epochs] == [4]


def test_release_is_idempotent() -> None:
    queue, _ = make_queue()
    queue.append("a", 1)
    queue.seal()
    assert queue.release(1) == ["a"]
    assert queue.release(1) == []
    assert queue.release(0) == []
    assert queue.stats().released_packets == 1


def test_release_of_lower_epoch_after_higher_is_noop() -> None:
    queue, _ = make_queue()
    queue.append("a", 1)
    queue.seal()
    queue.append("b", 1)
    queue.seal()
    assert queue.release(2) == ["a", "b"]
    assert queue.release(1) == []
    assert queue.last_released == 2


def test_release_never_includes_open_epoch() -> None:
    queue, _ = make_queue()
    queue.append("a", 1)
    queue.seal()
    queue.append("b", 1)
    assert queue.release(1) == ["a"]
    assert queue.held_packets == 1
    assert queue.stats().epochs == (EpochStats(2, False, 1, 1, 0, 0),)


def test_empty_epochs_are_held_until_released() -> None:
    queue, _ = make_queue()
    assert queue.seal() == 1
    assert queue.seal() == 2
    stats = queue.stats()
    assert [(e.epoch, e.sealed) for e in stats.epochs] == [(1, True), (2, True), (3, False)]
    assert queue.release(1) == []
    assert [e.epoch for e in queue.stats().epochs] == [2, 3]
    assert queue.last_released == 1


def test_release_before_any_seal_names_the_state() -> None:
    queue, _ = make_queue()
    with pytest.raises(EpochError, match=r"epoch 1 is not sealed; no epoch has been sealed yet"):
        queue.release(1)


def test_release_of_open_epoch_names_sealed_range() -> None:
    queue, _ = make_queue(first_epoch=3)
    for _ in range(3):
        queue.append("x", 1)
        queue.seal()
    queue.release(3)
    with pytest.raises(
        EpochError,
        match=(
            r"epoch 7 is not sealed; sealed epochs are 3\.\.5 \(4\.\.5 held\); "
            r"open epoch is 6; last released is 3"
        ),
    ):
        queue.release(7)
    # A failed release changes nothing.
    assert queue.held_packets == 2
    assert queue.last_released == 3


def test_release_rejects_non_int_epoch() -> None:
    queue, _ = make_queue()
    queue.seal()
    with pytest.raises(EpochError, match="epoch must be an int, got '1'"):
        queue.release("1")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [-1, 1.5, None, True])
def test_append_rejects_bad_size(size: object) -> None:
    queue, _ = make_queue()
    with pytest.raises(ValueError, match=rf"packet size must be an int >= 0, got {size!r}"):
        queue.append("a", size)  # type: ignore[arg-type]
    assert queue.held_packets == 0


def test_zero_size_packets_are_held() -> None:
    queue, _ = make_queue()
    assert queue.append("a", 0)
    assert queue.held_packets == 1
    assert queue.held_bytes == 0


def test_queue_holds_any_object_including_duplicates() -> None:
    queue: EpochQueue[object] = EpochQueue()
    packet = object()
    queue.append(packet, 1)
    queue.append(packet, 1)
    queue.append(None, 1)
    queue.seal()
    released = queue.release(1)
    assert released[0] is packet and released[1] is packet and released[2] is None


# --- tail drop --------------------------------------------------------------


def test_tail_drop_on_packet_limit() -> None:
    queue, _ = make_queue(max_packets=2)
    assert queue.append("a", 5)
    assert queue.append("b", 5)
    assert not queue.append("c", 7)
    assert queue.held_packets == 2
    stats = queue.stats()
    assert (stats.tail_dropped_packets, stats.tail_dropped_bytes) == (1, 7)
    assert stats.epochs[-1] == EpochStats(1, False, 2, 10, 1, 7)


def test_tail_drop_on_byte_limit_keeps_smaller_packets() -> None:
    queue, _ = make_queue(max_bytes=100)
    assert queue.append("a", 60)
    assert not queue.append("big", 41)
    assert queue.append("small", 40)
    assert queue.held_bytes == 100
    assert not queue.append("empty-but-full", 1)
    assert queue.append("zero", 0)
    assert queue.stats().tail_dropped_packets == 2
    assert queue.stats().tail_dropped_bytes == 42


def test_packet_larger_than_limit_is_always_dropped() -> None:
    queue, _ = make_queue(max_bytes=10)
    assert not queue.append("jumbo", 11)
    assert queue.held_packets == 0


def test_tail_drops_are_counted_per_epoch_and_room_returns_after_release() -> None:
    queue, _ = make_queue(max_packets=1)
    queue.append("a", 1)
    queue.append("dropped-1", 3)
    queue.seal()
    queue.append("dropped-2", 4)
    epochs = queue.stats().epochs
    assert [(e.tail_dropped_packets, e.tail_dropped_bytes) for e in epochs] == [(1, 3), (1, 4)]
    assert queue.release(1) == ["a"]
    assert queue.append("b", 1)
    stats = queue.stats()
    assert (stats.tail_dropped_packets, stats.tail_dropped_bytes) == (2, 7)
    assert stats.epochs == (EpochStats(2, False, 1, 1, 1, 4),)


# --- high water -------------------------------------------------------------


def test_high_water_fires_once_per_upward_crossing() -> None:
    queue, calls = make_queue(max_packets=10, ratio=0.5)
    for i in range(4):
        queue.append(f"p{i}", 1)
    assert calls == []
    queue.append("p4", 1)  # 5 held == mark
    assert len(calls) == 1
    for i in range(5, 10):
        queue.append(f"p{i}", 1)
    queue.append("dropped", 1)
    assert len(calls) == 1
    queue.seal()
    queue.release(1)
    queue.append("again", 1)
    assert len(calls) == 1  # 1 held, below the mark: nothing to report
    for i in range(4):
        queue.append(f"q{i}", 1)
    assert len(calls) == 2
    assert queue.stats().high_water_hits == 2


def test_high_water_on_bytes() -> None:
    queue, calls = make_queue(max_bytes=100, ratio=0.8)
    queue.append("a", 79)
    assert calls == []
    queue.append("b", 1)
    assert calls == [1]


def test_high_water_rearms_only_when_both_below() -> None:
    queue, calls = make_queue(max_packets=4, max_bytes=100, ratio=0.5)
    queue.append("big", 60)  # bytes over the mark
    assert len(calls) == 1
    queue.seal()
    queue.append("a", 1)
    queue.append("b", 1)  # packets reach the mark while still armed-off
    assert len(calls) == 1
    queue.release(1)  # bytes fall below, packets still at the mark: not re-armed
    queue.append("c", 1)
    assert len(calls) == 1
    queue.discard()
    queue.append("d", 50)
    assert len(calls) == 2


def test_high_water_without_callback_still_counts() -> None:
    queue: EpochQueue[str] = EpochQueue(BufferLimits(max_held_packets=2, high_water_ratio=0.5))
    queue.append("a", 1)
    assert queue.stats().high_water_hits == 1


# --- release_all / discard --------------------------------------------------


def test_release_all_returns_everything_and_marks_sealed_released() -> None:
    queue, _ = make_queue()
    queue.append("a", 1)
    queue.seal()
    queue.append("b", 2)
    queue.seal()
    queue.append("c", 3)
    assert queue.release_all() == ["a", "b", "c"]
    assert queue.held_packets == 0
    assert queue.held_bytes == 0
    assert queue.open_epoch == 3
    assert queue.last_released == 2
    stats = queue.stats()
    assert (stats.released_packets, stats.released_bytes) == (3, 6)
    assert stats.epochs == (EpochStats(3, False, 0, 0, 0, 0),)
    assert queue.release(2) == []


def test_release_all_on_empty_queue() -> None:
    queue, _ = make_queue()
    assert queue.release_all() == []
    assert queue.last_released == 0


def test_discard_forgets_everything_without_releasing() -> None:
    queue, _ = make_queue(max_packets=2)
    queue.append("a", 1)
    queue.seal()
    queue.append("b", 2)
    queue.append("dropped", 5)
    assert queue.discard() == ["a", "b"]
    assert queue.held_packets == 0
    assert queue.last_released == 0
    assert queue.last_sealed == 1
    stats = queue.stats()
    assert (stats.discarded_packets, stats.discarded_bytes) == (2, 3)
    assert (stats.released_packets, stats.released_bytes) == (0, 0)
    # The open epoch survives with its tail-drop count.
    assert stats.epochs == (EpochStats(2, False, 0, 0, 1, 5),)
    # A late commit of a discarded epoch must not resurrect anything.
    assert queue.release(1) == []


def test_queue_keeps_working_after_discard() -> None:
    queue, _ = make_queue()
    queue.append("a", 1)
    queue.discard()
    queue.append("b", 1)
    assert queue.seal() == 1
    assert queue.release(1) == ["b"]


def test_repr_mentions_state() -> None:
    queue, _ = make_queue()
    queue.append("a", 3)
    assert "held_packets=1" in repr(queue)
    assert "held_bytes=3" in repr(queue)


# --- model-based property test ----------------------------------------------


class EpochQueueMachine(RuleBasedStateMachine):
    """Drives an EpochQueue and a list-based model with the same operations."""

    @initialize(
        max_packets=st.integers(min_value=1, max_value=8),
        max_bytes=st.integers(min_value=1, max_value=60),
        ratio=st.sampled_from([0.25, 0.5, 0.8, 1.0]),
        first_epoch=st.integers(min_value=1, max_value=5),
    )
    def setup(self, max_packets: int, max_bytes: int, ratio: float, first_epoch: int) -> None:
        self.limits = BufferLimits(max_packets, max_bytes, ratio)
        self.calls = 0

        def on_high_water() -> None:
            self.calls += 1

        self.queue: EpochQueue[int] = EpochQueue(self.limits, on_high_water, first_epoch)
        self.next_id = 0
        self.open_epoch = first_epoch
        self.last_sealed = 0
        self.last_released = 0
        self.held: list[tuple[int, int, int]] = []  # (id, epoch, size)
        self.accepted: list[int] = []
        self.out: list[int] = []  # released and discarded, in the order they left
        self.released_bytes = 0
        self.discarded_bytes = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.armed = True

    def _held_totals(self) -> tuple[int, int]:
        return len(self.held), sum(size for _, _, size in self.held)

    def _rearm(self) -> None:
        packets, nbytes = self._held_totals()
        if packets < self.limits.high_water_packets and nbytes < self.limits.high_water_bytes:
            self.armed = True

    @rule(size=st.integers(min_value=0, max_value=25))
    def append(self, size: int) -> None:
        packet = self.next_id
        self.next_id += 1
        packets, nbytes = self._held_totals()
        fits = packets + 1 <= self.limits.max_held_packets and (
            nbytes + size <= self.limits.max_held_bytes
        )
        calls_before = self.calls
        assert self.queue.append(packet, size) is fits
        if not fits:
            self.dropped += 1
            self.dropped_bytes += size
            assert self.calls == calls_before
            return
        self.held.append((packet, self.open_epoch, size))
        self.accepted.append(packet)
        packets, nbytes = packets + 1, nbytes + size
        crossed = (
            packets >= self.limits.high_water_packets or nbytes >= self.limits.high_water_bytes
        )
        if self.armed and crossed:
            self.armed = False
            assert self.calls == calls_before + 1
        else:
            assert self.calls == calls_before

    @rule()
    def seal(self) -> None:
        assert self.queue.seal() == self.open_epoch
        self.last_sealed = self.open_epoch
        self.open_epoch += 1

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        anything = st.integers(min_value=0, max_value=self.open_epoch + 1)
        if self.last_sealed > self.last_released:
            # Mostly commit something that is pending, as the engine does.
            pending = st.integers(min_value=self.last_released + 1, max_value=self.last_sealed)
            upto = data.draw(st.one_of(pending, pending, anything), label="upto")
        else:
            upto = data.draw(anything, label="upto")
        if upto > self.last_released and upto > self.last_sealed:
            with pytest.raises(EpochError, match=f"epoch {upto} is not sealed"):
                self.queue.release(upto)
            return
        got = self.queue.release(upto)
        expected = [(p, e, s) for p, e, s in self.held if e <= upto]
        assert got == [p for p, _, _ in expected]
        # Output commit: nothing leaves before its epoch is sealed and committed.
        assert all(e <= upto <= self.last_sealed for _, e, _ in expected)
        if upto <= self.last_released:
            assert got == []
        self.held = self.held[len(expected) :]
        self.out.extend(got)
        self.released_bytes += sum(s for _, _, s in expected)
        self.last_released = max(self.last_released, upto)
        self._rearm()

    @rule()
    def release_all(self) -> None:
        got = self.queue.release_all()
        assert got == [p for p, _, _ in self.held]
        self.out.extend(got)
        self.released_bytes += sum(s for _, _, s in self.held)
        self.held = []
        self.last_released = max(self.last_released, self.last_sealed)
        self._rearm()

    @rule()
    def discard(self) -> None:
        got = self.queue.discard()
        assert got == [p for p, _, _ in self.held]
        self.out.extend(got)
        self.discarded_bytes += sum(s for _, _, s in self.held)
        self.held = []
        self._rearm()

    @invariant()
    def matches_model(self) -> None:
        queue = self.queue
        packets, nbytes = self._held_totals()
        assert queue.held_packets == packets <= self.limits.max_held_packets
        assert queue.held_bytes == nbytes <= self.limits.max_held_bytes
        assert queue.open_epoch == self.open_epoch
        assert queue.last_sealed == self.last_sealed
        assert queue.last_released == self.last_released

    @invariant()
    def exactly_once_in_order(self) -> None:
        # Everything that left plus everything still held is exactly what was
        # accepted, in order, with no duplicates.
        assert self.out + [p for p, _, _ in self.held] == self.accepted
        assert len(set(self.out)) == len(self.out)

    @invariant()
    def stats_add_up(self) -> None:
        stats = self.queue.stats()
        assert stats.held_packets + stats.released_packets + stats.discarded_packets == len(
            self.accepted
        )
        accepted_bytes = stats.held_bytes + stats.released_bytes + stats.discarded_bytes
        assert stats.released_bytes == self.released_bytes
        assert stats.discarded_bytes == self.discarded_bytes
        assert accepted_bytes == self.released_bytes + self.discarded_bytes + self._held_totals()[1]
        assert (stats.tail_dropped_packets, stats.tail_dropped_bytes) == (
            self.dropped,
            self.dropped_bytes,
        )
        assert stats.high_water_hits == self.calls
        epochs = stats.epochs
        assert epochs[-1].epoch == stats.open_epoch and not epochs[-1].sealed
        assert all(e.sealed for e in epochs[:-1])
        assert [e.epoch for e in epochs] == sorted({e.epoch for e in epochs})
        assert all(stats.last_released < e.epoch for e in epochs)
        assert sum(e.held_packets for e in epochs) == stats.held_packets
        assert sum(e.held_bytes for e in epochs) == stats.held_bytes
        for e in epochs:
            model = [s for _, ep, s in self.held if ep == e.epoch]
            assert (e.held_packets, e.held_bytes) == (len(model), sum(model))


EpochQueueMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_epoch_queue_matches_model = EpochQueueMachine.TestCase
