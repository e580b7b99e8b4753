"""Fault injection in namespaces: a partitioned replication link, a slow
secondary, a secondary killed mid-apply. (A filter daemon killed with SIGKILL
stays fail-closed until `colonet cleanup`: tests/netns/test_filter_lifecycle.py.)"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

import pytest

from colonet.guest.counter_store import REQUEST
from colonet.net.netns import socket_in_netns
from tests.netns.failover_pair import FailoverPair


def _ns(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True)


@pytest.fixture
def make_pair(request):
    def make(**kw) -> FailoverPair:
        pair = FailoverPair(**kw)
        request.addfinalizer(pair.close)
        return pair.start()

    return make


def test_a_partitioned_replication_link_fails_over_by_heartbeat(make_pair):
    pair = make_pair()
    time.sleep(0.3)
    # Drop everything on the replication link, both ways, inside the test's
    # own namespace (it goes with the namespace).
    _ns(pair.topo.host_ns, "iptables", "-I", "INPUT", "-i", "rep0", "-j", "DROP")
    _ns(pair.topo.host_ns, "iptables", "-I", "OUTPUT", "-o", "rep0", "-j", "DROP")
    secondary = pair.secondary.wait_for("failover", 10)
    primary = pair.primary.wait_for("failover", 10)
    assert secondary is not None and secondary["reason"] == "heartbeat"
    assert secondary["mode"] == "secondary" and secondary["state"] == "completed"
    # Cut off, the primary cannot tell a dead secondary from a partition: it
    # goes on alone (fencing one side is the operator's tool; SECURITY.md).
    assert primary is not None and (primary["mode"], primary["reason"]) == ("primary", "heartbeat")
    assert isinstance(primary["released_packets"], int)


def test_a_slow_secondary_slows_checkpoints_and_the_filter_stays_bounded(make_pair):
    limit = 300
    pair = make_pair(
        heartbeat_timeout_ms=1500,
        primary_args=("--max-packets", str(limit), "--high-water", "0.5"),
    )
    before = pair.primary.of("checkpoint")
    fast = max(c["transfer_ms"] for c in before)
    _ns(
        pair.topo.host_ns,
        *[
            "tc",
            "qdisc",
            "add",
            "dev",
            "rep0",
            "root",
            "tbf",
            "rate",
            "1mbit",
            "burst",
            "16kb",
            # A queue of at most 300 ms: longer, and ACKs of the other direction
            # wait behind the body for longer than the heartbeat timeout, so the
            # secondary's heartbeats stall in its TCP window: a peer that is
            # silent for that long on the wire is rightly taken for lost.
            "latency",
            "300ms",
        ],
    )
    flood = socket_in_netns(pair.topo.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()

    def send_flood() -> None:
        rid = 10**6
        while not stop.is_set():
            rid += 1
            flood.sendto(REQUEST.pack(b"GET ", rid), (pair.topo.guest_ip4, 7070))
            time.sleep(0.0005)

    flooder = threading.Thread(target=send_flood, daemon=True)
    flooder.start()
    held: list[int] = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            filters = pair.ask("primary", "status")["filters"]["netdevs"][0]
            held.append(filters["held_packets"])
            time.sleep(0.1)
        status = pair.ask("primary", "status")
    finally:
        stop.set()
        flooder.join(2)
        flood.close()
    netdev = status["filters"]["netdevs"][0]
    slow = [c["transfer_ms"] for c in pair.primary.of("checkpoint")[len(before) + 1 :]]
    assert slow and min(slow) > 5 * max(fast, 1.0), (fast, slow)  # checkpoints slowed down
    assert max(held) <= limit  # memory stays bounded
    assert netdev["tail_dropped_packets"] > 0  # and what did not fit is counted
    assert status["filters"]["high_water_requests"] > 0
    assert status["early_checkpoints"] > 0  # the engine checkpointed early
    assert pair.primary.popen.poll() is None and not pair.secondary.of("failover")


def test_secondary_killed_mid_apply_leaves_the_primary_alone(make_pair, monkeypatch):
    monkeypatch.setenv("COLONET_FAULT_APPLY_DELAY_MS", "400")
    pair = make_pair(heartbeat_timeout_ms=2000)
    applying = None
    deadline = time.monotonic() + 20
    while applying is None and time.monotonic() < deadline:
        event = pair.secondary.news.get(timeout=20)
        if event and event.get("event") == "applying" and event["epoch"] >= 3:
            applying = event["epoch"]
    assert applying is not None
    pair.secondary.popen.send_signal(signal.SIGKILL)  # inside its 400 ms apply
    event = pair.primary.wait_for("failover", 10)
    assert event is not None
    assert (event["mode"], event["reason"]) == ("primary", "error")
    # The secondary had acknowledged (RECEIVED) the checkpoint it was applying:
    # that epoch was released; the primary runs on alone.
    assert event["last_committed"] in (applying - 1, applying)
    assert pair.primary.popen.poll() is None
    assert len(pair.wait_replies_after(time.monotonic(), count=20)) >= 20


@pytest.mark.parametrize("who", ["primary", "secondary"])
def test_on_a_slow_link_a_silent_peer_is_noticed_within_the_heartbeat_timeout(make_pair, who):
    """Issue 15 item 7: at 2 Mbit/s a checkpoint is nearly always in transfer;
    a peer stopped then is noticed once its bytes stop (the heartbeat
    timeout after the link's queue drained), not after a 30 s deadline."""
    hb_ms = 500
    pair = make_pair(heartbeat_timeout_ms=hb_ms)
    _ns(
        pair.topo.host_ns,
        *("tc", "qdisc", "add", "dev", "rep0", "root", "tbf"),
        *("rate", "2mbit", "burst", "16kb", "latency", "100ms"),
    )
    time.sleep(1.0)  # checkpoints are slow now
    stalled = pair.primary if who == "primary" else pair.secondary
    other = pair.secondary if who == "primary" else pair.primary
    stopped = time.time()
    stalled.popen.send_signal(signal.SIGSTOP)
    try:
        event = other.wait_for("failover", 10)
    finally:
        stalled.popen.send_signal(signal.SIGCONT)
    assert event is not None
    # 100 ms of queue + the heartbeat timeout + scheduling: well under 2 s.
    assert event["t"] - stopped < 2.0, event
    assert "no frame from the peer" in event["detail"] or "accepted nothing" in event["detail"]
