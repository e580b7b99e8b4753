"""Tests for Filter and FilterSet on a fake backend: the hook operations, no root."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from colonet.buffer.backend import Backend, Deliver
from colonet.buffer.epoch_queue import BufferLimits, EpochError
from colonet.buffer.filter import Filter, FilterState, NotBufferingError
from colonet.buffer.filter_set import FilterSet
from colonet.buffer.hooks import CommitResult, EpochMismatchError, FailoverResult, FailoverRole
from colonet.buffer.status import FilterSetStatus
from colonet.errors import SteeringLostError, UsageError

Call = tuple[str, str, Any]


class FakeBackend:
    """A Backend that records every call and lets the test play the kernel.

    `emit` delivers a packet now (it arrived and was read); `pending` holds
    packets the kernel still has, which only `drain` (or `poll`) delivers.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        log: list[Call] | None = None,
        fd: int = 100,
        probe: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.log: list[Call] = log if log is not None else []
        self.fd = fd
        self.probe = probe  # called at each drain; its value is logged
        self.pending: list[tuple[object, int]] = []
        self.released: list[object] = []
        self.dropped: list[object] = []
        self.stopped = False
        self.fail_stop = False
        # What `check` reports missing (the test plays the outside world);
        # `reinstall_steering` puts it back unless `fail_reinstall` is set.
        self.missing: list[str] = []
        self.fail_reinstall: str | None = None
        self.reinstalls = 0
        self._deliver: Deliver | None = None

    def _record(self, op: str, arg: Any = None) -> None:
        self.log.append((self.name, op, arg))

    def emit(self, packet: object, size: int = 100) -> None:
        assert self._deliver is not None, "backend not started"
        self._deliver(packet, size)

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for packet, size in pending:
            self.emit(packet, size)

    def start(self, deliver: Deliver) -> None:
        self._record("start")
        self._deliver = deliver

    def fileno(self) -> int:
        return self.fd

    def poll(self) -> None:
        self._record("poll")
        self._flush()

    def drain(self) -> None:
        self._record("drain", self.probe() if self.probe else None)
        self._flush()

    def release(self, packets: Sequence[object]) -> None:
        self._record("release", list(packets))
        self.released.extend(packets)

    def drop(self, packets: Sequence[object]) -> None:
        self._record("drop", list(packets))
        self.dropped.extend(packets)

    def stop(self) -> None:
        self._record("stop")
        self.stopped = True
        if self.fail_stop:
            raise RuntimeError(f"{self.name} refused to stop")

    def check(self) -> list[str]:
        return list(self.missing)

    def reinstall_steering(self) -> None:
        self._record("reinstall")
        self.reinstalls += 1
        if self.fail_reinstall:
            raise RuntimeError(self.fail_reinstall)
        self.missing = []

    def ops(self) -> list[str]:
        return [op for name, op, _ in self.log if name == self.name]


def make_filter(
    netdev: str = "tap0",
    *,
    limits: BufferLimits | None = None,
    on_high_water: Callable[[str], None] | None = None,
    log: list[Call] | None = None,
    fd: int = 100,
) -> tuple[Filter, FakeBackend]:
    fake = FakeBackend(f"fake-{netdev}", log=log, fd=fd)
    backend: Backend = fake  # type-checks the fake against the protocol
    f = Filter(netdev, backend, limits or BufferLimits(), on_high_water)
    f.start()
    return f, fake


def make_set(n: int = 2, **kwargs: Any) -> tuple[FilterSet, list[FakeBackend], list[Call]]:
    log: list[Call] = []
    pairs = [make_filter(f"tap{i}", log=log, fd=100 + i, **kwargs) for i in range(n)]
    return FilterSet([f for f, _ in pairs]), [b for _, b in pairs], log


# -- a single filter --------------------------------------------------------


def test_start_sets_buffering_and_hands_deliver_to_backend() -> None:
    f, fake = make_filter()
    assert f.state is FilterState.BUFFERING
    assert fake.ops() == ["start"]


def test_start_failure_leaves_filter_stopped() -> None:
    fake = FakeBackend()

    def boom(deliver: Deliver) -> None:
        raise RuntimeError("no queue")

    fake.start = boom  # type: ignore[method-assign]
    f = Filter("tap0", fake, BufferLimits())
    with pytest.raises(RuntimeError, match="no queue"):
        f.start()
    assert f.state is FilterState.STOPPED


