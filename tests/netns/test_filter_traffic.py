"""Output commit through a real filter: what the client sees, and when."""

from __future__ import annotations

import socket

import pytest

from tests.netns.harness import (
    PORT,
    client_receiver,
    colonet_footprint,
    family_addrs,
    guest_sender,
    host_kernel_state,
    nothing_waiting,
    receive_numbers,
    send_numbered,
)

FAMILIES = pytest.mark.parametrize(
    "family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"]
)


@FAMILIES
def test_burst_held_until_commit_then_delivered_once_in_order(topology, start_filter, family):
    filt = start_filter(topology)
    _, client_ip = family_addrs(topology, family)
    rx = client_receiver(topology, family)
    tx = guest_sender(topology, family)

    send_numbered(tx, (client_ip, PORT), range(10_000), filt)

    assert nothing_waiting(rx), "a packet reached the client before its epoch committed"
    epoch = filt.call("checkpoint")["epoch"]
    assert epoch == 1
    assert nothing_waiting(rx, 0.1), "sealing must not release anything"
    result = filt.call("commit", epoch=epoch)
    assert result["released_packets"] >= 10_000
    assert receive_numbers(rx) == list(range(10_000))
    st = filt.netdev_status()
    assert st["held_packets"] - st["epochs"][-1]["held_packets"] == 0
    assert st["released_packets"] >= 10_000
    assert st["tail_dropped_packets"] == 0


def test_packets_sent_after_a_seal_wait_for_the_next_commit(topology, start_filter):
    filt = start_filter(topology)
    rx = client_receiver(topology, socket.AF_INET)
    tx = guest_sender(topology, socket.AF_INET)
    dest = (topology.client_ip4, PORT)

    send_numbered(tx, dest, range(0, 100), filt)
    first = filt.call("checkpoint")["epoch"]
    send_numbered(tx, dest, range(100, 200), filt)
    filt.call("commit", epoch=first)
    assert receive_numbers(rx) == list(range(100))

    second = filt.call("checkpoint")["epoch"]
    assert second == first + 1
    assert nothing_waiting(rx, 0.1)
    filt.call("commit")  # default: every sealed epoch
    assert receive_numbers(rx) == list(range(100, 200))


def test_commit_releases_epochs_in_order_up_to_the_one_named(topology, start_filter):
    filt = start_filter(topology)
    rx = client_receiver(topology, socket.AF_INET)
    tx = guest_sender(topology, socket.AF_INET)
    dest = (topology.client_ip4, PORT)
    for k in range(3):
        send_numbered(tx, dest, range(k * 50, k * 50 + 50), filt)
        filt.call("checkpoint")
    filt.call("commit", epoch=2)
    assert receive_numbers(rx) == list(range(100))
    filt.call("commit", epoch=3)
    assert receive_numbers(rx) == list(range(100, 150))
    # Committing an epoch again is harmless and releases nothing.
    assert filt.call("commit", epoch=3)["released_packets"] == 0


def _hold_sealed_and_open(topology, start_filter, sealed: int, total: int):
    """A filter holding `sealed` packets in epoch 1 and the rest in epoch 2."""
    filt = start_filter(topology)
    rx = client_receiver(topology, socket.AF_INET)
    tx = guest_sender(topology, socket.AF_INET)
    dest = (topology.client_ip4, PORT)
    send_numbered(tx, dest, range(sealed), filt)
    filt.call("checkpoint")
    send_numbered(tx, dest, range(sealed, total), filt)
    return filt, rx, tx, dest


def test_failover_secondary_never_delivers_what_was_held(topology, start_filter):
    filt, rx, tx, dest = _hold_sealed_and_open(topology, start_filter, 300, 400)

    result = filt.call("failover", role="secondary")
    assert result["discarded_packets"] >= 400
    # The old primary's guest must stay silent: later output is dropped too.
    send_numbered(tx, dest, range(400, 450))
    assert receive_numbers(rx, quiet_s=0.5) == []
    st = filt.netdev_status()
    assert st["state"] == "discarding"
    assert st["discarded_packets"] >= 400
    assert st["released_packets"] == 0


def test_failover_primary_delivers_what_was_held_then_stops_buffering(topology, start_filter):
    filt, rx, tx, dest = _hold_sealed_and_open(topology, start_filter, 200, 300)

    result = filt.call("failover", role="primary")
    assert result["released_packets"] >= 300
    assert receive_numbers(rx) == list(range(300))
    # Going on alone: no more buffering, packets flow at once.
    send_numbered(tx, dest, range(300, 310))
    assert receive_numbers(rx) == list(range(300, 310))
    assert filt.netdev_status()["state"] == "passthrough"
    assert colonet_footprint(host_kernel_state(topology)) == [], "steering must be gone"


def test_hard_limit_tail_drops_and_counts(topology, start_filter):
    filt = start_filter(topology, "--max-packets", "100")
    rx = client_receiver(topology, socket.AF_INET)
    tx = guest_sender(topology, socket.AF_INET)
    dest = (topology.client_ip4, PORT)
    send_numbered(tx, dest, range(150), filt, chunk=50)
    st = filt.netdev_status()
    assert st["held_packets"] == 100
    assert st["tail_dropped_packets"] >= 50
    assert filt.status()["high_water_requests"] >= 1
    # Never grows past the limit, however much more arrives.
    send_numbered(tx, dest, range(150, 200))
    assert filt.wait_held(200)["held_packets"] == 100
    filt.call("checkpoint")
    filt.call("commit")
    got = receive_numbers(rx)
    assert got == sorted(got) and len(got) == len(set(got))
    assert set(got) <= set(range(100))


def test_seal_drains_what_the_kernel_already_queued(veth_topology, start_filter):
    """Epoch barrier: packets the guest emitted before the checkpoint, still
    queued in the kernel and not yet read by colonet, land in the sealed
    epoch, not the next one (docs/DESIGN.md invariant 4)."""
    filt = start_filter(veth_topology)
    rx = client_receiver(veth_topology, socket.AF_INET)
    tx = guest_sender(veth_topology, socket.AF_INET)
    dest = (veth_topology.client_ip4, PORT)
    # No waiting: checkpoint right after the last sendto returns.
    send_numbered(tx, dest, range(2000))
    epoch = filt.call("checkpoint")["epoch"]
    st = filt.netdev_status()
    sealed = next(e for e in st["epochs"] if e["epoch"] == epoch)
    assert sealed["held_packets"] == 2000
    assert st["epochs"][-1]["held_packets"] == 0
    filt.call("commit", epoch=epoch)
    assert receive_numbers(rx) == list(range(2000))
