"""Announcements leave the guest's NIC and reach the wire as built."""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA
from scapy.layers.l2 import ARP, Ether

from colonet.net.announce import ETH_P_ALL, announce
from colonet.net.netns import socket_in_netns


def test_guest_announces_its_ipv4_and_ipv6_addresses(veth_topology):
    topo = veth_topology
    sniffer = socket_in_netns(
        topo.host_ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)
    )
    sniffer.bind((topo.netdev, 0))
    sniffer.settimeout(0.2)
    try:
        sent = announce(topo.guest_ns, "eth0", repeat=True)
        seen: list[bytes] = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                seen.append(sniffer.recv(2048))
            except TimeoutError:
                continue
    finally:
        sniffer.close()
    arps = [Ether(f) for f in seen if Ether(f).haslayer(ARP)]
    nas = [Ether(f) for f in seen if Ether(f).haslayer(ICMPv6ND_NA)]
    assert len(sent) == 2
    # The first round and both repeats made it.
    assert sum(a[ARP].psrc == topo.guest_ip4 == a[ARP].pdst for a in arps) == 3
    assert sum(n[ICMPv6ND_NA].tgt == topo.guest_ip6 and n[ICMPv6ND_NA].O == 1 for n in nas) == 3
    guest_mac = arps[0].src
    assert all(f.src == guest_mac for f in arps + nas)


def test_announcing_an_unknown_nic_names_it(veth_topology):
    with pytest.raises(ValueError, match="no interface 'nope0'"):
        announce(veth_topology.guest_ns, "nope0")