def test_seal_drains_pending_packets_into_the_sealed_epoch() -> None:
    f, fake = make_filter()
    fake.emit("a")
    fake.pending = [("b", 10), ("c", 10)]
    assert f.seal() == 1
    fake.emit("d")
    assert fake.pending == []
    assert f.commit(1) == 3
    assert fake.released == ["a", "b", "c"]
    assert f.seal() == 2
    assert f.commit(2) == 1
    assert fake.released == ["a", "b", "c", "d"]


def test_seal_calls_drain_once_and_releases_nothing() -> None:
    f, fake = make_filter()
    fake.emit("a")
    f.seal()
    assert fake.ops() == ["start", "drain"]


def test_filter_commit_of_unsealed_epoch_raises_and_releases_nothing() -> None:
    f, fake = make_filter()
    fake.emit("a")
    f.seal()
    with pytest.raises(EpochError, match="epoch 2 is not sealed"):
        f.commit(2)
    assert "release" not in fake.ops()


def test_tail_drop_goes_to_backend_drop_and_is_counted() -> None:
    f, fake = make_filter(limits=BufferLimits(max_held_packets=3))
    for packet in ("p1", "p2", "p3"):
        fake.emit(packet, 100)
    assert fake.dropped == []
    fake.emit("p4", 100)
    assert fake.dropped == ["p4"]
    assert fake.log[-1] == ("fake-tap0", "drop", ["p4"])
    status = f.status().to_json()
    assert status["held_packets"] == 3
    assert status["tail_dropped_packets"] == 1
    assert status["tail_dropped_bytes"] == 100
    f.seal()
    f.commit(1)
    assert fake.released == ["p1", "p2", "p3"]


def test_tail_drop_by_bytes() -> None:
    f, fake = make_filter(limits=BufferLimits(max_held_bytes=250))
    fake.emit("p1", 100)
    fake.emit("p2", 100)
    fake.emit("big", 100)
    fake.emit("small", 50)
    assert fake.dropped == ["big"]
    assert f.status().to_json()["held_bytes"] == 250


def test_on_high_water_receives_the_netdev_name() -> None:
    seen: list[str] = []
    f, fake = make_filter(
        "vnet7",
        limits=BufferLimits(max_held_packets=4, high_water_ratio=0.5),
        on_high_water=seen.append,
    )
    fake.emit("p1")
    assert seen == []
    fake.emit("p2")
    assert seen == ["vnet7"]
    fake.emit("p3")
    assert seen == ["vnet7"]  # edge-triggered
    assert f.status().to_json()["high_water_hits"] == 1


def test_filter_status_fields() -> None:
    f, fake = make_filter("tap3")
    fake.emit("a", 60)
    status = f.status().to_json()
    assert status["netdev"] == "tap3"
    assert status["backend"] == "fake-tap3"
    assert status["state"] == "buffering"
    assert status["passed_through_packets"] == 0
    assert status["dropped_after_failover_packets"] == 0
    assert status["held_packets"] == 1
    assert status["held_bytes"] == 60


def test_filter_status_includes_backend_describe() -> None:
    f, fake = make_filter()
    fake.describe = lambda: {"queue": 9}  # type: ignore[attr-defined]
    assert f.status().to_json()["queue"] == 9


# -- FilterSet: checkpoint --------------------------------------------------


def test_filter_set_needs_at_least_one_filter() -> None:
    with pytest.raises(UsageError, match="at least one netdev"):
        FilterSet([])


def test_begin_checkpoint_drains_all_filters_before_sealing_any() -> None:
    fs, (a, b), log = make_set(2)

    def open_epochs() -> tuple[int, ...]:
        return tuple(f.queue.open_epoch for f in fs.filters)

    a.probe = open_epochs
    b.probe = open_epochs
    a.emit("a1")
    b.pending = [("b1", 10)]
    log.clear()
    assert fs.begin_checkpoint() == 1
    assert log == [("fake-tap0", "drain", (1, 1)), ("fake-tap1", "drain", (1, 1))]
    assert [f.queue.last_sealed for f in fs.filters] == [1, 1]
    assert fs.open_epoch == 2
    # b1 was still in the kernel at the barrier: it belongs to epoch 1.
    assert fs.commit(1) == CommitResult(1, 2)
    assert a.released == ["a1"]
    assert b.released == ["b1"]


