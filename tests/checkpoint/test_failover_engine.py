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
