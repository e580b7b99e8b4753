"""A minimal pcapng writer (pure): what the filters hold, readable by tcpdump,
Wireshark and scapy.

pcapng rather than pcap because one file then carries several netdevs as
separate interfaces and every packet a comment naming its epoch and netdev:
`epoch=7 netdev=tap0 state=held`. Every interface is Ethernet (libpcap, so
tcpdump, refuses a file that mixes link types): the nfqueue backend holds
bare IP packets, which `ethernet_from_ip` puts behind a synthetic header
(zero MAC addresses, the ethertype from the IP version).

Blocks written (little-endian): a Section Header, one Interface Description
per (netdev, link type), and an Enhanced Packet per packet with an
opt_comment option.
"""

from __future__ import annotations

import struct
import time
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_COMMENT, _OPT_END = 1, 0
_IF_NAME, _IF_TSRESOL = 2, 9


def ethernet_from_ip(packet: bytes) -> bytes:
    """A bare IPv4/IPv6 packet as an Ethernet frame with zero addresses."""
    ethertype = 0x86DD if packet[:1] and packet[0] >> 4 == 6 else 0x0800
    return b"\0" * 12 + struct.pack("!H", ethertype) + packet


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


class PcapngWriter:
    """Write packets of several netdevs into one pcapng stream."""

    def __init__(self, out: BinaryIO, application: str = "colonet") -> None:
        self.out = out
        self._interfaces: dict[tuple[str, int], int] = {}
        options = _option(4, application.encode()) + _option(_OPT_END, b"")
        body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + options
        out.write(_block(_SHB, body))
        self.packets = 0

    def interface(self, name: str, linktype: int = LINKTYPE_ETHERNET) -> int:
        """The interface id for (netdev, link type), declared on first use."""
        key = (name, linktype)
        if key not in self._interfaces:
            options = (
                _option(_IF_NAME, name.encode())
                + _option(_IF_TSRESOL, bytes([9]))  # nanoseconds
                + _option(_OPT_END, b"")
            )
            self.out.write(_block(_IDB, struct.pack("<HHI", linktype, 0, SNAPLEN) + options))
            self._interfaces[key] = len(self._interfaces)
        return self._interfaces[key]

    def packet(
        self, iface: int, data: bytes, *, comment: str = "", timestamp_ns: int | None = None
    ) -> None:
        ts = time.time_ns() if timestamp_ns is None else timestamp_ns
        captured = data[:SNAPLEN]
        options = (_option(_OPT_COMMENT, comment.encode()) if comment else b"") + _option(
            _OPT_END, b""
        )
        body = (
            struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(captured), len(data))
            + _pad(captured)
            + options
        )
        self.out.write(_block(_EPB, body))
        self.packets += 1