def test_begin_checkpoint_returns_the_same_epoch_on_all_filters() -> None:
    fs, _, _ = make_set(3)
    assert [fs.begin_checkpoint() for _ in range(3)] == [1, 2, 3]
    assert [f.queue.last_sealed for f in fs.filters] == [3, 3, 3]
    assert [f.queue.open_epoch for f in fs.filters] == [4, 4, 4]
    assert fs.last_sealed == 3


def test_begin_checkpoint_with_a_non_buffering_filter_drains_nothing() -> None:
    fs, (a, b), log = make_set(2)
    fs.filters[1].failover(FailoverRole.SECONDARY)
    log.clear()
    with pytest.raises(NotBufferingError, match="tap1 is discarding"):
        fs.begin_checkpoint()
    assert log == []
    assert fs.filters[0].queue.last_sealed == 0


# -- FilterSet: commit ------------------------------------------------------


def fill_two_epochs(fs: FilterSet, fakes: list[FakeBackend]) -> None:
    a, b = fakes
    a.emit("a1")
    b.emit("b1")
    a.emit("a2")
    fs.begin_checkpoint()  # epoch 1: a1 a2 | b1
    b.emit("b2")
    a.pending = [("a3", 10)]
    fs.begin_checkpoint()  # epoch 2: a3 | b2
    a.emit("a4")
    b.emit("b3")  # epoch 3 (open): a4 | b3


def test_commit_releases_in_arrival_order_only_up_to_n() -> None:
    fs, fakes, _ = make_set(2)
    a, b = fakes
    fill_two_epochs(fs, fakes)
    assert fs.commit(1) == CommitResult(1, 3)
    assert a.released == ["a1", "a2"]
    assert b.released == ["b1"]
    assert fs.commit(2) == CommitResult(2, 2)
    assert a.released == ["a1", "a2", "a3"]
    assert b.released == ["b1", "b2"]
    assert [f.queue.held_packets for f in fs.filters] == [1, 1]


def test_commit_none_releases_all_sealed_epochs() -> None:
    fs, fakes, _ = make_set(2)
    a, b = fakes
    fill_two_epochs(fs, fakes)
    assert fs.commit(None) == CommitResult(2, 5)
    assert a.released == ["a1", "a2", "a3"]
    assert b.released == ["b1", "b2"]
    assert fs.status().to_json()["last_released"] == 2


def test_commit_none_with_nothing_sealed_releases_nothing() -> None:
    fs, (a, b), _ = make_set(2)
    a.emit("a1")
    assert fs.commit() == CommitResult(0, 0)
    assert a.released == [] and b.released == []


def test_commit_of_already_committed_epoch_releases_nothing() -> None:
    fs, fakes, _ = make_set(2)
    a, b = fakes
    fill_two_epochs(fs, fakes)
    fs.commit(2)
    before = (list(a.released), list(b.released))
    assert fs.commit(2) == CommitResult(2, 0)
    assert fs.commit(1) == CommitResult(1, 0)
    assert fs.commit(None) == CommitResult(2, 0)
    assert (a.released, b.released) == before


@pytest.mark.parametrize(
    ("epoch", "message"),
    [
        (3, "epoch 3 does not exist or is not sealed: sealed epochs go up to 2"),
        (99, "epoch 99 does not exist or is not sealed"),
        (0, "epoch 0 does not exist: epochs are numbered from 1"),
        (-1, "epoch -1 does not exist"),
    ],
)
def test_commit_of_unsealed_or_missing_epoch_releases_nothing_anywhere(
    epoch: int, message: str
) -> None:
    fs, fakes, log = make_set(2)
    fill_two_epochs(fs, fakes)
    log.clear()
    with pytest.raises(EpochError, match=message):
        fs.commit(epoch)
    assert log == []
    assert all(fake.released == [] for fake in fakes)
    assert [f.queue.held_packets for f in fs.filters] == [4, 3]
    # The set is still usable afterwards.
    assert fs.commit(2) == CommitResult(2, 5)


def test_commit_before_any_seal_raises() -> None:
    fs, fakes, _ = make_set(2)
    fakes[0].emit("a1")
    with pytest.raises(EpochError, match="no epoch is sealed yet"):
        fs.commit(1)
    assert fakes[0].released == []


def test_commit_of_negative_epoch_before_any_seal_raises() -> None:
    fs, _, _ = make_set(2)
    with pytest.raises(EpochError):
        fs.commit(-1)


