"""Bytes of the nfnetlink_queue messages that python-netfilterqueue lacks.

libnetfilter_queue's batch verdict (NFQNL_MSG_VERDICT_BATCH) gives one
verdict to every queued packet with an id up to N in a single message. The
kernel queues packets in arrival order with increasing ids, so releasing an
epoch is one system call instead of one per packet. Pure functions: no
socket here, so the encoding is unit-tested without root.
"""

from __future__ import annotations

import struct

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_VERDICT_HDR = 2
NLM_F_REQUEST = 0x1
NFNETLINK_V0 = 0
AF_UNSPEC = 0

NF_DROP = 0
NF_ACCEPT = 1

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")  # res_id (the queue number) is big-endian
_NLATTR = struct.Struct("=HH")
_VERDICT_HDR = struct.Struct("!II")


def encode_verdict(
    queue_num: int, packet_id: int, verdict: int, *, batch: bool, seq: int = 0
) -> bytes:
    """One verdict message; with `batch`, it covers every id <= `packet_id`."""
    if not 0 <= queue_num <= 0xFFFF:
        raise ValueError(f"queue number {queue_num} is outside 0..65535")
    if not 0 < packet_id <= 0xFFFFFFFF:
        raise ValueError(f"packet id {packet_id} is outside 1..2**32-1")
    if verdict not in (NF_DROP, NF_ACCEPT):
        raise ValueError(f"verdict {verdict} is neither NF_DROP nor NF_ACCEPT")
    attr = _NLATTR.pack(_NLATTR.size + _VERDICT_HDR.size, NFQA_VERDICT_HDR)
    attr += _VERDICT_HDR.pack(verdict, packet_id)
    body = _NFGENMSG.pack(AF_UNSPEC, NFNETLINK_V0, queue_num) + attr
    kind = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, NLM_F_REQUEST, seq, 0
    )
    return header + body


def ip_packet_length(payload: bytes, copied: int) -> int:
    """The packet's full length from its IP header.

    The queue copies at most ~4 KiB of each packet to userspace; byte limits
    must count the whole packet, which the IP header states.
    """
    if len(payload) >= 20 and payload[0] >> 4 == 4:
        return struct.unpack_from("!H", payload, 2)[0]
    if len(payload) >= 40 and payload[0] >> 4 == 6:
        return 40 + struct.unpack_from("!H", payload, 4)[0]
    return copied


def parse_queue_status(text: str, queue_num: int) -> dict[str, int] | None:
    """Read one queue's row of /proc/net/netfilter/nfnetlink_queue."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].isdigit() and int(fields[0]) == queue_num:
            names = (
                "queue_num",
                "portid",
                "queue_total",
                "copy_mode",
                "copy_range",
                "queue_dropped",
                "user_dropped",
                "id_sequence",
            )
            return {name: int(value) for name, value in zip(names, fields[:8], strict=True)}
    return None


def bound_queues(text: str) -> set[int]:
    return {
        int(fields[0])
        for fields in (line.split() for line in text.splitlines())
        if fields and fields[0].isdigit()
    }
