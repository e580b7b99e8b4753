"""Buffer backend for every Ethernet frame: the netdev's ingress goes to a tap.

NFQUEUE sees only IP packets, so a guest's ARP replies, neighbour
advertisements, VLAN-tagged and other non-IP frames would leave before
their checkpoint commits. This backend steers *all* guest output of the
netdev (see `tc_steering.py`) into a colonet-owned tap, holds the frames
in colonet's memory, and on release writes them back through a TX ring,
one system call per ring-full.

Fail-closed: the capture tap exists only while this process holds its fd.
If colonet dies, the tap disappears, the steering program's redirect has no
target, and the kernel drops the netdev's output until `colonet cleanup`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from colonet.backends.tap import tc_steering
from colonet.backends.tap.bpf_program import RELEASE_MARK
from colonet.buffer.backend import Deliver
from colonet.errors import KernelSetupError
from colonet.net.links import NetdevInfo
from colonet.net.owner import netdev_lock_name
from colonet.net.packet_tx_ring import PacketTxRing
from colonet.net.tuntap import open_tap

log = logging.getLogger(__name__)

MAX_FRAME = 65536
ETH_HLEN_WITH_VLAN = 18


@dataclass(frozen=True)
class TapBackendConfig:
    # Frames the capture tap may hold unread; at least the filter's packet
    # limit, so the kernel never drops what colonet would still accept.
    capture_queue_len: int = 65536
    tx_ring_slots: int = 1024
    batch_release: bool = True

    def __post_init__(self) -> None:
        if self.capture_queue_len < 64:
            raise ValueError(f"capture_queue_len {self.capture_queue_len} is under 64")
        if self.tx_ring_slots < 1:
            raise ValueError(f"tx_ring_slots {self.tx_ring_slots} must be positive")


class TapBackend:
    name = "tap"

    def __init__(
        self,
        netdev: NetdevInfo,
        config: TapBackendConfig | None = None,
        max_held_packets: int = 0,
    ) -> None:
        self.netdev = netdev
        self.config = config or TapBackendConfig()
        self._capture_queue_len = max(self.config.capture_queue_len, max_held_packets + 1024)
        # Names carry the netdev's index: unique per namespace, under 16 chars.
        self.capture_link = f"cnc{netdev.index}"
        self.release_links = (f"cnr{netdev.index}a", f"cnr{netdev.index}b")
        self._fd = -1
        self._capture_index = 0
        self._capture_gone = False  # the tap was deleted under our fd
        self._netdev_index = netdev.index
        self._sock: socket.socket | None = None
        self._ring: PacketTxRing | None = None
        self._record: tc_steering.SteeringRecord | None = None
        self._deliver: Deliver | None = None
        self._release_created = False
        self.mtu = max(netdev.mtu, 1500)

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        try:
            self._fd = open_tap(self.capture_link)
            os.set_blocking(self._fd, False)
            capture_index = self._capture_index = tc_steering.prepare_capture_link(
                self.capture_link, self.mtu, self._capture_queue_len
            )
            tc_steering.create_release_link(*self.release_links, self.netdev.name, self.mtu)
            self._release_created = True
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._sock.bind((self.release_links[0], 0))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, RELEASE_MARK)
            if self.config.batch_release:
                self._ring = PacketTxRing(
                    self._sock, self.mtu + ETH_HLEN_WITH_VLAN, self.config.tx_ring_slots
                )
            # Last: only now does guest output start to be captured.
            self._record = tc_steering.steer(
                self.netdev.name,
                capture_index,
                self.release_links[0],
                netdev_lock_name(self.netdev.index),
            )
        except NetlinkError as exc:
            # The kernel refused a link, qdisc or filter: a set-up failure
            # (auto falls back to the next backend), never a traceback.
            self.stop()
            raise KernelSetupError(
                f"tap backend on {self.netdev.name}: the kernel refused a step: {exc}"
            ) from None
        except BaseException:
            self.stop()
            raise
        log.info("tap backend: %s -> %s", self.netdev.name, self.capture_link)

    def fileno(self) -> int:
        # -1 once the tap is gone: a dead tap's fd reads as always ready.
        return -1 if self._capture_gone else self._fd

    def poll(self, budget: int = 4096) -> None:
        """Read up to `budget` waiting frames (so a flood cannot starve the
        control socket; the event loop comes back while more are ready)."""
        assert self._deliver is not None
        while self._fd >= 0 and not self._capture_gone and budget > 0:
            budget -= 1
            try:
                frame = os.read(self._fd, MAX_FRAME)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                if exc.errno == errno.EBADFD:
                    # Deleted from outside (`ip link del`): `check` reports
                    # it; the fd stays open until stop so its number is not
                    # reused under the event loop's feet.
                    self._capture_gone = True
                    log.error("tap backend: the capture tap %s vanished", self.capture_link)
                    return
                raise
            self._deliver(frame, len(frame))

    def drain(self) -> None:
        """Read until the capture tap is empty.

        The tap is a FIFO fed synchronously by the redirect: once it reads
        empty, every frame that reached the netdev before is delivered.
        """
        self.poll(budget=self._capture_queue_len)

    def release(self, packets: Sequence[object]) -> None:
        if not packets or self._sock is None:
            return
        frames: Sequence[bytes] = packets  # type: ignore[assignment]
        if self._ring is not None:
            self._ring.send_frames(frames)
        else:
            for frame in frames:
                self._sock.send(frame)

    def drop(self, packets: Sequence[object]) -> None:
        """Held frames live only in colonet's memory: forgetting them drops them."""

    def check(self) -> list[str]:
        if self._record is None:
            return []
        snap = tc_steering.snapshot(self._record, self.capture_link, self.release_links)
        return tc_steering.missing_steering(
            snap,
            self._record,
            self._netdev_index,
            self.capture_link,
            self._capture_index,
            self.release_links,
        )

    def reinstall_steering(self) -> None:
        """Put the bpf redirect (and the record cleanup reads) back. Frames
        then reach the capture tap again and the filter drops them; with
        the tap gone too, the redirect has no target and the kernel drops
        them."""
        if self._record is None:
            return
        self._record = tc_steering.resteer(
            self._record, self._capture_index, self.release_links, self.mtu
        )
        self._netdev_index = tc_steering.link_index(self.netdev.name)

    def stop(self) -> None:
        if self._record is not None:
            tc_steering.unsteer(self._record)
            self._record = None
            self._release_created = False
            with contextlib.suppress(OSError):
                self.poll()  # stragglers go to the filter, which drops them
        elif self._release_created:
            tc_steering.delete_link(self.release_links[0])
            self._release_created = False
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd >= 0:
            os.close(self._fd)  # the capture tap disappears with its fd
            self._fd = -1

    def describe(self) -> dict[str, object]:
        return {
            "capture_link": self.capture_link,
            "release_link": self.release_links[0],
            "release_syscalls": self._ring.syscalls if self._ring else None,
            "kernel_dropped": _tx_dropped(self.capture_link),
        }


def _tx_dropped(link: str) -> int | None:
    try:
        with open(f"/sys/class/net/{link}/statistics/tx_dropped") as f:
            return int(f.read())
    except OSError:
        return None
