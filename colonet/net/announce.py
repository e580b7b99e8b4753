"""Tell the network where a guest now lives: gratuitous ARP, unsolicited NA.

After a takeover the guest answers from another host with the same MAC and
addresses. Switches (bridges) learn the new port from any frame the guest
sends, and neighbours refresh their caches from a gratuitous ARP (IPv4) or
an unsolicited neighbour advertisement with the override flag (IPv6). The
frames are sent from the guest's own NIC, as a hypervisor's announce does,
so they take the path the guest's replies will take.

The frame builders are pure; `announce()` is the thin sender.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Sequence

from pyroute2 import IPRoute, NetNS

from colonet.net.netns import socket_in_netns

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_ALL = 0x0003
BROADCAST = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")
ALL_NODES = ipaddress.IPv6Address("ff02::1")
NA_OVERRIDE = 0x20000000
# Repeats (s after the first): one frame may be lost while links settle.
REPEAT_AFTER_S = (0.05, 0.2)


def mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a 6-byte MAC address")
    return raw


def gratuitous_arp(mac: str, ip4: str) -> bytes:
    """An ARP request for our own address (sender = target), broadcast."""
    src = mac_bytes(mac)
    ip = ipaddress.IPv4Address(ip4).packed
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src, ip, b"\0" * 6, ip)
    return BROADCAST + src + struct.pack("!H", ETH_P_ARP) + arp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_na(mac: str, ip6: str) -> bytes:
    """A neighbour advertisement for `ip6` to all nodes, override flag set."""
    src = mac_bytes(mac)
    target = ipaddress.IPv6Address(ip6).packed
    option = struct.pack("!BB6s", 2, 1, src)  # target link-layer address
    body = struct.pack("!I16s", NA_OVERRIDE, target) + option
    length = 4 + len(body)
    pseudo = target + ALL_NODES.packed + struct.pack("!I3xB", length, 58)
    checksum = _checksum(pseudo + struct.pack("!BBH", 136, 0, 0) + body)
    icmp = struct.pack("!BBH", 136, 0, checksum) + body
    ip_header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 255, target, ALL_NODES.packed)
    return ALL_NODES_MAC + src + struct.pack("!H", ETH_P_IPV6) + ip_header + icmp


def announcement_frames(mac: str, ip4s: Sequence[str], ip6s: Sequence[str]) -> list[bytes]:
    return [gratuitous_arp(mac, ip) for ip in ip4s] + [unsolicited_na(mac, ip) for ip in ip6s]


def interface_identity(netns: str | None, ifname: str) -> tuple[str, list[str], list[str]]:
    """MAC, IPv4 and global IPv6 addresses of `ifname` in `netns`."""
    with NetNS(netns) if netns else IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise ValueError(f"no interface {ifname!r} in namespace {netns or '(current)'}")
        index = found[0]
        mac = ipr.get_links(index)[0].get("address")
        ip4s, ip6s = [], []
        for addr in ipr.get_addr(index=index):
            ip = addr.get("IFA_ADDRESS")
            if addr["family"] == socket.AF_INET:
                ip4s.append(ip)
            elif addr["family"] == socket.AF_INET6 and not ip.startswith("fe80"):
                ip6s.append(ip)
    return mac, ip4s, ip6s


def announce(netns: str | None, ifname: str, *, repeat: bool = True) -> list[bytes]:
    """Send the announcement frames out of `ifname` now (and twice more later).

    Returns the frames sent in the first round.
    """
    mac, ip4s, ip6s = interface_identity(netns, ifname)
    frames = announcement_frames(mac, ip4s, ip6s)
    sock = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))

    def send_all() -> None:
        for frame in frames:
            sock.send(frame)

    try:
        send_all()
    except OSError:
        sock.close()
        raise
    if not repeat:
        sock.close()
        return frames

    def repeats() -> None:
        try:
            started = time.monotonic()
            for after in REPEAT_AFTER_S:
                time.sleep(max(0.0, started + after - time.monotonic()))
                send_all()
        except OSError:
            pass  # the guest went away meanwhile: nothing left to announce
        finally:
            sock.close()

    threading.Thread(target=repeats, name="announce", daemon=True).start()
    return frames
