#!/usr/bin/env python3
"""One QEMU VM, three ways of holding its output: none, QEMU's filter-buffer, colonet.

Run from the repository root as root (it builds namespaces and boots VMs):

    .venv/bin/python tools/bench_qemu.py [--period-ms 100] [--seconds 5] [--json]

The tiny guest (tools/build_guest.sh) runs under QEMU (TCG) on a tap bridged
to a client namespace. For each variant the same VM image is booted afresh
and measured from the client in the same run:
  (a) no buffer;
  (b) QEMU's own `-object filter-buffer,queue=rx,interval=<period>` on the
      VM's netdev (releases everything every period, no checkpoint);
  (c) colonet's filter on the tap, `checkpoint` + `commit` every period
      through its control socket (no state transfer either, so (b) and (c)
      compare the buffers alone).
Measured: ICMP echo RTT (median / p99 of 100 pings, one every 20 ms) and the
TCP request rate of the guest's counter service (INC / reply, one
connection closed-loop, and 16 connections in parallel) for --seconds.
Progress on stderr, a Markdown table (or --json) on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from colonet.control.client import FilterClient  # noqa: E402
from colonet.guest.counter_store import REPLY, REQUEST  # noqa: E402
from colonet.guest.qemu import QemuGuest, QemuGuestConfig, build_guest  # noqa: E402
from colonet.net.netns import socket_in_netns  # noqa: E402
from colonet.net.privilege import require_net_admin  # noqa: E402
from colonet.net.topology import Topology, run_prefix  # noqa: E402

PORT = 7070


def _icmp_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping_rtts_ms(topo: Topology, count: int, gap_s: float) -> list[float]:
    """ICMP echo from the client to the guest; lost echoes are left out."""
    sock = socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(0.01)
    ident = os.getpid() & 0xFFFF
    sent: dict[int, float] = {}
    rtts: list[float] = []
    try:
        next_at = time.monotonic()
        seq = 0
        deadline = next_at + count * gap_s + 3.0
        while time.monotonic() < deadline and len(rtts) < count:
            now = time.monotonic()
            if seq < count and now >= next_at:
                header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
                payload = b"colonet-bench-ping"
                csum = _icmp_checksum(header + payload)
                packet = struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload
                sock.sendto(packet, (topo.guest_ip4, 0))
                sent[seq] = now
                seq += 1
                next_at += gap_s
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            icmp = data[(data[0] & 0x0F) * 4 :]
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
            if kind == 0 and rid == ident and rseq in sent:
                rtts.append((time.monotonic() - sent.pop(rseq)) * 1000)
    finally:
        sock.close()
    return rtts


def tcp_rate(topo: Topology, connections: int, seconds: float) -> float:
    """Closed-loop INC requests per second over `connections` TCP connections."""
    done = [0] * connections
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        sock = socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((topo.guest_ip4, PORT))
            rid = 0
            while time.monotonic() < stop:
                rid += 1
                sock.sendall(REQUEST.pack(b"INC ", rid))
                reply = b""
                while len(reply) < REPLY.size:
                    chunk = sock.recv(REPLY.size - len(reply))
                    if not chunk:
                        return
                    reply += chunk
                done[i] += 1
        except OSError:
            return
        finally:
            sock.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


class ColonetCommitter:
    """`colonet filter run` on the tap, checkpoint + commit every period."""

    def __init__(self, topo: Topology, period_ms: int, tmp: str) -> None:
        self.sock = os.path.join(tmp, "filter.sock")
        argv = ["ip", "netns", "exec", topo.host_ns, sys.executable, "-m", "colonet"]
        argv += ["filter", "run", "--netdev", topo.netdev, "--socket", self.sock, "--json"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline():
            raise RuntimeError("colonet filter run did not start")
        self.hooks = FilterClient(self.sock)
        self.period_s = period_ms / 1000
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.wait(self.period_s):
            self.hooks.commit(self.hooks.begin_checkpoint())

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.proc.terminate()
        self.proc.communicate(timeout=10)


def measure(variant: str, args: argparse.Namespace, kernel: str, initrd: str) -> dict[str, Any]:
    topo = Topology(run_prefix(), link="tap", static_neighbours=False, vm_holds_taps=True)
    tmp = tempfile.mkdtemp(prefix="colonet-bench-qemu-")
    extra: tuple[str, ...] = ()
    if variant == "qemu-filter-buffer":
        extra = (
            "-object",
            f"filter-buffer,id=fb0,netdev=n0,queue=rx,interval={args.period_ms * 1000}",
        )
    guest: QemuGuest | None = None
    committer: ColonetCommitter | None = None
    try:
        topo.build()
        config = QemuGuestConfig(
            kernel=kernel,
            initrd=initrd,
            tap=topo.netdev,
            guest_ip=f"{topo.guest_ip4}/24",
            netns=topo.host_ns,
            extra_args=extra,
        )
        guest = QemuGuest(config)
        guest.activate()
        if variant == "colonet":
            committer = ColonetCommitter(topo, args.period_ms, tmp)
        ping_rtts_ms(topo, 5, 0.05)  # neighbours resolved, caches warm
        rtts = ping_rtts_ms(topo, args.pings, 0.02)
        one = tcp_rate(topo, 1, args.seconds)
        many = tcp_rate(topo, 16, args.seconds)
    finally:
        if committer is not None:
            committer.close()
        if guest is not None:
            guest.shutdown()
        topo.destroy()
        with contextlib.suppress(OSError):
            os.rmdir(tmp)
    ordered = sorted(rtts)
    result = {
        "variant": variant,
        "pings_answered": len(rtts),
        "rtt_ms_median": round(statistics.median(rtts), 2) if rtts else None,
        "rtt_ms_p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)
        if rtts
        else None,
        "tcp_req_per_s_1": round(one, 1),
        "tcp_req_per_s_16": round(many, 1),
    }
    print(f"{variant}: {result}", file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--period-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pings", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    require_net_admin("tools/bench_qemu.py")
    kernel, initrd = build_guest()
    rows = [
        measure(v, args, kernel, initrd) for v in ("no-buffer", "qemu-filter-buffer", "colonet")
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    base = rows[0]
    print(
        f"One VM (QEMU TCG, 128 MiB, virtio-net on a bridged tap), buffers released every "
        f"{args.period_ms} ms; RTT of {args.pings} ICMP echoes 20 ms apart; TCP INC/reply "
        f"rate over {args.seconds} s, closed loop\n"
    )
    print(
        "| variant | ping RTT ms median / p99 | TCP req/s, 1 conn (x no buffer) | "
        "TCP req/s, 16 conns (x no buffer) |"
    )
    print("|---|---|---|---|")
    for r in rows:
        x1 = r["tcp_req_per_s_1"] / base["tcp_req_per_s_1"] if base["tcp_req_per_s_1"] else 0
        x16 = r["tcp_req_per_s_16"] / base["tcp_req_per_s_16"] if base["tcp_req_per_s_16"] else 0
        print(
            f"| {r['variant']} | {r['rtt_ms_median']} / {r['rtt_ms_p99']} | "
            f"{r['tcp_req_per_s_1']} ({x1:.3f}x) | {r['tcp_req_per_s_16']} ({x16:.3f}x) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
