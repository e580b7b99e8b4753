"""Attach to a tap device the way a hypervisor does (TUNSETIFF)."""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name: str) -> int:
    """Return an fd carrying `name`'s frames; the tap must be in this netns.

    No IFF_VNET_HDR: without it the kernel segments and checksums every
    frame before handing it over, so no GSO super-frame or partial checksum
    ever reaches a relay (the pitfall in docs/DESIGN.md).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd
