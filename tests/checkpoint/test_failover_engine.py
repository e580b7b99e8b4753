"""Failover in the engines over loopback TCP, with the embedded guest. No root."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from colonet.buffer.hooks import CountingHooks
from colonet.checkpoint.failover import FailoverState
from colonet.checkpoint.primary import PrimaryEngine, TakenOver
from colonet.checkpoint.protocol import PrimaryProtocol, SecondaryProtocol
from colonet.checkpoint.ram_cache import RamCache
from colonet.checkpoint.secondary import NothingToTakeOver, SecondaryEngine
from colonet.checkpoint.transport import Channel, ChannelConfig, PeerLost
from colonet.errors import UsageError
from colonet.guest.counter_store import REPLY, REQUEST
from colonet.guest.embedded import EmbeddedGuest, EmbeddedGuestConfig
from tests.checkpoint.test_engine import link  # noqa: F401  (fixture)

FAST = ChannelConfig(heartbeat_interval_ms=20, heartbeat_timeout_ms=200)


def _guest(**kw) -> EmbeddedGuest:
    config = {"ram_pages": 256, "service_ip": "127.0.0.1", "service_port": 0}
    return EmbeddedGuest(EmbeddedGuestConfig(**(config | kw)))


def _serve(engine: SecondaryEngine) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(engine.serve()), daemon=True)
    thread.start()
    return thread, result


def _engines(socks, *, active: bool = True, **secondary_kw):  # type: ignore[no-untyped-def]
    """A serving secondary (thread, result list) and a primary with its guest."""
    secondary = SecondaryEngine(Channel(socks[1], SecondaryProtocol(), FAST), **secondary_kw)
    thread, result = _serve(secondary)
    guest = _guest()
    if active:
        guest.activate()
    primary = PrimaryEngine(guest, Channel(socks[0], PrimaryProtocol(), FAST), CountingHooks())
    return secondary, thread, result, guest, primary


def _increment(guest: EmbeddedGuest, times: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(2)
        value = 0
        for request_id in range(times):
            client.sendto(REQUEST.pack(b"INC ", request_id), guest.service_address)
            value = REPLY.unpack(client.recv(64))[1]
        return value


def _restore(cache: RamCache) -> EmbeddedGuest:
    guest = _guest(ram_pages=cache.ram_pages)
    view = cache.view()
    guest.restore(view, list(cache.sections.values()))
    view.release()
    return guest


def test_a_failover_asked_for_during_an_apply_waits_and_resumes_from_it(link):  # noqa: F811
    """docs/DESIGN.md invariant 5: never from a half-applied checkpoint."""
    applying, release_apply = threading.Event(), threading.Event()

    class SlowCache(RamCache):
        def apply(self, staged):  # type: ignore[no-untyped-def]
            if staged.epoch == 3:
                applying.set()
                assert release_apply.wait(10)
            super().apply(staged)

    secondary, thread, result, guest, primary = _engines(link, cache_factory=SlowCache)
    try:
        primary.connect()
        _increment(guest, 3)
        primary.checkpoint()  # 2
        _increment(guest, 4)
        worker = threading.Thread(target=primary.checkpoint)
        worker.start()  # 3: its apply blocks in SlowCache
        assert applying.wait(10)
        answer = secondary.request_failover("operator, during an apply")
        assert answer == {"accepted": True, "state": "required", "waiting_for_apply": True}
        assert secondary.failover.state is FailoverState.REQUIRED
        time.sleep(0.2)  # the serve loop must not start failover meanwhile
        assert secondary.failover.state is FailoverState.REQUIRED
        release_apply.set()
        thread.join(10)
        assert result[0].reason == "request" and result[0].last_applied == 3
        event = secondary.take_over(lambda cache: None)
        assert (event.mode, event.reason, event.last_committed) == ("secondary", "request", 3)
        assert secondary.failover.state is FailoverState.COMPLETED
        assert _restore(secondary.cache).counter == 7  # checkpoint 3, whole
        worker.join(10)
    finally:
        guest.shutdown()


def test_heartbeat_loss_requires_failover_with_reason_heartbeat(link):  # noqa: F811
    secondary, thread, result, guest, primary = _engines(link)
    try:
        primary.connect()
        value = _increment(guest, 5)
        primary.checkpoint()
        # The primary falls silent (it is not dead: its socket stays open).
        thread.join(5)
        assert result[0].reason == "heartbeat"
        restored: list[EmbeddedGuest] = []
        event = secondary.take_over(lambda cache: restored.append(_restore(cache)))
        assert (event.reason, event.last_committed) == ("heartbeat", 2)
        assert event.failover_ms is not None and event.failover_ms >= 0
        assert restored[0].counter == value
        # The stalled primary wakes up, reads the takeover notice and must
        # stand down rather than go on alone.
        with pytest.raises(TakenOver, match="secondary took the guest over"):
            primary.run(max_checkpoints=1)
    finally:
        guest.shutdown()


def test_the_primary_going_alone_tells_the_secondary_to_stand_down(link):  # noqa: F811
    secondary, thread, result, guest, primary = _engines(link, active=False)
    primary.connect()
    primary.request_failover()
    with pytest.raises(PeerLost, match="failover requested on the primary") as info:
        primary.run()
    assert info.value.reason == "request"
    thread.join(5)
    assert result[0].reason == "shutdown" and not result[0].needs_takeover
    assert secondary.failover.state is FailoverState.NONE
    guest.shutdown()


def test_no_takeover_before_the_first_checkpoint(link):  # noqa: F811
    secondary = SecondaryEngine(Channel(link[1], SecondaryProtocol(), FAST))
    secondary.request_failover()
    assert secondary.serve().reason == "request"
    with pytest.raises(NothingToTakeOver, match="before the first checkpoint was applied"):
        secondary.take_over(lambda cache: None)


def test_takeover_only_after_failover_was_required(link):  # noqa: F811
    secondary = SecondaryEngine(Channel(link[1], SecondaryProtocol(), FAST))
    with pytest.raises(Exception, match="cannot start from state none"):
        secondary.take_over(lambda cache: None)


def test_a_guest_that_cannot_be_built_sends_no_stand_down(link):  # noqa: F811
    """Issue 15 item 3: the stand-down goes out only once the guest is built:
    a primary told to stand down for a takeover that then fails would leave
    the guest running nowhere."""
    secondary, thread, result, guest, primary = _engines(link)
    try:
        primary.connect()
        primary.checkpoint()
        thread.join(5)  # the primary falls silent: heartbeat loss
        assert result[0].reason == "heartbeat"

        def cannot_build(cache: RamCache) -> None:
            raise UsageError("unknown netdev 'rtNOPE0'")

        started: list[bool] = []
        with pytest.raises(UsageError, match="rtNOPE0"):
            secondary.take_over(cannot_build, lambda: started.append(True))
        assert started == []
        # The primary wakes: no takeover notice waits for it, it checkpoints on
        # (and finds its secondary gone, as it is).
        with pytest.raises(PeerLost):
            primary.run(max_checkpoints=1)
    finally:
        guest.shutdown()


def test_the_guest_is_built_before_the_stand_down_and_started_after(link):  # noqa: F811
    secondary, thread, result, guest, primary = _engines(link)
    order: list[str] = []
    sent = secondary._tell_primary_to_stand_down
    secondary._tell_primary_to_stand_down = lambda detail: (order.append("notice"), sent(detail))
    try:
        primary.connect()
        primary.checkpoint()
        thread.join(5)
        secondary.take_over(lambda cache: order.append("prepare"), lambda: order.append("start"))
        assert order == ["prepare", "notice", "start"]
        with pytest.raises(TakenOver):
            primary.run(max_checkpoints=1)
    finally:
        guest.shutdown()


def test_a_secondary_that_was_stalled_does_not_take_over(link):  # noqa: F811
    """Issue 15 item 1: a secondary that slept through the primary's decision
    (here: its stall watch reports 8 s) must not take over when it then finds
    the primary silent or gone: the primary may have gone on alone."""
    secondary, thread, result, guest, primary = _engines(link)
    try:
        primary.connect()
        primary.checkpoint()
        secondary._on_stall(8.0)
        link[0].close()  # the primary is gone (or just silent) after it
        thread.join(5)
        assert result[0].stalled_ms == 8000.0
        assert result[0].reason in ("closed", "error", "heartbeat")
        assert not result[0].needs_takeover
        assert secondary.failover.state is FailoverState.NONE
        assert secondary.status()["stalled_ms"] == 8000.0
    finally:
        guest.shutdown()


def test_a_round_trip_after_the_stall_makes_the_secondary_trust_the_primary_again(link):  # noqa: F811
    secondary, thread, result, guest, primary = _engines(link)
    try:
        primary.connect()
        secondary._on_stall(8.0)
        primary.run(max_checkpoints=2)  # LOADED sent after the stall, then a new request
        assert secondary.status()["stalled_ms"] is None
        link[0].close()
        thread.join(5)
        assert result[0].stalled_ms is None and result[0].needs_takeover
    finally:
        guest.shutdown()


def test_an_operator_may_still_ask_a_stalled_secondary_to_take_over(link):  # noqa: F811
    secondary, thread, result, guest, primary = _engines(link)
    try:
        primary.connect()
        secondary._on_stall(8.0)
        secondary.request_failover()
        thread.join(5)
        assert result[0].reason == "request" and result[0].needs_takeover
    finally:
        guest.shutdown()


def test_the_primary_going_on_alone_leaves_a_notice_even_mid_checkpoint(link):  # noqa: F811
    secondary, thread, result, guest, primary = _engines(link)
    try:
        primary.connect()
        primary.proto.request_checkpoint(2)  # then the primary gives up on the reply
        assert primary.leave_stand_down_notice("the primary goes on alone") is True
        thread.join(5)
        assert result[0].reason == "shutdown" and not result[0].needs_takeover
    finally:
        guest.shutdown()


def test_no_notice_after_a_frame_was_cut(link):  # noqa: F811
    secondary, thread, result, guest, primary = _engines(link)
    try:
        primary.connect()
        primary.channel.intact = False  # a send failed half-way through a frame
        assert primary.leave_stand_down_notice("x") is False
    finally:
        guest.shutdown()
