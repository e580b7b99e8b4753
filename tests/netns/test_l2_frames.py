"""The tap backend holds every frame, not only IP: ARP, neighbour discovery,
VLAN-tagged, non-IP and jumbo frames wait for their commit and leave intact,
byte for byte. (The nfqueue backend lets these through: the hole this
backend closes.)"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from colonet.net.netns import socket_in_netns
from colonet.net.topology import Topology, run_prefix
from tests.netns.harness import FilterProcess

SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
ETH_P_ALL = 0x0003


@pytest.fixture
def bridged(request: pytest.FixtureRequest) -> Topology:
    """A VM-like guest on a bridge, with no pinned neighbours: the guest
    must answer ARP and neighbour solicitations itself."""
    mtu = getattr(request, "param", 1500)
    topo = Topology(run_prefix(), link="tap", static_neighbours=False, mtu=mtu)
    request.addfinalizer(topo.destroy)
    return topo.build()


@pytest.fixture
def tap_filter(request: pytest.FixtureRequest, bridged: Topology) -> FilterProcess:
    filt = FilterProcess.start(bridged, "--backend", "tap")
    request.addfinalizer(filt.kill)
    assert filt.backend == "tap"
    return filt


def _mac(topo: Topology, ns: str) -> str:
    sock = socket_in_netns(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind(("eth0", 0))
    mac = sock.getsockname()[4].hex(":")
    sock.close()
    return mac


class Wire:
    """Every frame arriving at (or leaving) eth0 of a namespace, as sent."""

    def __init__(self, ns: str) -> None:
        self.sock = socket_in_netns(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("eth0", 0))
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.setblocking(False)

    def frames(self, wait_s: float = 0.3, direction: str = "in") -> list[bytes]:
        deadline = time.monotonic() + wait_s
        out: list[bytes] = []
        while time.monotonic() < deadline:
            try:
                data, anc, _, addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(20))
            except BlockingIOError:
                time.sleep(0.01)
                continue
            outgoing = addr[2] == socket.PACKET_OUTGOING
            if outgoing != (direction == "out"):
                continue
            for level, kind, aux in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", aux[:20])
                    if status & TP_STATUS_VLAN_VALID:
                        # The kernel moved the tag out of the frame; put it back.
                        data = data[:12] + struct.pack("!HH", tpid or 0x8100, tci) + data[12:]
            out.append(data)
        return out

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def close(self) -> None:
        self.sock.close()


def _held_then_released(topo, filt, match, emit) -> bytes:
    """Emit, check nothing matching reaches the client, commit, and return
    the one matching frame the client then gets."""
    client, guest = Wire(topo.client_ns), Wire(topo.guest_ns)
    try:
        emit()
        filt.wait_held(1)
        assert not [f for f in client.frames(0.4) if match(f)], "frame left before commit"
        filt.call("checkpoint")
        filt.call("commit")
        arrived = [f for f in client.frames(1.0) if match(f)]
    finally:
        client.close()
        guest.close()
    assert len(arrived) == 1, f"expected one matching frame after commit, got {len(arrived)}"
    return arrived[0]


def test_arp_reply_is_held_until_commit(bridged, tap_filter):
    client_mac = _mac(bridged, bridged.client_ns)
    request_frame = bytes(
        Ether(src=client_mac, dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=client_mac, psrc=bridged.client_ip4, pdst=bridged.guest_ip4)
    )
    sender = Wire(bridged.client_ns)

    def is_reply(frame: bytes) -> bool:
        p = Ether(frame)
        return ARP in p and p[ARP].op == 2 and p[ARP].psrc == bridged.guest_ip4

    try:
        reply = _held_then_released(
            bridged, tap_filter, is_reply, lambda: sender.send(request_frame)
        )
    finally:
        sender.close()
    assert Ether(reply)[ARP].pdst == bridged.client_ip4


def test_neighbour_advertisement_is_held_until_commit(bridged, tap_filter):
    client_mac = _mac(bridged, bridged.client_ns)
    target = bridged.guest_ip6
    # Solicited-node multicast address and MAC of the target.
    low = socket.inet_pton(socket.AF_INET6, target)[-3:]
    snm = socket.inet_ntop(socket.AF_INET6, bytes.fromhex("ff0200000000000000000001ff") + low)
    ns_frame = bytes(
        Ether(src=client_mac, dst="33:33:ff:" + low.hex(":"))
        / IPv6(src=bridged.client_ip6, dst=snm, hlim=255)
        / ICMPv6ND_NS(tgt=target)
        / ICMPv6NDOptSrcLLAddr(lladdr=client_mac)
    )
    sender = Wire(bridged.client_ns)

    def is_advert(frame: bytes) -> bool:
        p = Ether(frame)
        return IPv6 in p and p[IPv6].nh == 58 and bytes(p[IPv6].payload)[:1] == b"\x88"

    try:
        advert = _held_then_released(bridged, tap_filter, is_advert, lambda: sender.send(ns_frame))
    finally:
        sender.close()
    assert Ether(advert)[IPv6].src == target


def _guest_frame_roundtrip(topo, filt, frame: bytes) -> None:
    sender = Wire(topo.guest_ns)
    try:
        got = _held_then_released(topo, filt, lambda f: f == frame, lambda: sender.send(frame))
    finally:
        sender.close()
    assert got == frame


def test_vlan_tagged_frame_is_held_and_released_intact(bridged, tap_filter):
    guest_mac, client_mac = _mac(bridged, bridged.guest_ns), _mac(bridged, bridged.client_ns)
    frame = bytes(
        Ether(src=guest_mac, dst=client_mac)
        / Dot1Q(vlan=100, prio=3)
        / IP(src="10.100.0.2", dst="10.100.0.3")
        / UDP(sport=4000, dport=4001)
        / b"colonet-vlan-frame"
    )
    _guest_frame_roundtrip(bridged, tap_filter, frame)


def test_non_ip_frame_is_held_and_released_intact(bridged, tap_filter):
    guest_mac, client_mac = _mac(bridged, bridged.guest_ns), _mac(bridged, bridged.client_ns)
    # 0x88b5: IEEE local experimental ethertype, which no stack consumes.
    frame = bytes(Ether(src=guest_mac, dst=client_mac, type=0x88B5) / (b"colonet-l2-" * 10))
    _guest_frame_roundtrip(bridged, tap_filter, frame)


@pytest.mark.parametrize("bridged", [9000], indirect=True, ids=["mtu9000"])
def test_jumbo_frame_is_held_and_released_intact(bridged, tap_filter):
    guest_mac, client_mac = _mac(bridged, bridged.guest_ns), _mac(bridged, bridged.client_ns)
    payload = bytes(range(256)) * 36
    frame = bytes(
        Ether(src=guest_mac, dst=client_mac)
        / IP(src=bridged.guest_ip4, dst=bridged.client_ip4)
        / UDP(sport=4000, dport=4001)
        / payload[: 9000 - 28]
    )
    assert len(frame) == 9014
    _guest_frame_roundtrip(bridged, tap_filter, frame)


def test_nfqueue_backend_lets_arp_escape(bridged, request):
    """The hole the tap backend closes: NFQUEUE never sees ARP."""
    filt = FilterProcess.start(bridged, "--backend", "nfqueue")
    request.addfinalizer(filt.kill)
    client_mac = _mac(bridged, bridged.client_ns)
    wire = Wire(bridged.client_ns)
    try:
        wire.send(
            bytes(
                Ether(src=client_mac, dst="ff:ff:ff:ff:ff:ff")
                / ARP(op=1, hwsrc=client_mac, psrc=bridged.client_ip4, pdst=bridged.guest_ip4)
            )
        )
        replies = [f for f in wire.frames(0.5) if ARP in Ether(f) and Ether(f)[ARP].op == 2]
    finally:
        wire.close()
    assert replies, "expected the ARP reply to pass an nfqueue filter unbuffered"


def test_auto_backend_holds_every_frame_and_says_so(bridged, request):
    filt = FilterProcess.start(bridged)  # no --backend: auto
    request.addfinalizer(filt.kill)
    assert filt.ready["backends"] == {bridged.netdev: "tap"}
    assert filt.netdev_status()["backend"] == "tap"
