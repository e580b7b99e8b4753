"""Write what the filters hold (and, optionally, what they release) to pcapng.

Each packet's comment says `epoch=N netdev=IF state=held|released`; the tap
backend holds Ethernet frames, the nfqueue backend bare IP packets, which go
behind a synthetic Ethernet header so one file serves both (see pcapng.py).
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import BinaryIO

from colonet.buffer.filter_set import FilterSet
from colonet.buffer.pcapng import PcapngWriter, ethernet_from_ip
from colonet.buffer.status import DumpResult
from colonet.errors import UsageError


def packet_bytes(packet: object) -> bytes:
    """The wire bytes of a held packet, as an Ethernet frame."""
    if isinstance(packet, bytes | bytearray):
        return bytes(packet)
    try:
        payload = packet.get_payload()  # type: ignore[attr-defined]
    except RuntimeError:
        raise UsageError(
            "the nfqueue backend keeps held packets in the kernel, not their bytes: "
            "run `colonet filter run` with --retain-payloads (or the tap backend) to dump them"
        ) from None
    return ethernet_from_ip(payload)


# Create, never reuse: O_EXCL fails on any existing name, a symlink included
# (dangling or not, it is never followed); O_NOFOLLOW says the same again in
# case O_EXCL is ever dropped. So a capture neither clobbers a file nor is
# steered onto another by a link planted in a shared directory.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MODE = 0o600  # held packets are the guest's traffic


def _what_is_there(path: str) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return "something"
    if stat.S_ISLNK(st.st_mode):
        return "a symlink, never followed"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    return "a file"


def open_private(path: str) -> BinaryIO:
    """A new capture file, mode 0600; UsageError if `path` exists in any form."""
    if not os.path.isabs(path):
        raise UsageError(f"capture path {path!r} must be absolute")
    try:
        fd = os.open(path, _CREATE, MODE)
    except FileExistsError:
        raise UsageError(
            f"{path} exists; colonet never overwrites a capture "
            f"(it is {_what_is_there(path)}): name a new file"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot create capture {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, MODE)  # exactly the documented mode, whatever the umask
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def _remove_if_ours(path: str, out: BinaryIO) -> None:
    """Unlink `path` if it is still the file `out` created (not one put there since)."""
    with contextlib.suppress(OSError):
        mine, there = os.fstat(out.fileno()), os.lstat(path)
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(path)


def dump_held(filters: FilterSet, path: str) -> DumpResult:
    """Every packet held now, oldest epoch first, per netdev."""
    with open_private(path) as out:
        try:
            writer = PcapngWriter(out)
            per_netdev: dict[str, int] = {}
            for f in filters.filters:
                iface = writer.interface(f.netdev)
                for epoch, packets in f.held():
                    for packet in packets:
                        comment = f"epoch={epoch} netdev={f.netdev} state=held"
                        writer.packet(iface, packet_bytes(packet), comment=comment)
                    per_netdev[f.netdev] = per_netdev.get(f.netdev, 0) + len(packets)
        except BaseException:
            _remove_if_ours(path, out)  # a half capture would pass for a whole one
            raise
    return DumpResult(path, writer.packets, per_netdev)


class ReleasedCapture:
    """Appends every released epoch to one pcapng file (FilterSet.on_release)."""

    def __init__(self, path: str) -> None:
        self.out = open_private(path)
        self.writer = PcapngWriter(self.out)

    def __call__(self, netdev: str, epoch: int, packets: list[object]) -> None:
        iface = self.writer.interface(netdev)
        for packet in packets:
            comment = f"epoch={epoch} netdev={netdev} state=released"
            self.writer.packet(iface, packet_bytes(packet), comment=comment)
        self.out.flush()

    def close(self) -> None:
        self.out.close()
