"""Steering removed from outside colonet while a filter runs (docs/DESIGN.md
invariant 7): noticed within a bounded time, reported everywhere (status,
an event line, the log, the metrics), and never a silent fail-open: the
filter refuses every commit, releases nothing it holds, and puts the
steering back so the guest's later output still does not get through.

The removals are the ones seen in the field: a firewall reload
(`iptables-restore` of a rule set without colonet's rule) under nfqueue,
`tc qdisc del dev IF clsact` under the tap backend."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from colonet.control.protocol import RemoteError
from colonet.net.topology import Topology
from tests.netns.harness import (
    PORT,
    FilterProcess,
    client_receiver,
    guest_sender,
    host_kernel_state,
    in_ns,
    receive_numbers,
    scrape_metrics,
    send_numbered,
)

METRICS_PORT = 9468
DETECTION_LIMIT_S = 1.0
# A firewall's saved rule set that manages the mangle table without colonet.
FIREWALL_RULES = """*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"""


def remove_steering(topo: Topology, backend: str) -> None:
    """What an administrator or a firewall manager does, outside colonet."""
    if backend == "nfqueue":
        for tool in ("iptables-restore", "ip6tables-restore"):
            subprocess.run(in_ns(topo.host_ns, [tool]), input=FIREWALL_RULES, text=True, check=True)
    else:
        subprocess.run(
            in_ns(topo.host_ns, ["tc", "qdisc", "del", "dev", topo.netdev, "clsact"]), check=True
        )


def wait_state(filt: FilterProcess, state: str, limit_s: float) -> tuple[dict, float]:
    """(netdev status, seconds it took) once the netdev's state is `state`."""
    start = time.monotonic()
    while True:
        st = filt.netdev_status()
        waited = time.monotonic() - start
        if st["state"] == state or waited > limit_s:
            return st, waited
        time.sleep(0.005)


def test_steering_removed_from_outside_fails_closed_and_is_reported(topology, start_filter):
    before = host_kernel_state(topology)
    filt = start_filter(topology, "--metrics", f"127.0.0.1:{METRICS_PORT}")
    nd = topology.netdev
    rx = client_receiver(topology, socket.AF_INET)
    tx = guest_sender(topology, socket.AF_INET)
    dest = (topology.client_ip4, PORT)
    send_numbered(tx, dest, range(20), filt)
    epoch = filt.call("checkpoint")["epoch"]
    time.sleep(0.5)  # a few checks of intact steering pass unreported
    assert filt.netdev_status()["state"] == "buffering"

    remove_steering(topology, filt.backend)
    st, took = wait_state(filt, "steering-lost", DETECTION_LIMIT_S)
    assert st["state"] == "steering-lost", f"not noticed within {DETECTION_LIMIT_S} s"
    print(f"{filt.backend}/{topology.link}: steering loss noticed after {took * 1000:.0f} ms")
    if filt.backend == "nfqueue":
        assert "the iptables rule in mangle PREROUTING steering" in st["reason"]
    else:
        assert f"the clsact qdisc on {nd}" in st["reason"]
    assert st["steering_losses"] == 1
    assert st["held_packets"] >= 20

    # Fail closed: the sealed epoch is never released, commits are refused
    # naming the netdev and what vanished.
    with pytest.raises(RemoteError) as refused:
        filt.call("commit", epoch=epoch)
    assert refused.value.kind == "SteeringLostError" and refused.value.exit_code == 5
    assert f"steering of {nd} was removed from outside colonet" in str(refused.value)
    assert "vanished" in str(refused.value)
    done = filt.cli("commit")
    assert done.returncode == 5 and nd in done.stderr
    # Output the guest sends now goes nowhere: the steering was put back.
    send_numbered(tx, dest, range(100, 120))
    assert receive_numbers(rx, quiet_s=1.0) == []
    st = filt.netdev_status()
    assert st["released_packets"] == 0
    assert st["dropped_after_steering_lost_packets"] >= 20

    event = filt.wait_event("steering-lost")
    assert event is not None, "no steering-lost event line on the filter's stdout"
    assert event["netdev"] == nd and event["backend"] == filt.backend
    assert event["detail"] == st["reason"] and "re-installed" in event["action"]

    text = scrape_metrics(topology, METRICS_PORT)
    assert f'colonet_filter_steering_lost{{netdev="{nd}"}} 1.0' in text
    assert f'colonet_filter_steering_losses_total{{netdev="{nd}"}} 1.0' in text

    # Stopping drops what is held and leaves the host as it was.
    filt.terminate()
    assert filt.proc.returncode == 0
    assert receive_numbers(rx, quiet_s=0.3) == []
    assert host_kernel_state(topology) == before
    rx.close()
    tx.close()


def test_intact_steering_is_never_reported(topology, start_filter):
    """The check runs every ~200 ms against the real kernel: a filter left
    alone for a while stays buffering and still releases."""
    filt = start_filter(topology)
    rx = client_receiver(topology, socket.AF_INET)
    tx = guest_sender(topology, socket.AF_INET)
    time.sleep(1.0)
    send_numbered(tx, (topology.client_ip4, PORT), range(10), filt)
    filt.call("commit", epoch=filt.call("checkpoint")["epoch"])
    assert receive_numbers(rx) == list(range(10))
    st = filt.netdev_status()
    assert (st["state"], st["steering_losses"], st["reason"]) == ("buffering", 0, None)
    rx.close()
    tx.close()


@pytest.mark.parametrize(
    "removal",
    [
        ["tc", "filter", "del", "dev", "{netdev}", "ingress"],
        ["ip", "link", "del", "{release}"],
        ["ip", "link", "del", "{capture}"],
    ],
    ids=["bpf-filter", "release-link", "capture-tap"],
)
def test_tap_backend_notices_each_piece_vanishing(veth_topology, removal, request):
    """Every piece the tap backend installs is checked, not only the qdisc."""
    topo = veth_topology
    before = host_kernel_state(topo)
    filt = FilterProcess.start(topo, "--backend", "tap")
    request.addfinalizer(filt.kill)
    links = filt.netdev_status()
    names = {"netdev": topo.netdev, "release": links["release_link"]}
    names["capture"] = links["capture_link"]
    rx = client_receiver(topo, socket.AF_INET)
    tx = guest_sender(topo, socket.AF_INET)
    subprocess.run(in_ns(topo.host_ns, [a.format(**names) for a in removal]), check=True)
    st, _ = wait_state(filt, "steering-lost", DETECTION_LIMIT_S)
    assert st["state"] == "steering-lost"
    send_numbered(tx, (topo.client_ip4, PORT), range(10))
    assert receive_numbers(rx, quiet_s=1.0) == []
    with pytest.raises(RemoteError, match="steering-lost|removed from outside colonet"):
        filt.call("checkpoint")
    filt.terminate()
    assert filt.proc.returncode == 0
    assert host_kernel_state(topo) == before
    rx.close()
    tx.close()
