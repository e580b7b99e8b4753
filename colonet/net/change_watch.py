"""A wake-up when the kernel's network configuration changes (netlink).

The filter checks its steering every ~200 ms (docs/DESIGN.md invariant 7);
that bounds how long a removal from outside goes unnoticed. Where the
kernel announces changes, these notifications cut it to milliseconds:
rtnetlink for links and for qdiscs and tc filters (the tap backend), and
nf_tables for rule sets (the nfqueue backend with iptables-nft;
iptables-legacy announces nothing, so there the period is the bound).

Only "something changed" is used, never what: the check reads the state
itself, so a missed or overflowing notification costs only latency.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RTNLGRP_LINK = 1
RTNLGRP_TC = 4
NFNLGRP_NFTABLES = 7

# (what, netlink protocol, multicast group)
GROUPS = (
    ("links", NETLINK_ROUTE, RTNLGRP_LINK),
    ("qdiscs and tc filters", NETLINK_ROUTE, RTNLGRP_TC),
    ("nf_tables rule sets", NETLINK_NETFILTER, NFNLGRP_NFTABLES),
)


class ChangeWatch:
    """Netlink sockets subscribed to configuration changes in this netns."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = {s.fileno(): s for s in socks}

    @classmethod
    def open(cls) -> ChangeWatch:
        """Subscribe to every group the kernel offers; skip the others (a
        kernel without nf_tables), the periodic check still covers them."""
        socks = []
        for what, proto, group in GROUPS:
            try:
                sock = socket.socket(
                    socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, proto
                )
            except OSError as exc:
                log.info("no notifications of %s changes (%s): periodic checks only", what, exc)
                continue
            try:
                sock.bind((0, 0))
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            except OSError as exc:
                sock.close()
                log.info("no notifications of %s changes (%s): periodic checks only", what, exc)
                continue
            socks.append(sock)
        return cls(socks)

    def fds(self) -> list[int]:
        return list(self.socks)

    def drain(self, fd: int) -> None:
        """Read and forget what is waiting on `fd` (it only wakes us)."""
        sock = self.socks[fd]
        while True:
            try:
                sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # overflowed: changes happened
                    continue
                raise

    def close(self) -> None:
        for sock in self.socks.values():
            with contextlib.suppress(OSError):
                sock.close()
        self.socks.clear()
