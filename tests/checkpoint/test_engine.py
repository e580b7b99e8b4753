"""Primary and secondary engines over loopback TCP, with the embedded guest.

No root needed: the guest's service and the replication link use loopback.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from colonet.buffer.hooks import CommitResult, CountingHooks, EpochMismatchError
from colonet.checkpoint.primary import EngineConfig, PrimaryEngine
from colonet.checkpoint.protocol import PrimaryProtocol, SecondaryProtocol
from colonet.checkpoint.secondary import SecondaryEngine
from colonet.checkpoint.transport import Channel, ChannelConfig, PeerLost
from colonet.guest.counter_store import REPLY, REQUEST, CounterStore
from colonet.guest.embedded import EmbeddedGuest, EmbeddedGuestConfig
from colonet.guest.ram import GuestRam


class RecordingHooks(CountingHooks):
    """Counts epochs and records the order of hook calls against the guest."""

    def __init__(self, guest: EmbeddedGuest) -> None:
        super().__init__()
        self.guest = guest
        self.calls: list[tuple[str, int, bool]] = []

    def begin_checkpoint(self, epoch: int | None = None) -> int:
        epoch = super().begin_checkpoint(epoch)
        self.calls.append(("begin", epoch, self.guest._paused))
        return epoch

    def commit(self, upto: int | None = None) -> CommitResult:
        self.calls.append(("commit", upto or 0, self.guest._paused))
        return super().commit(upto)


@pytest.fixture
def link():
    """A connected (primary, secondary) pair of TCP sockets on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    primary = socket.create_connection(listener.getsockname())
    secondary, _ = listener.accept()
    listener.close()
    yield primary, secondary
    primary.close()
    secondary.close()


def _secondary(
    sock, applied: dict[int, bytes], config: ChannelConfig | None = None
) -> tuple[SecondaryEngine, threading.Thread, list]:
    engine = SecondaryEngine(
        Channel(sock, SecondaryProtocol(), config),
        on_applied=lambda epoch, cache: applied.__setitem__(epoch, cache.digest()),
    )
    result: list = []
    thread = threading.Thread(target=lambda: result.append(engine.serve()), daemon=True)
    thread.start()
    return engine, thread, result


def test_secondary_ram_equals_primary_ram_at_every_checkpoint(link):
    guest = EmbeddedGuest(
        EmbeddedGuestConfig(
            ram_pages=1024, service_ip="127.0.0.1", service_port=0, workload_pages_per_s=2000
        )
    )
    guest.activate()
    applied: dict[int, bytes] = {}
    secondary, thread, result = _secondary(link[1], applied)
    hooks = RecordingHooks(guest)
    engine = PrimaryEngine(
        guest,
        Channel(link[0], PrimaryProtocol()),
        hooks,
        EngineConfig(checkpoint_delay_ms=20, record_ram_digest=True),
    )
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        engine.connect()
        for request_id in range(1, 6):
            client.sendto(REQUEST.pack(b"INC ", request_id), guest.service_address)
            assert REPLY.unpack(client.recv(64)) == (request_id, request_id)
            engine.run(max_checkpoints=2)
        engine.shutdown()
        thread.join(timeout=10)
    finally:
        client.close()
        guest.shutdown()
    primary_digests = {s.epoch: s.ram_digest for s in engine.history}
    assert len(primary_digests) == 11  # the full sync + 5 x 2
    assert applied == primary_digests
    assert engine.history[0].full and engine.history[0].dirty_pages == 1024
    assert all(s.dirty_pages < 1024 for s in engine.history[1:])
    assert result[0].reason == "shutdown" and result[0].last_applied == 11
    # The counter the client saw is in the secondary's copy of RAM.
    copy = GuestRam(1024)
    copy.load(secondary.cache.view())
    assert CounterStore(copy).value == 5
    # Filters were sealed while the guest was paused, released after.
    for name, epoch, paused in hooks.calls:
        assert paused == (name == "begin"), (name, epoch)
    assert [c[:2] for c in hooks.calls[:2]] == [("begin", 1), ("commit", 1)]


