"""The embedded guest without root: RAM dirty tracking, service, pause."""

from __future__ import annotations

import socket
import threading

import pytest

from colonet.guest.counter_store import REPLY, REQUEST, CounterStore
from colonet.guest.embedded import EmbeddedGuest, EmbeddedGuestConfig
from colonet.guest.ram import GuestRam


def test_writes_mark_exactly_the_pages_they_touch():
    ram = GuestRam(8)
    ram.collect_dirty()  # everything starts dirty: nothing synced yet
    ram.write(4095, b"ab")  # straddles pages 0 and 1
    ram.write(5 * 4096, b"x")
    assert ram.collect_dirty() == [0, 1, 5]
    assert ram.collect_dirty() == []
    assert ram.read(4095, 2) == b"ab"


def test_out_of_bounds_access_is_refused():
    ram = GuestRam(2)
    with pytest.raises(ValueError, match="outside guest RAM of 8192 bytes"):
        ram.write(8190, b"abc")
    with pytest.raises(ValueError, match="outside guest RAM"):
        ram.read(-1, 1)


def test_no_write_is_lost_between_collections():
    ram = GuestRam(256)
    ram.collect_dirty()
    written: list[int] = []
    collected: set[int] = set()
    done = threading.Event()

    def writer() -> None:
        for i in range(20_000):
            page = (i * 7) % 256
            ram.write(page * 4096, b"z")
            written.append(page)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        collected.update(ram.collect_dirty())
    thread.join()
    collected.update(ram.collect_dirty())
    assert collected == set(written)


def test_counter_lives_in_guest_ram():
    ram = GuestRam(64)
    store = CounterStore(ram)
    assert REPLY.unpack(store.handle(REQUEST.pack(b"INC ", 7))) == (7, 1)
    assert REPLY.unpack(store.handle(REQUEST.pack(b"INC ", 8))) == (8, 2)
    assert REPLY.unpack(store.handle(REQUEST.pack(b"GET ", 9))) == (9, 2)
    assert store.handle(b"junk") is None
    # A copy of RAM carries the counter: that is what a checkpoint moves.
    copy = GuestRam(64)
    copy.load(ram.view())
    assert CounterStore(copy).value == 2


def test_paused_guest_answers_nothing_until_resumed():
    guest = EmbeddedGuest(EmbeddedGuestConfig(ram_pages=64, service_ip="127.0.0.1", service_port=0))
    guest.activate()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        client.sendto(REQUEST.pack(b"INC ", 1), guest.service_address)
        assert REPLY.unpack(client.recv(64)) == (1, 1)
        guest.pause()
        client.settimeout(0.3)
        client.sendto(REQUEST.pack(b"INC ", 2), guest.service_address)
        with pytest.raises(TimeoutError):
            client.recv(64)
        dirty_while_paused = guest.collect_dirty()
        assert guest.collect_dirty() == []  # nothing runs while paused
        assert dirty_while_paused  # the first request and the workload wrote
        guest.resume()
        client.settimeout(2)
        assert REPLY.unpack(client.recv(64)) == (2, 2)
        assert [s.name for s in guest.save_devices()] == ["service"]
    finally:
        client.close()
        guest.shutdown()


def test_a_guest_shut_down_while_paused_never_answers_again():
    """A fenced primary pauses its guest, then shuts it down: a request
    already waiting must not be answered on the way out."""
    guest = EmbeddedGuest(EmbeddedGuestConfig(ram_pages=64, service_ip="127.0.0.1", service_port=0))
    guest.activate()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        guest.pause()
        client.sendto(REQUEST.pack(b"INC ", 1), guest.service_address)
        threading.Event().wait(0.2)  # the service thread has it, waiting to run
        guest.shutdown()
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(64)
    finally:
        client.close()


def test_device_state_round_trip():
    a = EmbeddedGuest(EmbeddedGuestConfig(ram_pages=64))
    a.served = 41
    b = EmbeddedGuest(EmbeddedGuestConfig(ram_pages=64))
    b.load_devices(a.save_devices())
    assert b.served == 41
    a.shutdown()
    b.shutdown()
