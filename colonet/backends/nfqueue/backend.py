"""Buffer backend on NFQUEUE: the kernel holds packets, colonet holds verdicts.

Guest output of one netdev is steered (iptables, see `iptables.py`) into a
queue this process binds. Each packet stays in the kernel until colonet
gives its verdict, so holding costs no copy back into the kernel on
release. IP only (IPv4 and IPv6): ARP and other frames pass unbuffered,
which the L2 backend closes.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from netfilterqueue import NetfilterQueue

from colonet.backends.nfqueue import iptables
from colonet.backends.nfqueue.wire import (
    NF_ACCEPT,
    NF_DROP,
    bound_queues,
    encode_verdict,
    ip_packet_length,
    parse_queue_status,
)
from colonet.buffer.backend import Deliver
from colonet.errors import KernelSetupError
from colonet.net.links import NetdevInfo
from colonet.net.netns import read_proc_net, write_sysctl
from colonet.net.owner import netdev_lock_name

log = logging.getLogger(__name__)

QUEUE_STATUS = "netfilter/nfnetlink_queue"
# Headroom over our own packet limit: colonet tail-drops first and counts;
# the kernel's own drop at a full queue would be silent.
KERNEL_QUEUE_HEADROOM = 1024
BRIDGE_SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


@dataclass(frozen=True)
class NfqueueConfig:
    first_queue_num: int = 17000
    socket_buffer_bytes: int = 64 * 1024 * 1024
    batch_verdicts: bool = True
    drain_timeout_ms: int = 500
    # Keep a copy of each held packet's bytes (for `filter dump` and
    # --capture-released); off by default: the kernel holds the packet anyway.
    retain_payloads: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.first_queue_num <= 0xFFFF:
            raise ValueError(f"first_queue_num {self.first_queue_num} is outside 0..65535")
        if self.socket_buffer_bytes < 1 << 16:
            raise ValueError(f"socket_buffer_bytes {self.socket_buffer_bytes} is under 64 KiB")
        if self.drain_timeout_ms <= 0:
            raise ValueError(f"drain_timeout_ms {self.drain_timeout_ms} must be positive")


class NfqueueBackend:
    name = "nfqueue"

    def __init__(
        self, netdev: NetdevInfo, max_held_packets: int, config: NfqueueConfig | None = None
    ) -> None:
        self.netdev = netdev
        self.config = config or NfqueueConfig()
        self._max_len = max_held_packets + KERNEL_QUEUE_HEADROOM
        self._nfq: NetfilterQueue | None = None
        self._verdict_sock: socket.socket | None = None
        self._rule: iptables.SteeringRule | None = None
        self._saved_sysctls: dict[str, str] = {}
        self._deliver: Deliver | None = None
        self.queue_num = -1
        self.last_id = 0
        self._outstanding = 0  # delivered to us, no verdict yet

    # -- life cycle -----------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        try:
            self._bind()
            if self.netdev.is_bridge_port:
                for key in BRIDGE_SYSCTLS:
                    self._saved_sysctls[key] = write_sysctl(None, key, "1")
            self._rule = iptables.SteeringRule(
                self.netdev.name,
                self.netdev.is_bridge_port,
                self.queue_num,
                os.getpid(),
                netdev_lock_name(self.netdev.index),
            )
            iptables.install(self._rule)
        except BaseException:
            self.stop()
            raise
        log.info("nfqueue: %s -> queue %d", self.netdev.name, self.queue_num)

    def _bind(self) -> None:
        taken = bound_queues(read_proc_net(QUEUE_STATUS))
        for num in range(self.config.first_queue_num, self.config.first_queue_num + 4096):
            if num in taken or num > 0xFFFF:
                continue
            nfq = NetfilterQueue()
            try:
                nfq.bind(
                    num,
                    self._on_packet,
                    max_len=self._max_len,
                    sock_len=self.config.socket_buffer_bytes // 2,
                )
            except OSError:
                # Another process bound it between our read and our bind.
                nfq.unbind()
                continue
            self._nfq, self.queue_num = nfq, num
            self._verdict_sock = socket.socket(fileno=os.dup(nfq.get_fd()))
            return
        raise KernelSetupError("no free NFQUEUE number found")

    def stop(self) -> None:
        """Remove the steering rule, deliver stragglers, unbind the queue.

        Packets that hit the rule before it went are still handed to
        `deliver`, whose owner decides their fate (a filter that is shut
        down drops them). Unbinding drops anything left in the kernel.
        """
        errors: list[str] = []
        if self._rule is not None:
            try:
                iptables.remove(self._rule)
            except KernelSetupError as exc:
                errors.append(str(exc))
            self._rule = None
            try:
                self.drain()
            except OSError as exc:
                errors.append(f"draining queue {self.queue_num}: {exc}")
        for key, old in self._saved_sysctls.items():
            write_sysctl(None, key, old)
        self._saved_sysctls.clear()
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None
        if self._verdict_sock is not None:
            self._verdict_sock.close()
            self._verdict_sock = None
        if errors:
            raise KernelSetupError("; ".join(errors))

    # -- steering still in place? (docs/DESIGN.md invariant 7) ----------

    def check(self) -> list[str]:
        """Both families' rules present (a firewall reload replaces the
        mangle table), and for a bridge port the sysctls that make bridged
        frames traverse iptables at all."""
        if self._rule is None:
            return []
        missing = iptables.missing_rules(iptables.saved_rules(), self._rule)
        if self._saved_sysctls:
            missing += missing_sysctls({key: _read_sysctl(key) for key in BRIDGE_SYSCTLS})
        return missing

    def reinstall_steering(self) -> None:
        """Insert again the rules that vanished, first in the chain; the
        queue is still ours, so the netdev's output comes back to colonet."""
        if self._rule is None:
            return
        gone = iptables.missing_rules(iptables.saved_rules(), self._rule)
        families = [f for f in iptables.FAMILIES if self._rule.describe(f) in gone]
        iptables.install(self._rule, families)
        if self._saved_sysctls:
            for key in BRIDGE_SYSCTLS:
                write_sysctl(None, key, "1")

    # -- packets --------------------------------------------------------

    def _on_packet(self, packet: object) -> None:
        # An id gap means the kernel could not notify us (socket buffer full)
        # and dropped those packets itself; /proc counts them as user_dropped.
        self.last_id = packet.id  # type: ignore[attr-defined]
        self._outstanding += 1
        if self.config.retain_payloads:
            packet.retain()  # type: ignore[attr-defined]
        payload = packet.get_payload()  # type: ignore[attr-defined]
        assert self._deliver is not None
        self._deliver(packet, ip_packet_length(payload, len(payload)))

    def _queue_status(self) -> dict[str, int]:
        status = parse_queue_status(read_proc_net(QUEUE_STATUS), self.queue_num)
        return status or {"id_sequence": 0, "queue_total": 0, "queue_dropped": 0, "user_dropped": 0}

    def describe(self) -> dict[str, object]:
        status = self._queue_status() if self._nfq is not None else {}
        return {
            "queue": self.queue_num,
            "batch_verdicts": self.config.batch_verdicts,
            # Dropped by the kernel before colonet saw them: queue full, or
            # no room in our socket for the notification.
            "kernel_dropped": status.get("queue_dropped", 0) + status.get("user_dropped", 0),
        }

    def fileno(self) -> int:
        if self._nfq is None:
            raise KernelSetupError("nfqueue backend is not started")
        return self._nfq.get_fd()

    def poll(self) -> None:
        if self._nfq is not None:
            self._nfq.run(block=False)

    def drain(self) -> None:
        """Read until nothing the kernel queued before this call is unseen.

        /proc's id_sequence is the id of the newest packet the kernel put in
        our queue: reaching it means nothing emitted earlier is pending. If
        the kernel dropped that packet instead (no room for its
        notification), queue_total, the packets it still holds for us, tells
        that everything queued has been seen.
        """
        if self._nfq is None:
            return
        target = self._queue_status()["id_sequence"]
        deadline = time.monotonic() + self.config.drain_timeout_ms / 1000
        fd = self._nfq.get_fd()
        while True:
            self._nfq.run(block=False)
            if self.last_id >= target:
                return
            if self._queue_status()["queue_total"] <= self._outstanding:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            select.select([fd], [], [], min(remaining, 0.005))
        log.warning(
            "nfqueue %d: packets up to id %d still unseen after %d ms; the epoch is sealed "
            "without them and they follow in the next one",
            self.queue_num,
            target,
            self.config.drain_timeout_ms,
        )

    def release(self, packets: Sequence[object]) -> None:
        self._verdict(packets, NF_ACCEPT)

    def drop(self, packets: Sequence[object]) -> None:
        self._verdict(packets, NF_DROP)

    def _verdict(self, packets: Sequence[object], verdict: int) -> None:
        """Verdict for `packets`, which are the oldest ones held, in order.

        One batch message covers ids up to the last packet's, which is
        exactly `packets` because the kernel hands out ids in arrival order
        and older packets have all had their verdict already. A single
        packet (a tail drop of the newest) gets its own verdict.
        """
        if not packets or self._nfq is None:
            return
        self._outstanding -= len(packets)
        if self.config.batch_verdicts and len(packets) > 1:
            assert self._verdict_sock is not None
            last = packets[-1].id  # type: ignore[attr-defined]
            self._verdict_sock.sendto(
                encode_verdict(self.queue_num, last, verdict, batch=True), (0, 0)
            )
            return
        for packet in packets:
            if verdict == NF_ACCEPT:
                packet.accept()  # type: ignore[attr-defined]
            else:
                packet.drop()  # type: ignore[attr-defined]


def missing_sysctls(values: dict[str, str | None]) -> list[str]:
    """Pure: the bridge sysctls not "1" (bridged frames would skip iptables)."""
    return [
        f"sysctl {key}=1 (now {value if value is not None else 'unreadable'}: "
        "bridged frames skip iptables)"
        for key, value in values.items()
        if value != "1"
    ]


def _read_sysctl(key: str) -> str | None:
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None