def test_commit_with_a_non_buffering_filter_releases_nothing_on_any() -> None:
    fs, fakes, _ = make_set(2)
    a, b = fakes
    a.emit("a1")
    b.emit("b1")
    fs.begin_checkpoint()
    fs.filters[1].failover(FailoverRole.SECONDARY)
    with pytest.raises(NotBufferingError, match="cannot commit: the filter on tap1 is discarding"):
        fs.commit(1)
    assert a.released == []
    assert fs.filters[0].queue.held_packets == 1


# -- FilterSet: failover ----------------------------------------------------


def test_failover_primary_releases_all_in_order_then_stops_backend() -> None:
    fs, fakes, log = make_set(2)
    a, b = fakes
    fill_two_epochs(fs, fakes)
    a.pending = [("a5", 10)]
    log.clear()
    assert fs.failover("primary") == FailoverResult(FailoverRole.PRIMARY, 8)
    assert [(n, op) for n, op, _ in log] == [
        ("fake-tap0", "drain"),
        ("fake-tap0", "release"),
        ("fake-tap0", "stop"),
        ("fake-tap1", "drain"),
        ("fake-tap1", "release"),
        ("fake-tap1", "stop"),
    ]
    assert a.released == ["a1", "a2", "a3", "a4", "a5"]
    assert b.released == ["b1", "b2", "b3"]
    assert a.dropped == [] and b.dropped == []
    assert all(f.state is FilterState.PASSTHROUGH for f in fs.filters)
    assert fs.status().to_json()["netdevs"][0]["state"] == "passthrough"


def test_after_primary_failover_packets_pass_through_immediately() -> None:
    fs, (a, b), _ = make_set(2)
    fs.failover(FailoverRole.PRIMARY)
    a.emit("late1")
    a.emit("late2")
    assert a.released == ["late1", "late2"]
    assert a.log[-1] == ("fake-tap0", "release", ["late2"])
    status = fs.filters[0].status().to_json()
    assert status["passed_through_packets"] == 2
    assert status["held_packets"] == 0
    assert fs.fds() == {}


def test_failover_secondary_drops_all_held_and_keeps_steering() -> None:
    fs, fakes, log = make_set(2)
    a, b = fakes
    fill_two_epochs(fs, fakes)
    fs.commit(1)
    b.pending = [("b4", 10)]
    log.clear()
    assert fs.failover("secondary") == FailoverResult(FailoverRole.SECONDARY, 5)
    assert a.dropped == ["a3", "a4"]
    assert b.dropped == ["b2", "b3", "b4"]
    assert a.released == ["a1", "a2"] and b.released == ["b1"]
    assert "stop" not in [op for _, op, _ in log]
    assert not a.stopped and not b.stopped
    assert all(f.state is FilterState.DISCARDING for f in fs.filters)
    assert fs.fds() == {100: fs.filters[0], 101: fs.filters[1]}


def test_after_secondary_failover_packets_are_dropped() -> None:
    fs, (a, b), _ = make_set(2)
    a.emit("held")
    fs.failover(FailoverRole.SECONDARY)
    a.emit("late1")
    a.pending = [("late2", 10)]
    a.poll()
    assert a.dropped == ["held", "late1", "late2"]
    assert a.released == []
    status = fs.filters[0].status().to_json()
    assert status["state"] == "discarding"
    assert status["dropped_after_failover_packets"] == 2
    assert status["discarded_packets"] == 1


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_checkpoint_commit_and_failover_after_failover_raise(role: str) -> None:
    fs, fakes, log = make_set(2)
    fs.failover(role)
    log.clear()
    with pytest.raises(NotBufferingError, match="cannot seal an epoch"):
        fs.begin_checkpoint()
    with pytest.raises(NotBufferingError, match="cannot commit"):
        fs.commit()
    with pytest.raises(NotBufferingError, match="cannot commit"):
        fs.commit(1)
    with pytest.raises(UsageError, match="cannot fail over as primary"):
        fs.failover("primary")
    with pytest.raises(UsageError, match="cannot fail over as secondary"):
        fs.failover("secondary")
    with pytest.raises(NotBufferingError):
        fs.filters[0].seal()
    assert log == []
    assert issubclass(NotBufferingError, UsageError)


def test_failover_rejects_unknown_role() -> None:
    fs, _, log = make_set(1)
    log.clear()
    with pytest.raises(ValueError, match="tertiary"):
        fs.failover("tertiary")
    assert log == []


# -- stop -------------------------------------------------------------------