def test_secondary_stays_on_last_checkpoint_when_the_primary_dies_mid_transfer(link):
    guest = EmbeddedGuest(EmbeddedGuestConfig(ram_pages=256, workload_pages_per_s=0))
    applied: dict[int, bytes] = {}
    secondary, thread, result = _secondary(link[1], applied)
    engine = PrimaryEngine(guest, Channel(link[0], PrimaryProtocol()), CountingHooks())
    engine.connect()
    guest.ram.write(0, b"x" * 8192)
    # Checkpoint 2 starts, but the primary dies after half of its body.
    engine.proto.request_checkpoint(2)
    engine.channel.flush()
    while engine.channel.next_event(1.0) is None:
        pass
    from colonet.checkpoint.pages import encode_checkpoint

    body = encode_checkpoint(2, guest.ram_view(), guest.collect_dirty(), [])
    engine.proto.send_checkpoint(2, body, 1024)
    wire = engine.proto.data_to_send()
    link[0].sendall(wire[: len(wire) // 2])
    link[0].close()
    thread.join(timeout=10)
    assert result[0].reason in ("closed", "error")
    assert result[0].last_applied == 1
    assert list(applied) == [1]
    guest.shutdown()


def test_dead_peer_is_detected_by_heartbeat(link):
    channel = Channel(
        link[0],
        PrimaryProtocol(),
        ChannelConfig(heartbeat_interval_ms=20, heartbeat_timeout_ms=200),
    )
    channel.proto.send_hello(4096, 64, "p")
    channel.flush()
    started = time.monotonic()
    with pytest.raises(PeerLost, match="no frame from the peer") as info:
        channel.next_event(5.0)
    assert info.value.reason == "heartbeat"
    assert time.monotonic() - started < 2.0


def _mid_checkpoint(link) -> tuple[Channel, Channel]:  # type: ignore[no-untyped-def]
    """Both ends after HELLO, the primary's request answered: the secondary
    now waits for a body the primary is "encoding"."""
    config = ChannelConfig(
        heartbeat_interval_ms=20, heartbeat_timeout_ms=100, checkpoint_timeout_ms=5000
    )
    primary = Channel(link[0], PrimaryProtocol(), config)
    secondary = Channel(link[1], SecondaryProtocol(), config)
    primary.proto.send_hello(4096, 32, "p")
    primary.flush()
    secondary.next_event(2.0)
    secondary.proto.send_hello(4096, 32, "s")
    secondary.flush()
    primary.next_event(2.0)
    primary.proto.request_checkpoint(1)
    primary.flush()
    secondary.next_event(2.0)
    secondary.proto.send_reply(1)
    secondary.flush()
    return primary, secondary


def test_a_busy_peer_mid_checkpoint_is_not_declared_dead(link):
    """A peer that computes for three heartbeat timeouts keeps sending
    heartbeats (Channel.busy): no PeerLost."""
    primary, secondary = _mid_checkpoint(link)
    done = threading.Event()

    def encode() -> None:
        with primary.busy():
            time.sleep(0.3)
        done.set()

    threading.Thread(target=encode, daemon=True).start()
    while not done.is_set():
        assert secondary.next_event(0.05) is None or True


def test_a_silent_peer_mid_checkpoint_is_lost_within_the_heartbeat_timeout(link):
    """Issue 15 item 7: silence is judged against the heartbeat timeout at
    every stage, not a long checkpoint deadline."""
    _, secondary = _mid_checkpoint(link)
    started = time.monotonic()
    with pytest.raises(PeerLost, match="no frame from the peer") as info:
        secondary.next_event(5.0)
    assert info.value.reason == "heartbeat"
    assert time.monotonic() - started < 0.5  # 100 ms timeout, not 5 s


def test_large_body_is_sent_despite_short_receive_timeouts(link):
    """A send is not bounded by the short timeouts used for receiving."""
    guest = EmbeddedGuest(EmbeddedGuestConfig(ram_pages=16384, workload_pages_per_s=0))
    guest.ram.write(0, bytes(range(256)) * 16384 * 16)  # 64 MiB of non-zero pages
    applied: dict[int, bytes] = {}
    quick = ChannelConfig(heartbeat_interval_ms=50, heartbeat_timeout_ms=1000)
    _, thread, result = _secondary(link[1], applied, quick)
    engine = PrimaryEngine(
        guest,
        Channel(link[0], PrimaryProtocol(), quick),
        CountingHooks(),
        EngineConfig(record_ram_digest=True),
    )
    engine.connect()
    engine.shutdown()
    thread.join(timeout=30)
    assert applied == {1: engine.history[0].ram_digest}
    guest.shutdown()


class MiscountingHooks(RecordingHooks):
    """Filters that got one epoch ahead of the engine (e.g. a stray
    `colonet filter checkpoint` from an operator)."""

    def begin_checkpoint(self, epoch: int | None = None) -> int:
        if epoch == 3:
            self.sealed += 1  # the stray seal
        return super().begin_checkpoint(epoch)


def test_an_epoch_mismatch_stops_the_engine_before_anything_is_released(link):
    guest = EmbeddedGuest(EmbeddedGuestConfig(ram_pages=256, service_ip="127.0.0.1"))
    guest.activate()
    applied: dict[int, bytes] = {}
    _, thread, _ = _secondary(link[1], applied)
    hooks = MiscountingHooks(guest)
    engine = PrimaryEngine(
        guest, Channel(link[0], PrimaryProtocol()), hooks, EngineConfig(checkpoint_delay_ms=10)
    )
    try:
        engine.connect()
        engine.run(max_checkpoints=1)  # checkpoint 2: filters agree
        with pytest.raises(EpochMismatchError, match="asked to seal epoch 3.*open epoch is 4"):
            engine.run(max_checkpoints=1)
    finally:
        guest.shutdown()
        link[0].close()
        thread.join(timeout=10)
    commits = [epoch for name, epoch, _ in hooks.calls if name == "commit"]
    assert commits == [1, 2]  # nothing of epoch 3 (or the stray 3) was released
    assert not guest._paused  # the guest was not left paused
