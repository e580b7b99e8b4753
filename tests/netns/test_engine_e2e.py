"""Primary and secondary in their own namespaces; the guest serves a client
through a buffered netdev while checkpoints commit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time

import pytest

from colonet.guest.counter_store import REPLY, REQUEST
from colonet.net.netns import socket_in_netns
from colonet.net.topology import Topology, run_prefix
from tests.netns.harness import colonet_argv, in_ns

REPLICATION_PORT = 7400


@pytest.fixture
def topo(request: pytest.FixtureRequest) -> Topology:
    topo = Topology(run_prefix(), link="veth", with_secondary=True)
    request.addfinalizer(topo.destroy)
    return topo.build()


def _spawn(ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        in_ns(ns, colonet_argv(*args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_guest_served_buffered_and_ram_identical_at_each_commit(topo, backend, request):
    secondary = _spawn(
        topo.secondary_ns,
        "secondary",
        "--listen",
        f"{topo.secondary_ip4}:{REPLICATION_PORT}",
        "--ram-digests",
        "--json",
    )
    request.addfinalizer(secondary.kill)
    assert json.loads(secondary.stdout.readline())["event"] == "listening"
    tmp = tempfile.mkdtemp(prefix="cn")
    ctl = os.path.join(tmp, "engine.sock")
    primary = _spawn(
        topo.host_ns,
        "primary",
        "--peer",
        f"{topo.secondary_ip4}:{REPLICATION_PORT}",
        "--netdev",
        topo.netdev,
        "--backend",
        backend,
        "--guest-netns",
        topo.guest_ns,
        "--guest-ip",
        topo.guest_ip4,
        "--checkpoint-delay-ms",
        "50",
        "--socket",
        ctl,
        "--ram-digests",
        "--json",
    )
    request.addfinalizer(primary.kill)
    client = socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    values = []
    deadline = time.monotonic() + 20
    while not os.path.exists(ctl) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(ctl), primary.stderr.read() if primary.poll() is not None else "no socket"
    for request_id in range(1, 21):
        client.sendto(REQUEST.pack(b"INC ", request_id), (topo.guest_ip4, 7070))
        rid, value = REPLY.unpack(client.recv(64))
        assert rid == request_id
        values.append(value)
    assert values == list(range(1, 21))
    done = subprocess.run(
        colonet_argv("checkpoint", "--socket", ctl), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    status = subprocess.run(
        colonet_argv("status", "--socket", ctl, "--json"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    result = json.loads(status.stdout)["result"]
    assert result["checkpoints"] >= 2
    filters = result["filters"]["netdevs"][0]
    assert filters["backend"] == backend and filters["released_packets"] >= 20
    primary.terminate()
    out, err = primary.communicate(timeout=30)
    checkpoints = [e for e in _events(out) if e["event"] == "checkpoint"]
    assert checkpoints and checkpoints[0]["full"] and checkpoints[0]["epoch"] == 1
    sec_out, _ = secondary.communicate(timeout=30)
    sec_events = _events(sec_out)
    applied = [e for e in sec_events if e["event"] == "applied"]
    assert [e["epoch"] for e in applied] == [c["epoch"] for c in checkpoints]
    # The secondary's RAM is byte-identical to the primary's at every commit
    # (and the guest really changed between checkpoints: digests differ).
    assert [e["ram_sha256"] for e in applied] == [c["ram_sha256"] for c in checkpoints]
    assert len({c["ram_sha256"] for c in checkpoints}) > len(checkpoints) // 2
    assert sec_events[-1]["reason"] == "shutdown"
    client.close()
    os.rmdir(tmp)