def test_stop_drops_held_and_pending_never_releases() -> None:
    f, fake = make_filter()
    fake.emit("a1")
    f.seal()
    fake.emit("a2")
    fake.pending = [("a3", 10)]
    f.stop()
    assert fake.released == []
    assert sorted(fake.dropped) == ["a1", "a2", "a3"]
    assert fake.ops()[-1] == "stop"
    assert fake.stopped
    assert f.state is FilterState.STOPPED
    assert f.status().to_json()["state"] == "stopped"


def test_stop_after_secondary_failover_stops_the_backend() -> None:
    f, fake = make_filter()
    f.failover(FailoverRole.SECONDARY)
    assert not fake.stopped
    f.stop()
    assert fake.stopped
    assert f.state is FilterState.STOPPED


def test_stop_after_primary_failover_does_not_stop_twice() -> None:
    f, fake = make_filter()
    f.failover(FailoverRole.PRIMARY)
    f.stop()
    f.stop()
    assert fake.ops().count("stop") == 1
    assert f.state is FilterState.STOPPED


def test_stop_twice_is_harmless() -> None:
    f, fake = make_filter()
    f.stop()
    f.stop()
    assert fake.ops() == ["start", "drain", "drop", "stop"]


def test_stop_without_failover_does_not_count_failover_drops() -> None:
    f, fake = make_filter()
    fake.pending = [("a1", 10)]
    f.stop()
    assert fake.dropped == ["a1"]
    assert f.status().to_json()["dropped_after_failover_packets"] == 0


def test_filter_set_stop_stops_all_even_if_one_fails() -> None:
    fs, (a, b), _ = make_set(2)
    a.emit("a1")
    b.emit("b1")
    a.fail_stop = True
    with pytest.raises(UsageError, match="stopping filters: tap0: fake-tap0 refused to stop"):
        fs.stop()
    assert a.stopped and b.stopped
    assert a.released == [] and b.released == []
    assert a.dropped == ["a1"] and b.dropped == ["b1"]
    assert fs.fds() == {}


# -- status -----------------------------------------------------------------


def test_filter_set_status_shape() -> None:
    fs, fakes, _ = make_set(2)
    fill_two_epochs(fs, fakes)
    fs.commit(1)
    record = fs.status()
    status = record.to_json()
    assert set(status) == {
        "open_epoch",
        "last_sealed",
        "last_released",
        "oldest_epoch_age_s",
        "high_water_requests",
        "netdevs",
    }
    assert FilterSetStatus.from_json(json.loads(json.dumps(status))) == record
    assert (status["open_epoch"], status["last_sealed"], status["last_released"]) == (3, 2, 1)
    netdevs = status["netdevs"]
    assert isinstance(netdevs, list)
    assert [n["netdev"] for n in netdevs] == ["tap0", "tap1"]
    assert [n["backend"] for n in netdevs] == ["fake-tap0", "fake-tap1"]
    assert [n["state"] for n in netdevs] == ["buffering", "buffering"]
    assert [n["held_packets"] for n in netdevs] == [2, 2]
    epochs = netdevs[0]["epochs"]
    assert [(e["epoch"], e["sealed"], e["held_packets"]) for e in epochs] == [
        (2, True, 1),
        (3, False, 1),
    ]


def test_begin_checkpoint_with_the_open_epoch_seals_it() -> None:
    fs, fakes, _ = make_set(2)
    assert fs.begin_checkpoint(1) == 1
    assert fs.begin_checkpoint(2) == 2


@pytest.mark.parametrize("asked", [1, 3, 7])
def test_begin_checkpoint_of_another_epoch_seals_nothing(asked: int) -> None:
    """Engine and filters count one epoch: a mismatch is an error before
    any drain or seal, so nothing of it can ever be released."""
    fs, fakes, log = make_set(2)
    fs.begin_checkpoint(1)
    fakes[0].emit("late", 10)
    log.clear()
    with pytest.raises(EpochMismatchError, match=f"asked to seal epoch {asked}.*open epoch is 2"):
        fs.begin_checkpoint(asked)
    assert log == []  # not even drained
    assert (fs.open_epoch, fs.last_sealed) == (2, 1)
    assert fs.commit(1) == CommitResult(1, 0)
    assert fs.status().netdevs[0].queue.held_packets == 1  # "late" stays held, unsealed


