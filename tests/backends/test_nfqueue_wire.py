"""Tests for the nfnetlink_queue wire helpers: verdict bytes, IP lengths, /proc parsing."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from colonet.backends.nfqueue.wire import (
    NF_ACCEPT,
    NF_DROP,
    bound_queues,
    encode_verdict,
    ip_packet_length,
    parse_queue_status,
)

# Decoded independently of the module under test (linux/netlink.h,
# linux/netfilter/nfnetlink.h, linux/netfilter/nfnetlink_queue.h).
NLMSGHDR = "=IHHII"  # len, type, flags, seq, pid: host byte order
NFGENMSG = "!BBH"  # family, version, res_id (network byte order)
NLATTR = "=HH"  # nla_len, nla_type: host byte order
VERDICT_HDR = "!II"  # verdict, id: network byte order


def decode(message: bytes) -> dict[str, int]:
    length, msg_type, flags, seq, pid = struct.unpack_from(NLMSGHDR, message, 0)
    family, version, res_id = struct.unpack_from(NFGENMSG, message, 16)
    nla_len, nla_type = struct.unpack_from(NLATTR, message, 20)
    verdict, packet_id = struct.unpack_from(VERDICT_HDR, message, 24)
    return {
        "len": length,
        "type": msg_type,
        "flags": flags,
        "seq": seq,
        "pid": pid,
        "family": family,
        "version": version,
        "res_id": res_id,
        "nla_len": nla_len,
        "nla_type": nla_type,
        "verdict": verdict,
        "id": packet_id,
    }


# -- encode_verdict ---------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "msg_type"),
    [(True, (3 << 8) | 3), (False, (3 << 8) | 1)],
)
@pytest.mark.parametrize("verdict", [NF_ACCEPT, NF_DROP])
def test_encode_verdict_fields(batch: bool, msg_type: int, verdict: int) -> None:
    message = encode_verdict(0x1234, 0xDEADBEEF, verdict, batch=batch, seq=77)
    assert len(message) == 32
    fields = decode(message)
    assert fields == {
        "len": 32,
        "type": msg_type,
        "flags": 0x1,  # NLM_F_REQUEST
        "seq": 77,
        "pid": 0,
        "family": 0,  # AF_UNSPEC
        "version": 0,  # NFNETLINK_V0
        "res_id": 0x1234,
        "nla_len": 12,
        "nla_type": 2,  # NFQA_VERDICT_HDR
        "verdict": verdict,
        "id": 0xDEADBEEF,
    }


def test_encode_verdict_big_endian_fields_are_big_endian_on_the_wire() -> None:
    message = encode_verdict(0x0102, 0x0A0B0C0D, NF_ACCEPT, batch=True)
    assert message[18:20] == b"\x01\x02"  # res_id = queue number
    assert message[24:28] == b"\x00\x00\x00\x01"  # NF_ACCEPT
    assert message[28:32] == b"\x0a\x0b\x0c\x0d"  # packet id


def test_encode_verdict_default_seq_is_zero() -> None:
    assert decode(encode_verdict(1, 1, NF_DROP, batch=False))["seq"] == 0


@pytest.mark.parametrize(("queue_num", "packet_id"), [(0, 1), (65535, 2**32 - 1), (7, 12345)])
def test_encode_verdict_accepts_range_edges(queue_num: int, packet_id: int) -> None:
    fields = decode(encode_verdict(queue_num, packet_id, NF_ACCEPT, batch=True))
    assert (fields["res_id"], fields["id"]) == (queue_num, packet_id)


@pytest.mark.parametrize("queue_num", [-1, 65536, 2**32])
def test_encode_verdict_rejects_out_of_range_queue_number(queue_num: int) -> None:
    with pytest.raises(ValueError, match=f"queue number {queue_num} is outside 0..65535"):
        encode_verdict(queue_num, 1, NF_ACCEPT, batch=True)


@pytest.mark.parametrize("packet_id", [0, -1, 2**32, 2**40])
def test_encode_verdict_rejects_out_of_range_packet_id(packet_id: int) -> None:
    with pytest.raises(ValueError, match=f"packet id {packet_id} is outside"):
        encode_verdict(1, packet_id, NF_ACCEPT, batch=False)


@pytest.mark.parametrize("verdict", [2, 3, -1, 0x10000])
def test_encode_verdict_rejects_unknown_verdict(verdict: int) -> None:
    with pytest.raises(ValueError, match=f"verdict {verdict} is neither NF_DROP nor NF_ACCEPT"):
        encode_verdict(1, 1, verdict, batch=True)


# -- ip_packet_length -------------------------------------------------------


def ipv4_packet(payload_len: int) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"x" * payload_len))


def ipv6_packet(payload_len: int) -> bytes:
    return bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / (b"x" * payload_len))


@pytest.mark.parametrize("payload_len", [0, 1, 100, 1472, 9000])
def test_ip_packet_length_ipv4_reads_total_length(payload_len: int) -> None:
    packet = ipv4_packet(payload_len)
    assert len(packet) == 20 + 8 + payload_len
    assert ip_packet_length(packet, len(packet)) == len(packet)


@pytest.mark.parametrize("payload_len", [0, 1, 100, 1452, 9000])
def test_ip_packet_length_ipv6_is_40_plus_payload_length(payload_len: int) -> None:
    packet = ipv6_packet(payload_len)
    assert len(packet) == 40 + 8 + payload_len
    assert ip_packet_length(packet, len(packet)) == 40 + 8 + payload_len


@pytest.mark.parametrize("copy", [20, 21, 64, 4096])
def test_ip_packet_length_ipv4_truncated_copy_counts_whole_packet(copy: int) -> None:
    packet = ipv4_packet(60_000)
    truncated = packet[:copy]
    assert ip_packet_length(truncated, len(truncated)) == 60_028


@pytest.mark.parametrize("copy", [40, 41, 64, 4096])
def test_ip_packet_length_ipv6_truncated_copy_counts_whole_packet(copy: int) -> None:
    packet = ipv6_packet(60_000)
    truncated = packet[:copy]
    assert ip_packet_length(truncated, len(truncated)) == 60_048


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x45",
        ipv4_packet(100)[:19],  # IPv4, shorter than a header
        ipv6_packet(100)[:39],  # IPv6, shorter than a header
        ipv6_packet(100)[:20],  # version 6, long enough for IPv4 but not IPv6
        b"\x00" * 64,  # version 0
        b"\x50" + b"\x00" * 63,  # version 5
        b"\xff" * 64,  # version 15
        bytes(UDP(sport=1, dport=2) / (b"y" * 40)),  # no IP header at all
    ],
)
def test_ip_packet_length_falls_back_to_copied(payload: bytes) -> None:
    assert ip_packet_length(payload, 1234) == 1234


# -- /proc/net/netfilter/nfnetlink_queue -------------------------------------


def proc_line(
    queue_num: int,
    portid: int,
    queue_total: int,
    copy_mode: int,
    copy_range: int,
    queue_dropped: int,
    user_dropped: int,
    id_sequence: int,
) -> str:
    # The kernel's seq_printf format in nfnetlink_queue.c.
    return "%5u %6u %5u %1u %5u %5u %5u %8u %2d\n" % (  # noqa: UP031 - the kernel's format
        queue_num,
        portid,
        queue_total,
        copy_mode,
        copy_range,
        queue_dropped,
        user_dropped,
        id_sequence,
        1,
    )


SAMPLE = (
    proc_line(0, 4021, 0, 2, 65531, 0, 0, 17)
    + proc_line(7, 123456789, 3, 2, 4096, 5, 2, 4294967295)
    + proc_line(65535, 42, 50000, 1, 0, 123456, 7, 1)
)


def test_sample_text_has_the_kernel_layout() -> None:
    first = SAMPLE.splitlines()[0]
    assert first == "    0   4021     0 2 65531     0     0       17  1"


def test_parse_queue_status_reads_one_queue() -> None:
    assert parse_queue_status(SAMPLE, 7) == {
        "queue_num": 7,
        "portid": 123456789,
        "queue_total": 3,
        "copy_mode": 2,
        "copy_range": 4096,
        "queue_dropped": 5,
        "user_dropped": 2,
        "id_sequence": 4294967295,
    }


def test_parse_queue_status_first_and_last_rows() -> None:
    first = parse_queue_status(SAMPLE, 0)
    last = parse_queue_status(SAMPLE, 65535)
    assert first is not None and last is not None
    assert (first["portid"], first["id_sequence"]) == (4021, 17)
    assert (last["queue_total"], last["queue_dropped"], last["id_sequence"]) == (50000, 123456, 1)


@pytest.mark.parametrize("queue_num", [1, 6, 8, 70, 65534])
def test_parse_queue_status_missing_queue_is_none(queue_num: int) -> None:
    assert parse_queue_status(SAMPLE, queue_num) is None


@pytest.mark.parametrize("text", ["", "\n", "   \n\n"])
def test_parse_queue_status_empty_text_is_none(text: str) -> None:
    assert parse_queue_status(text, 0) is None


def test_parse_queue_status_skips_short_and_non_numeric_lines() -> None:
    text = "garbage line here with many fields x y z\n7 1 2\n" + proc_line(7, 1, 2, 2, 3, 4, 5, 6)
    status = parse_queue_status(text, 7)
    assert status is not None
    assert status["id_sequence"] == 6


def test_bound_queues_lists_every_row() -> None:
    assert bound_queues(SAMPLE) == {0, 7, 65535}


@pytest.mark.parametrize("text", ["", "\n", "  \n \n"])
def test_bound_queues_of_empty_text_is_empty(text: str) -> None:
    assert bound_queues(text) == set()
