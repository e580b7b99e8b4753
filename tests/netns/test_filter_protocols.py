"""TCP and ICMP (v4 and v6) through a filter, with scapy-built probes."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest

from colonet.net.netns import socket_in_netns


class CommitLoop:
    """Checkpoint and commit every `period_s`, as a checkpointer would."""

    def __init__(self, filt, period_s: float = 0.02) -> None:
        self.filt, self.period_s = filt, period_s
        self.epochs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.filt.call("checkpoint")
            self.filt.call("commit")
            self.epochs += 1

    def __enter__(self) -> CommitLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_tcp_stream_survives_buffering_intact(topology, start_filter):
    """Handshake, data and ACKs from the guest all wait for commits, and a
    1 MiB echo still arrives byte for byte (no broken checksums/offloads)."""
    filt = start_filter(topology)
    server = socket_in_netns(topology.guest_ns, socket.AF_INET, socket.SOCK_STREAM)
    server.bind((topology.guest_ip4, 7000))
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    payload = os.urandom(1 << 20)
    client = socket_in_netns(topology.client_ns, socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(30)
    with CommitLoop(filt) as loop:
        client.connect((topology.guest_ip4, 7000))
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload):
            chunk = client.recv(65536)
            assert chunk, "connection closed early"
            received += chunk
        sender.join()
    client.close()
    server.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert loop.epochs > 0
    assert filt.netdev_status()["released_packets"] > 0


def test_tcp_handshake_waits_for_commit(topology, start_filter):
    filt = start_filter(topology)
    server = socket_in_netns(topology.guest_ns, socket.AF_INET, socket.SOCK_STREAM)
    server.bind((topology.guest_ip4, 7001))
    server.listen(1)
    client = socket_in_netns(topology.client_ns, socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)
    client.connect_ex((topology.guest_ip4, 7001))  # EINPROGRESS: SYN sent
    time.sleep(0.3)
    # The guest's SYN-ACK is held: the connection cannot be established.
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    try:
        client.send(b"x")
        raise AssertionError("connected before the SYN-ACK's epoch committed")
    except (BlockingIOError, OSError):
        pass
    filt.call("checkpoint")
    filt.call("commit")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            client.send(b"x")
            break
        except OSError:
            time.sleep(0.02)
    else:
        raise AssertionError("connection not established after commit")
    client.close()
    server.close()


def _icmp_echo(topology, filt, family: int) -> None:
    if family == socket.AF_INET:
        sock = socket_in_netns(topology.client_ns, family, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        probe = bytes(ICMP(type=8, id=0x4242, seq=1) / b"colonet-icmp")
        dest = topology.guest_ip4
    else:
        sock = socket_in_netns(topology.client_ns, family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        # The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets.
        probe = bytes(ICMPv6EchoRequest(id=0x4242, seq=1, data=b"colonet-icmp"))
        dest = topology.guest_ip6
    sock.setblocking(False)
    with sock:
        sock.sendto(probe, (dest, 0))
        filt.wait_held(1)
        assert _echo_reply(sock, family, wait_s=0.3) is None, "echo reply before commit"
        filt.call("checkpoint")
        filt.call("commit")
        reply = _echo_reply(sock, family, wait_s=3.0)
    assert reply is not None, "echo reply never arrived after commit"


def _echo_reply(sock: socket.socket, family: int, wait_s: float):
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if family == socket.AF_INET:
            packet = IP(data)
            if ICMP in packet and packet[ICMP].type == 0 and packet[ICMP].id == 0x4242:
                return packet
        else:
            packet = ICMPv6EchoReply(data)
            if data[0] == 129 and packet.id == 0x4242:
                return packet
    return None


def test_icmp_echo_reply_held_until_commit(topology, start_filter):
    filt = start_filter(topology)
    _icmp_echo(topology, filt, socket.AF_INET)


def test_icmpv6_echo_reply_held_until_commit(topology, start_filter):
    filt = start_filter(topology)
    _icmp_echo(topology, filt, socket.AF_INET6)


def test_traffic_to_the_guest_is_not_buffered(topology, start_filter):
    """Only guest output waits: input reaches the guest at once."""
    start_filter(topology)
    rx = socket_in_netns(topology.guest_ns, socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((topology.guest_ip4, 9100))
    rx.settimeout(2)
    tx = socket_in_netns(topology.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
    tx.sendto(b"to-guest", (topology.guest_ip4, 9100))
    assert rx.recv(100) == b"to-guest"