def test_filter_set_fds_maps_fileno_to_filter() -> None:
    fs, _, _ = make_set(3)
    assert fs.fds() == {100: fs.filters[0], 101: fs.filters[1], 102: fs.filters[2]}
    fs.filters[1].failover(FailoverRole.PRIMARY)
    assert fs.fds() == {100: fs.filters[0], 102: fs.filters[2]}


def test_epoch_age_is_the_wait_of_the_oldest_unreleased_epoch() -> None:
    now = [100.0]
    pairs = [make_filter("tap0", fd=100)]
    fs = FilterSet([f for f, _ in pairs], clock=lambda: now[0])
    fake = pairs[0][1]
    now[0] = 101.0
    fs.begin_checkpoint()  # epoch 1 (opened at 100) sealed, 2 opens at 101
    now[0] = 103.5
    assert fs.oldest_epoch_age_s() == 3.5
    fs.commit(1)
    assert fs.oldest_epoch_age_s() == 2.5  # epoch 2, open since 101
    assert fake is not None


def test_released_epochs_are_handed_to_a_capture_before_they_go() -> None:
    fs, fakes, _ = make_set(2)
    fill_two_epochs(fs, fakes)
    seen: list[tuple[str, int, list[object]]] = []
    fs.on_release = lambda netdev, epoch, packets: seen.append((netdev, epoch, packets))
    held_before = {f.netdev: f.queue.held() for f in fs.filters}
    fs.commit(1)
    assert [(n, e) for n, e, _ in seen] == [("tap0", 1), ("tap1", 1)]
    assert seen[0][2] == held_before["tap0"][0][1]
    assert [e for e, _ in fs.filters[0].queue.held()] == [2, 3]


# -- steering removed from outside (docs/DESIGN.md invariant 7) --------------

TC_GONE = ["the clsact qdisc on tap0", "colonet's bpf filter on tap0's ingress"]


def test_intact_steering_changes_nothing() -> None:
    fs, fakes, _ = make_set(2)
    assert fs.check_steering() == []
    assert [f.state for f in fs.filters] == [FilterState.BUFFERING] * 2
    assert [fake.reinstalls for fake in fakes] == [0, 0]


def test_lost_steering_is_reported_once_and_put_back() -> None:
    fs, (a, b), _ = make_set(2)
    a.emit("a1")
    a.missing = list(TC_GONE)
    (loss,) = fs.check_steering()
    assert (loss.netdev, loss.backend, loss.missing) == ("tap0", "fake-tap0", tuple(TC_GONE))
    assert loss.held_packets == 1 and loss.reinstall_error is None
    assert loss.detail == (
        "vanished: the clsact qdisc on tap0; colonet's bpf filter on tap0's ingress"
    )
    assert loss.to_json() == {
        "event": "steering-lost",
        "netdev": "tap0",
        "backend": "fake-tap0",
        "detail": loss.detail,
        "action": "steering re-installed so the netdev stays closed; "
        "nothing more is released, new output is dropped",
        "held_packets": 1,
    }
    assert a.reinstalls == 1 and a.ops()[-1] == "reinstall"
    assert (fs.filters[0].state, fs.filters[1].state) == (
        FilterState.STEERING_LOST,
        FilterState.BUFFERING,
    )
    assert fs.check_steering() == []  # put back: nothing new to say
    assert fs.filters[0].state is FilterState.STEERING_LOST  # for good
    a.missing = ["the capture tap cnc5"]  # removed again, another piece
    (again,) = fs.check_steering()
    assert again.missing == ("the capture tap cnc5",)
    assert fs.filters[0].steering_losses == 2 and fs.filters[0].reason == again.detail


def test_a_filter_that_lost_its_steering_releases_nothing_anywhere() -> None:
    fs, (a, b), _ = make_set(2)
    a.emit("a1")
    b.emit("b1")
    assert fs.begin_checkpoint(1) == 1
    a.missing = list(TC_GONE)
    fs.check_steering()
    with pytest.raises(SteeringLostError) as refused:
        fs.commit(1)
    message = str(refused.value)
    assert "cannot commit: colonet's fake-tap0 steering of tap0 was removed from outside" in message
    assert "vanished: the clsact qdisc on tap0" in message and "start a new one" in message
    assert refused.value.exit_code == 5
    assert a.released == [] and b.released == []  # the other netdev holds too
    for refused_call in (
        lambda: fs.begin_checkpoint(2),
        lambda: fs.failover("primary"),
        lambda: fs.failover("secondary"),
    ):
        with pytest.raises(SteeringLostError):
            refused_call()
    assert a.released == [] and b.released == []


def test_after_the_loss_new_packets_are_dropped_and_counted() -> None:
    f, fake = make_filter()
    f.queue.append("held", 10)
    fake.missing = ["x"]
    f.check_steering()
    fake.emit("late1")
    fake.emit("late2")
    assert fake.dropped == ["late1", "late2"]
    status = f.status()
    assert status.state == "steering-lost" and status.reason == "vanished: x"
    assert status.dropped_after_steering_lost_packets == 2 and status.steering_losses == 1
    assert status.queue.held_packets == 1
    f.stop()  # held packets are dropped, never released
    assert fake.dropped == ["late1", "late2", "held"] and fake.released == []
    assert fake.stopped


def test_a_failed_reinstall_is_said_and_retried_quietly() -> None:
    f, fake = make_filter()
    fake.missing = ["x"]
    fake.fail_reinstall = "the kernel says no"
    loss = f.check_steering()
    assert loss is not None and loss.reinstall_error == "the kernel says no"
    assert "may pass output unbuffered" in loss.action
    assert f.check_steering() is None and fake.reinstalls == 2  # retried, not re-reported


def test_steering_that_cannot_be_checked_counts_as_lost() -> None:
    f, fake = make_filter()

    def broken() -> list[str]:
        raise OSError("netlink is down")

    fake.check = broken  # type: ignore[method-assign]
    loss = f.check_steering()
    assert loss is not None
    assert loss.missing == ("colonet's steering of tap0 (cannot check it: netlink is down)",)


def test_only_steered_filters_are_checked() -> None:
    fs, (a, b), _ = make_set(2)
    fs.filters[1].failover(FailoverRole.PRIMARY)  # its steering is gone on purpose
    b.missing = ["everything"]
    assert fs.check_steering() == []
    # A discarding filter (failed over as secondary) still needs its steering.
    fs2, (c,), _ = make_set(1)
    fs2.failover("secondary")
    c.missing = ["x"]
    assert [loss.netdev for loss in fs2.check_steering()] == ["tap0"]
    assert fs2.filters[0].state is FilterState.STEERING_LOST


def test_a_lost_filter_is_still_read_and_a_dead_fd_is_not() -> None:
    fs, (a, b), _ = make_set(2)
    a.missing = ["x"]
    fs.check_steering()
    assert fs.fds() == {100: fs.filters[0], 101: fs.filters[1]}
    a.fd = -1  # a backend whose fd died
    assert fs.fds() == {101: fs.filters[1]}


def test_the_status_of_a_lost_filter_round_trips() -> None:
    fs, (a, _), _ = make_set(2)
    a.missing = ["x"]
    fs.check_steering()
    record = fs.status()
    body = json.loads(json.dumps(record.to_json()))
    assert body["netdevs"][0]["state"] == "steering-lost"
    assert body["netdevs"][0]["reason"] == "vanished: x"
    assert body["netdevs"][1]["reason"] is None
    assert FilterSetStatus.from_json(body) == record


def test_the_claims_go_once_every_filter_stopped() -> None:
    log: list[Call] = []
    pairs = [make_filter(f"tap{i}", log=log, fd=100 + i) for i in range(2)]
    pairs[0][1].fail_stop = True
    unsteered = lambda: log.append(("set", "unsteered", None))  # noqa: E731
    fs = FilterSet([f for f, _ in pairs], on_unsteered=unsteered)
    with pytest.raises(UsageError):
        fs.stop()
    assert [op for _, op, _ in log][-1] == "unsteered"
    assert [n for n, op, _ in log if op == "stop"] == ["fake-tap0", "fake-tap1"]
    fs.stop()
    assert [op for _, op, _ in log].count("unsteered") == 1


@pytest.mark.parametrize(("role", "freed"), [("primary", 1), ("secondary", 0)])
def test_the_claims_go_when_failover_removes_the_steering(role: str, freed: int) -> None:
    """Failed over as primary nothing steers the netdevs: another colonet
    may take them. As secondary the steering stays, dropping."""
    log: list[str] = []
    pairs = [make_filter(f"tap{i}", fd=100 + i) for i in range(2)]
    fs = FilterSet([f for f, _ in pairs], on_unsteered=lambda: log.append("unsteered"))
    fs.failover(role)
    assert log.count("unsteered") == freed
    fs.stop()
    assert log.count("unsteered") == 1
