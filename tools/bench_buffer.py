#!/usr/bin/env python3
"""Benchmark colonet's buffer filters in throwaway namespaces.

Run from the repository root, as root:

    .venv/bin/python tools/bench_buffer.py [--link veth|tap|both]
        [--backend nfqueue|tap|both] [--quick] [--rate PPS] [--json]

Everything runs in namespaces built by `colonet.net.topology.Topology` (guest,
host, client); the only traffic is between those namespaces. Per link and
filter backend it measures, in one run, so every ratio compares numbers
taken on the same machine minutes apart:

1. UDP throughput guest -> client (64-byte payloads, a blasting sender in the
   guest ns, a counting receiver in the client ns, both separate processes):
   (a) no filter, (b) filter + checkpoint/commit every 10 ms (batch release:
   one batch verdict on nfqueue, a TX ring on the tap backend), (c) the same
   with --no-batch-release (alias --no-batch-verdict); (d)/(e) the same as
   (a)/(b) for a longer stream than the filter's 50,000-packet limit.
2. Release latency: 10,000 packets held in one epoch; time from sending
   `commit` to the last packet reaching the client socket.
3. Memory per held packet: filter-process RSS and kernel slab deltas.
4. RTT through an attached filter (UDP echo in the guest), and the cost of
   one empty checkpoint+commit over the control socket.

Progress goes to stderr; the result is a Markdown table (or JSON with
--json) on stdout. Every namespace, process and rule it creates is removed
in `finally` blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from colonet.buffer.nfqueue import QUEUE_STATUS  # noqa: E402
from colonet.buffer.nfqueue_wire import parse_queue_status  # noqa: E402
from colonet.net.netns import enter_netns, read_proc_net, run_in_netns  # noqa: E402
from colonet.net.topology import Topology, run_prefix  # noqa: E402

SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS has the same value (struct timespec, 64-bit)
PAYLOAD = 64
TP_PORT, LAT_PORT, MEM_PORT, ECHO_PORT = 9101, 9102, 9103, 9104
COMMIT_PERIOD_S = 0.010
# Packets sent before waiting for the filter to hold them: a tap's queue in
# front of the relay holds ~1000 frames, a veth has no queue to overflow.
SEND_CHUNK = {"veth": 1000, "tap": 250}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def seq_payload(n: int) -> bytes:
    return f"seq:{n:08d}".encode().ljust(PAYLOAD, b".")


# =====================================================================
# Worker processes: sender / receiver / echo, each inside one namespace.
# Started as `python tools/bench_buffer.py --worker KIND NS JSON`.
# =====================================================================


def _udp_drops(port: int) -> dict[str, int]:
    """rx_queue bytes and drops of our socket from this thread's /proc/net/udp."""
    for line in read_proc_net("udp").splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port:
            return {"rx_queue_bytes": int(f[4].split(":")[1], 16), "drops": int(f[-1])}
    return {"rx_queue_bytes": -1, "drops": -1}


def _worker_send(p: dict[str, Any]) -> dict[str, Any]:
    payloads = [seq_payload(i) for i in range(p["count"])]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((p["dest"], p["port"]))
    send = sock.send
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    errors = sent = 0
    cap_ns = int(p["cap_s"] * 1e9)
    rate = int(p.get("rate") or 0)
    t0 = time.monotonic_ns()
    for i, data in enumerate(payloads):
        try:
            send(data)
            sent += 1
        except OSError:
            errors += 1
        if i & 63 == 0 and i:
            now = time.monotonic_ns()
            if now - t0 > cap_ns:
                break
            if rate:  # paced: sleep whenever ahead of the schedule
                ahead = t0 + i * 1_000_000_000 // rate - now
                if ahead > 0:
                    time.sleep(ahead / 1e9)
    t1 = time.monotonic_ns()
    sock.close()
    return {"sent": sent, "send_errors": errors, "t_start": t0, "t_end": t1}


def _worker_recv(p: dict[str, Any]) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, p["rcvbuf"])
    sock.bind((p["ip"], p["port"]))
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    expected = p["expected"]
    seen = bytearray(expected)
    got = dups = out_of_order = foreign = 0
    last_seq = -1
    t_first = t_last = 0
    buf = bytearray(2048)
    print("ready", flush=True)
    deadline = time.monotonic() + p["deadline_s"]
    sock.settimeout(0.2)
    quiet_ns = int(p["quiet_s"] * 1e9)
    while got < expected:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            now = time.monotonic_ns()
            if time.monotonic() > deadline or (t_last and now - t_last > quiet_ns):
                break
            continue
        now = time.monotonic_ns()
        if not t_first:
            t_first = now
        if n < 12 or buf[:4] != b"seq:":
            foreign += 1
            continue
        t_last = now
        seq = int(buf[4:12])
        if 0 <= seq < expected:
            if seen[seq]:
                dups += 1
            seen[seq] = 1
        if seq < last_seq:
            out_of_order += 1
        last_seq = seq
        got += 1
    stats = _udp_drops(p["port"])
    sock.close()
    return {
        "received": got,
        "unique": sum(seen),
        "duplicates": dups,
        "out_of_order": out_of_order,
        "foreign": foreign,
        "t_first": t_first,
        "t_last": t_last,
        "rcvbuf": rcvbuf,
        "socket_drops": stats["drops"],
    }


def _worker_echo(p: dict[str, Any]) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((p["ip"], p["port"]))
    sock.settimeout(0.2)
    print("ready", flush=True)
    deadline = time.monotonic() + p["deadline_s"]
    echoed = 0
    while time.monotonic() < deadline:
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            continue
        if data == b"stop":
            break
        sock.sendto(data, addr)
        echoed += 1
    return {"echoed": echoed}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "send": _worker_send,
    "recv": _worker_recv,
    "echo": _worker_echo,
}


def worker_main(argv: list[str]) -> int:
    kind, ns, params = argv
    enter_netns(ns)  # single-threaded process: the whole process moves
    result = WORKERS[kind](json.loads(params))
    print(json.dumps(result), flush=True)
    return 0


class Worker:
    """Parent side of one worker process."""

    def __init__(self, kind: str, ns: str, **params: Any) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, ns, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"{kind} worker did not start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout_s, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise RuntimeError(f"{self.kind} worker gave no result (killed after {timeout_s} s?)")
        self.proc.wait(timeout=10)
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()


# =====================================================================
# Helpers on the parent side
# =====================================================================


BATCH_FLAG = "--no-batch-release"  # alias --no-batch-verdict (nfqueue's name)


@contextlib.contextmanager
def filter_process(topo: Topology, backend: str, *extra: str) -> Iterator[Any]:
    """`colonet filter run --backend BACKEND` in the host ns; always torn down."""
    from tests.netns.harness import FilterProcess

    fp = FilterProcess.start(topo, "--backend", backend, *extra)
    try:
        got = sorted(set(fp.ready.get("backends", {}).values()))
        if got != [backend]:
            raise RuntimeError(f"asked for the {backend} backend, the filter runs {got}")
        yield fp
    finally:
        with contextlib.suppress(Exception):
            if fp.proc.poll() is None:
                fp.proc.terminate()
                fp.proc.wait(timeout=20)
        try:
            fp.kill()  # closes pipes, removes leftover rules, tmpdir
        finally:
            shutil.rmtree(fp.tmpdir, ignore_errors=True)  # even if kill() was interrupted


class CommitLoop(threading.Thread):
    """checkpoint + commit every `period_s` until stopped (one thread)."""

    def __init__(self, fp: Any, period_s: float = COMMIT_PERIOD_S) -> None:
        super().__init__(name="commit-loop", daemon=True)
        self.fp = fp
        self.period_s = period_s
        self.stop_event = threading.Event()
        self.durations: list[float] = []
        self.released = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        next_t = time.perf_counter()
        try:
            while not self.stop_event.is_set():
                t0 = time.perf_counter()
                self.fp.call("checkpoint")
                self.released += self.fp.call("commit")["released_packets"]
                self.durations.append(time.perf_counter() - t0)
                next_t += self.period_s
                delay = next_t - time.perf_counter()
                if delay < 0:
                    next_t = time.perf_counter()
                    delay = 0
                self.stop_event.wait(delay)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)
        if self.error is not None:
            raise RuntimeError(f"commit loop failed: {self.error}") from self.error


def kernel_drops(topo: Topology, fp: Any) -> dict[str, int]:
    """Packets the kernel dropped on their way into the filter (cumulative).

    nfqueue: the queue's queue_dropped (queue full) and user_dropped (the
    notification did not fit the netlink socket: the kernel drops the packet
    too). tap backend: the capture tap's tx_dropped, as the filter reports it.
    """
    st = fp.netdev_status()
    if fp.backend == "nfqueue":
        text = run_in_netns(topo.host_ns, lambda: read_proc_net(QUEUE_STATUS))
        row = parse_queue_status(text, st["queue"]) or {}
        drops = {k: row.get(k, 0) for k in ("queue_dropped", "user_dropped")}
        drops["missed_notifications"] = int(st.get("missed_notifications") or 0)
        drops["total"] = drops["queue_dropped"] + drops["user_dropped"]
        return drops
    return {"total": int(st.get("kernel_dropped") or 0)}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def link_counters(ns: str, ifname: str) -> dict[str, int]:
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        stats = link.get("stats64") or link.get("IFLA_STATS64") or {}
        return {k: int(stats.get(k, 0) or 0) for k in ("tx_dropped", "rx_dropped")}


def softnet_drops() -> int:
    """Backlog drops summed over CPUs (host-wide, not per namespace)."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def filter_pid(fp: Any) -> int:
    """`ip netns exec` execs, so Popen's pid is the python running colonet: check."""
    pid = fp.proc.pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    if not any(b"python" in a for a in argv[:1]) or b"colonet" not in argv or b"run" not in argv:
        raise RuntimeError(f"pid {pid} is not the colonet filter: {argv!r}")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if children:
        raise RuntimeError(f"filter pid {pid} has children {children}; RSS would be partial")
    return pid


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def wait_held(fp: Any, want: int, timeout_s: float = 10.0, stall_s: float = 1.0) -> dict[str, Any]:
    """Poll status until `want` packets are held (or tail-dropped).

    Gives up after `timeout_s`, or sooner when the count has not moved for
    `stall_s` (a packet lost before the filter, e.g. in a tap's queue).
    """
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    while True:
        st = fp.netdev_status()
        seen = st["held_packets"] + st["tail_dropped_packets"]
        now = time.monotonic()
        if seen >= want or now > deadline or (seen == last and now - last_change > stall_s):
            return st
        if seen != last:
            last, last_change = seen, now
        time.sleep(0.005)


def send_held(tx: socket.socket, dest: tuple[str, int], seqs: range, fp: Any, chunk: int) -> None:
    """Send numbered datagrams; every `chunk`, wait until the filter holds them.

    Waiting keeps a burst from overflowing a tap's queue on its way to the
    filter (the veth path would not need it).
    """
    base = fp.netdev_status()["held_packets"]
    sent = 0
    for n in seqs:
        tx.sendto(seq_payload(n), dest)
        sent += 1
        if sent % chunk == 0:
            wait_held(fp, base + sent)
    st = wait_held(fp, base + sent)
    # More is fine: other guest output (IPv6 MLD, router solicitations) is
    # held too. Fewer means a datagram was lost before the filter.
    if st["held_packets"] < base + sent:
        raise RuntimeError(
            f"filter holds {st['held_packets']} packets, expected {base + sent} "
            f"(tail-dropped {st['tail_dropped_packets']})"
        )


def drain(sock: socket.socket) -> int:
    sock.setblocking(False)
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(4096)
            n += 1
    return n


# =====================================================================
# Results
# =====================================================================


@dataclass
class Row:
    key: str
    link: str
    backend: str
    measurement: str
    value: float | None
    unit: str
    reference: float | None = None
    ref_key: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference


@dataclass
class Results:
    config: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    oddities: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def fmt_num(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit in ("ms", "µs"):
        return (
            f"{v:,.2f} {unit}" if v < 10 else f"{v:,.1f} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
        )
    return f"{v:,.0f} {unit}"


def release_label(batch: bool) -> str:
    return "batch release (default)" if batch else BATCH_FLAG


# =====================================================================
# 1. Throughput
# =====================================================================


def bench_throughput(
    res: Results,
    topo: Topology,
    backend: str | None,
    batch: bool,
    count: int,
    cap_s: float,
    rate: int = 0,
) -> dict[str, Any]:
    label = f"{backend}, {release_label(batch)}" if backend else "no filter"
    log(f"[{topo.link}] throughput, {label}: {count:,} x {PAYLOAD} B UDP")
    extra = () if batch else (BATCH_FLAG,)
    out: dict[str, Any] = {"filter": label}
    with contextlib.ExitStack() as stack:
        fp = stack.enter_context(filter_process(topo, backend, *extra)) if backend else None
        rx = Worker(
            "recv",
            topo.client_ns,
            ip=topo.client_ip4,
            port=TP_PORT,
            expected=count,
            rcvbuf=512 * 1024 * 1024,
            quiet_s=1.5,
            deadline_s=cap_s + 10,
        )
        stack.callback(rx.close)
        tx = Worker(
            "send",
            topo.guest_ns,
            dest=topo.client_ip4,
            port=TP_PORT,
            count=count,
            cap_s=cap_s,
            rate=rate,
        )
        stack.callback(tx.close)
        softnet0 = softnet_drops()
        guest0 = link_counters(topo.guest_ns, "eth0")
        host0 = link_counters(topo.host_ns, topo.netdev)
        loop = None
        if fp is not None:
            kdrop0 = kernel_drops(topo, fp)
            loop = CommitLoop(fp)
            loop.start()
        try:
            tx.go()
            sent = tx.result(cap_s + 30)
            got = rx.result(cap_s + 40)
        finally:
            if loop is not None:
                loop.stop()
        out["sender"], out["receiver"] = sent, got
        out["softnet_drops"] = softnet_drops() - softnet0
        guest1 = link_counters(topo.guest_ns, "eth0")
        host1 = link_counters(topo.host_ns, topo.netdev)
        out["guest_tx_dropped"] = guest1["tx_dropped"] - guest0["tx_dropped"]
        out["netdev_rx_dropped"] = host1["rx_dropped"] - host0["rx_dropped"]
        if fp is not None and loop is not None:
            st = fp.netdev_status()
            out["kernel_drops"] = _delta(kernel_drops(topo, fp), kdrop0)
            out["kernel_dropped"] = out["kernel_drops"]["total"]
            out["tail_dropped"] = st["tail_dropped_packets"]
            out["filter_status"] = st
            out["commits"] = len(loop.durations)
            out["commit_ms_median"] = statistics.median(loop.durations) * 1e3
            out["commit_ms_max"] = max(loop.durations) * 1e3
            out["released_by_commits"] = loop.released
    elapsed = (got["t_last"] - sent["t_start"]) / 1e9 if got["received"] else float("nan")
    out["rx_pps"] = got["received"] / elapsed if got["received"] else 0.0
    send_s = (sent["t_end"] - sent["t_start"]) / 1e9
    out["tx_pps"] = sent["sent"] / send_s if send_s > 0 else 0.0
    lost = sent["sent"] - got["received"]
    out["lost"] = lost
    parts = [
        f"sent {sent['sent']:,} (sender alone {out['tx_pps']:,.0f}/s)",
        f"received {got['received']:,} in {elapsed * 1e3:,.0f} ms",
        f"**lost {lost:,}**" if lost else "lost 0",
        f"rx-socket drops {got['socket_drops']}",
    ]
    if got["duplicates"] or got["out_of_order"]:
        parts.append(f"dup {got['duplicates']}, out-of-order {got['out_of_order']}")
    if backend:
        kd = out["kernel_drops"]
        where = (
            f"nfqueue: queue full {kd['queue_dropped']}, netlink socket full {kd['user_dropped']}"
            if backend == "nfqueue"
            else "capture-tap tx_dropped"
        )
        parts.append(f"kernel drops before the filter {out['kernel_dropped']} ({where})")
        parts.append(f"tail-drops {out['tail_dropped']}")
        parts.append(
            f"{out['commits']} ckpt+commit cycles, each median {out['commit_ms_median']:.1f} ms "
            f"max {out['commit_ms_max']:.0f} ms"
        )
    other = {
        "guest eth0 tx_dropped": out["guest_tx_dropped"],
        "netdev rx_dropped": out["netdev_rx_dropped"],
        "backlog drops (host-wide)": out["softnet_drops"],
    }
    parts += [f"{k} {v}" for k, v in other.items() if v]
    out["note"] = "; ".join(parts)
    if got["socket_drops"]:
        res.oddities.append(
            f"[{topo.link}] throughput {label}: receiver socket dropped "
            f"{got['socket_drops']} (rcvbuf {got['rcvbuf']})"
        )
    if backend and lost:
        nic = out["guest_tx_dropped"]
        res.oddities.append(
            f"[{topo.link}] throughput {label}: {lost:,} of {sent['sent']:,} packets lost: "
            f"{nic:,} in the guest NIC's queue before colonet (guest eth0 tx_dropped), "
            f"{out['kernel_dropped']:,} by the kernel on the way into the filter, "
            f"{out['tail_dropped']:,} tail-dropped by the filter (--max-packets 50,000), "
            f"{lost - nic - out['kernel_dropped'] - out['tail_dropped']:,} unaccounted"
        )
    if backend and out["commit_ms_max"] > 5 * COMMIT_PERIOD_S * 1e3:
        res.oddities.append(
            f"[{topo.link}] throughput {label}: one checkpoint+commit cycle took "
            f"{out['commit_ms_max']:.0f} ms (period {COMMIT_PERIOD_S * 1e3:g} ms) while the "
            "sender was blasting: control requests wait while the daemon reads packets"
        )
    if got["duplicates"] or got["out_of_order"]:
        res.oddities.append(
            f"[{topo.link}] throughput {label}: {got['duplicates']} duplicates, "
            f"{got['out_of_order']} out of order"
        )
    return out


# =====================================================================
# 2. Release latency
# =====================================================================


def measure_release(fp: Any, rx: socket.socket, count: int, last_seq: int) -> dict[str, Any]:
    """Time from sending `commit` to the last of `count` held packets arriving.

    A receiver thread is already blocked in recv when the main thread sends
    `commit`; it reads count-1 datagrams the cheap way and the last one with
    its kernel receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME).
    """
    box: dict[str, Any] = {}
    ready = threading.Event()

    def receive() -> None:
        buf = bytearray(2048)
        got = 0
        rx.settimeout(10.0)
        ready.set()
        try:
            while got < count - 1:
                rx.recv_into(buf)
                got += 1
            data, anc, _, _ = rx.recvmsg(2048, socket.CMSG_SPACE(16))
            box["t_user"] = time.perf_counter()
            got += 1
            box["last_seq"] = int(data[4:12]) if data.startswith(b"seq:") else -1
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    box["t_kernel_ns"] = sec * 1_000_000_000 + nsec
        except TimeoutError:
            box["timeout"] = True
        box["got"] = got

    th = threading.Thread(target=receive, name="release-rx")
    th.start()
    ready.wait()
    time.sleep(0.005)  # let the receiver block in recv
    t0_real = time.time_ns()
    t0 = time.perf_counter()
    reply = fp.call("commit")
    t_reply = time.perf_counter()
    th.join(30)
    out: dict[str, Any] = {
        "released": reply["released_packets"],
        "got": box.get("got", 0),
        "commit_reply_ms": (t_reply - t0) * 1e3,
        "timeout": box.get("timeout", False),
        "last_seq_ok": box.get("last_seq") == last_seq,
    }
    if "t_user" in box:
        out["user_ms"] = (box["t_user"] - t0) * 1e3
    if "t_kernel_ns" in box:
        k_ms = (box["t_kernel_ns"] - t0_real) / 1e6
        # A stamp from before the commit would be the host's rx stamp kept
        # across the hold, not the client's arrival: unusable then.
        out["kernel_ms"] = k_ms if k_ms >= -0.05 else None
        out["kernel_ms_raw"] = k_ms
    return out


def bench_release_latency(
    res: Results, topo: Topology, backend: str, batch: bool, count: int, reps: int
) -> dict[str, Any]:
    label = f"{backend}, {release_label(batch)}"
    log(f"[{topo.link}] release latency, {label}: {reps} x {count:,} held packets")
    extra = () if batch else (BATCH_FLAG,)
    runs: list[dict[str, Any]] = []
    with filter_process(topo, backend, *extra) as fp, contextlib.ExitStack() as stack:
        rx = run_in_netns(topo.client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        stack.callback(rx.close)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 * 1024 * 1024)
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        rx.bind((topo.client_ip4, LAT_PORT))
        tx = run_in_netns(topo.guest_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        stack.callback(tx.close)
        dest = (topo.client_ip4, LAT_PORT)
        for rep in range(reps):
            base = rep * count
            send_held(tx, dest, range(base, base + count), fp, chunk=SEND_CHUNK[topo.link])
            if drain(rx):
                raise RuntimeError("packets reached the client before the commit")
            fp.call("checkpoint")
            run = measure_release(fp, rx, count, base + count - 1)
            runs.append(run)
            if run["got"] != count or not run["last_seq_ok"] or run["released"] != count:
                res.oddities.append(f"[{topo.link}] release latency {label} rep {rep}: {run}")
            extra_pkts = drain(rx)
            if extra_pkts:
                res.oddities.append(f"[{topo.link}] {extra_pkts} extra datagrams after release")
        status = fp.netdev_status()
    user = [r["user_ms"] for r in runs if "user_ms" in r]
    kern = [r["kernel_ms"] for r in runs if r.get("kernel_ms") is not None]
    reply = [r["commit_reply_ms"] for r in runs]
    return {
        "filter": label,
        "runs": runs,
        "filter_status": status,
        "user_ms_median": statistics.median(user) if user else None,
        "user_ms_max": max(user) if user else None,
        "kernel_ms_median": statistics.median(kern) if kern else None,
        "kernel_ms_max": max(kern) if kern else None,
        "kernel_stamps_valid": len(kern),
        "reply_ms_median": statistics.median(reply),
        "reply_ms_max": max(reply),
    }


# =====================================================================
# 3. Memory per held packet
# =====================================================================


def bench_memory(res: Results, topo: Topology, backend: str, counts: list[int]) -> dict[str, Any]:
    log(f"[{topo.link}] memory per held packet, {backend}: {counts}")
    out: dict[str, Any] = {"steps": []}
    limit = max(counts) + 10_000
    with (
        filter_process(topo, backend, "--max-packets", str(limit), "--high-water", "1.0") as fp,
        contextlib.ExitStack() as stack,
    ):
        pid = filter_pid(fp)
        out["pid_check"] = f"pid {pid} = the python running `colonet filter run`, no children"
        rx = run_in_netns(topo.client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        stack.callback(rx.close)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 512 * 1024 * 1024)
        rx.bind((topo.client_ip4, MEM_PORT))
        tx = run_in_netns(topo.guest_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        stack.callback(tx.close)
        dest = (topo.client_ip4, MEM_PORT)
        chunk = SEND_CHUNK[topo.link]
        # Warm up the code paths (one small epoch) so the baseline has them.
        send_held(tx, dest, range(1000), fp, chunk=chunk)
        fp.call("checkpoint")
        fp.call("commit")
        time.sleep(0.2)
        drain(rx)
        rss0, slab0 = rss_kb(pid), meminfo_kb("SUnreclaim")
        out["rss0_kb"], out["sunreclaim0_kb"] = rss0, slab0
        held = 0
        seq = 1000
        for target in sorted(counts):
            send_held(tx, dest, range(seq, seq + target - held), fp, chunk=chunk)
            seq += target - held
            held = target
            time.sleep(0.2)
            rss1, slab1 = rss_kb(pid), meminfo_kb("SUnreclaim")
            st = fp.netdev_status()
            out["steps"].append(
                {
                    "held": st["held_packets"],
                    "held_bytes": st["held_bytes"],
                    "rss_kb": rss1,
                    "sunreclaim_kb": slab1,
                    "rss_per_pkt": (rss1 - rss0) * 1024 / held,
                    "slab_per_pkt": (slab1 - slab0) * 1024 / held,
                }
            )
        fp.call("checkpoint")
        t0 = time.perf_counter()
        released = fp.call("commit")["released_packets"]
        out["commit_ms"] = (time.perf_counter() - t0) * 1e3
        time.sleep(0.3)
        out["released"] = released
        out["rss_after_release_kb"] = rss_kb(pid)
        # The same packets, now charged to the receiving socket: the kernel's
        # own size accounting (skb truesize) of one 64-byte datagram.
        udp = run_in_netns(topo.client_ns, lambda: _udp_drops(MEM_PORT))
        out["rx_queue_bytes"] = udp["rx_queue_bytes"]
        out["rx_socket_drops"] = udp["drops"]
        out["truesize_per_pkt"] = udp["rx_queue_bytes"] / released if released else None
        out["sunreclaim_released_kb"] = meminfo_kb("SUnreclaim")
        out["delivered"] = drain(rx)
        time.sleep(0.2)
        out["sunreclaim_drained_kb"] = meminfo_kb("SUnreclaim")
    if out["delivered"] != max(counts):
        res.oddities.append(
            f"[{topo.link}] memory {backend}: held {max(counts):,} test datagrams, the commit "
            f"released {released:,} packets, the client read {out['delivered']:,}"
        )
    # released > read: other guest output (e.g. IPv6 MLD / router solicitations)
    # was held in the same epoch; it does not reach the UDP socket.
    out["other_guest_output"] = released - max(counts)
    return out


# =====================================================================
# 4. RTT and per-commit overhead
# =====================================================================


def ping_pong(
    sock: socket.socket, n: int, cap_s: float, think_s: float = 0.0, seed: int = 1
) -> dict[str, Any]:
    """Closed-loop UDP ping-pong; with `think_s`, sleep uniform [0, think_s) first.

    The sleep puts each request at a random phase of the commit period
    instead of right after the commit that released the previous reply.
    """
    rng = random.Random(seed)
    rtts: list[float] = []
    lost = 0
    deadline = time.monotonic() + cap_s
    for i in range(n):
        if time.monotonic() > deadline:
            break
        if think_s:
            time.sleep(rng.uniform(0.0, think_s))
        msg = struct.pack("!Q", i).ljust(PAYLOAD, b"p")
        t0 = time.perf_counter()
        sock.send(msg)
        while True:
            try:
                data = sock.recv(2048)
            except TimeoutError:
                lost += 1
                break
            if data[:8] == msg[:8]:
                rtts.append(time.perf_counter() - t0)
                break
    return {"rtts_us": [r * 1e6 for r in rtts], "lost": lost}


def summarize_us(values: list[float], lost: int = 0) -> dict[str, float]:
    return {
        "n": len(values),
        "median_us": statistics.median(values) if values else float("nan"),
        "p99_us": pct(values, 0.99),
        "max_us": max(values) if values else float("nan"),
        "lost": lost,
    }


def bench_rtt(
    res: Results, topo: Topology, backends: list[str], p: Params
) -> dict[str, dict[str, Any]]:
    log(f"[{topo.link}] RTT: UDP round trips client -> guest echo, and control overhead")
    out: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        echo = Worker(
            "echo",
            topo.guest_ns,
            ip=topo.guest_ip4,
            port=ECHO_PORT,
            deadline_s=(2 + 3 * len(backends)) * p.rtt_cap_s + 60,
        )
        stack.callback(echo.close)
        cl = run_in_netns(topo.client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        stack.callback(cl.close)
        cl.connect((topo.guest_ip4, ECHO_PORT))
        cl.settimeout(1.0)
        ping_pong(cl, 50, 5)  # warm-up
        a = ping_pong(cl, p.rtt_n, p.rtt_cap_s)
        out["none"] = summarize_us(a["rtts_us"], a["lost"])
        for backend in backends:
            log(f"[{topo.link}] RTT with the {backend} filter")
            d: dict[str, Any] = {}
            with filter_process(topo, backend) as fp:
                loop = CommitLoop(fp)
                loop.start()
                try:
                    ping_pong(cl, 20, 5)
                    b = ping_pong(cl, p.rtt_filtered_n, p.rtt_cap_s)
                    b2 = ping_pong(cl, p.rtt_phase_n, p.rtt_cap_s, think_s=COMMIT_PERIOD_S)
                finally:
                    loop.stop()
                d["closed_loop"] = summarize_us(b["rtts_us"], b["lost"])
                d["random_phase"] = summarize_us(b2["rtts_us"], b2["lost"])
                d["commits"] = len(loop.durations)
                # Pure cost of one empty checkpoint+commit, and of a no-op request.
                time.sleep(0.05)
                drain(cl)
                cl.settimeout(1.0)
                ctl: list[float] = []
                noop: list[float] = []
                deadline = time.monotonic() + p.rtt_cap_s
                for _ in range(p.rtt_n):
                    if time.monotonic() > deadline:
                        break
                    t0 = time.perf_counter()
                    fp.call("status")
                    t1 = time.perf_counter()
                    fp.call("checkpoint")
                    r = fp.call("commit")
                    t2 = time.perf_counter()
                    if r["released_packets"]:
                        res.oddities.append(f"[{topo.link}] {backend}: empty epoch released {r}")
                    noop.append((t1 - t0) * 1e6)
                    ctl.append((t2 - t1) * 1e6)
                d["ckpt_commit"] = summarize_us(ctl)
                d["status_rtt"] = summarize_us(noop)
            out[backend] = d
        with contextlib.suppress(OSError):
            cl.send(b"stop")
        with contextlib.suppress(Exception):
            out["echo"] = echo.result(10)
    return out


# =====================================================================
# Driver
# =====================================================================


@dataclass
class Params:
    tp_count: int
    tp_long_count: int
    tp_cap_s: float
    lat_count: int
    lat_reps: int
    mem_counts: list[int]
    rtt_n: int
    rtt_filtered_n: int
    rtt_phase_n: int
    rtt_cap_s: float
    rate: int = 0  # sender pacing in packets/s; 0 = as fast as it can


DEFAULT = Params(50_000, 200_000, 20.0, 10_000, 5, [10_000, 50_000], 2_000, 1_000, 300, 30.0)
QUICK = Params(50_000, 0, 10.0, 10_000, 3, [10_000], 500, 200, 100, 10.0)


def run_link(res: Results, link: str, backends: list[str], p: Params) -> None:
    topo = Topology(run_prefix(), link=link)  # type: ignore[arg-type]
    raw: dict[str, Any] = {}
    res.raw[link] = raw
    try:
        log(f"building {link} topology ({topo.prefix}*)")
        topo.build()
        L = f"{link} ({topo.mode})"
        add = res.add

        # 1. throughput
        ref = bench_throughput(res, topo, None, True, p.tp_count, p.tp_cap_s, p.rate)
        raw["throughput_no_filter"] = ref
        ref_pps = ref["rx_pps"]
        add(
            Row(
                "1a",
                L,
                "—",
                f"UDP throughput guest->client, {p.tp_count:,}-packet burst, NO filter: the "
                "kernel's unbuffered path (reference)",
                ref_pps,
                "pkt/s",
                ref_pps,
                "1a",
                ref["note"],
            )
        )
        for backend in backends:
            r: dict[str, Any] = raw.setdefault(backend, {})
            for key, batch in (("1b", True), ("1c", False)):
                tp = bench_throughput(res, topo, backend, batch, p.tp_count, p.tp_cap_s, p.rate)
                r[f"throughput_{'batch' if batch else 'nobatch'}"] = tp
                add(
                    Row(
                        key,
                        L,
                        backend,
                        f"UDP throughput, {p.tp_count:,}-packet burst, filter attached, "
                        f"checkpoint+commit every {COMMIT_PERIOD_S * 1e3:g} ms, "
                        f"{release_label(batch)}",
                        tp["rx_pps"],
                        "pkt/s",
                        ref_pps,
                        "1a",
                        tp["note"],
                    )
                )

        # 1d/1e. sustained overload: more packets than --max-packets, sent
        # faster than the filter takes them.
        if p.tp_long_count:
            long_ref = bench_throughput(res, topo, None, True, p.tp_long_count, p.tp_cap_s, p.rate)
            raw["throughput_long_no_filter"] = long_ref
            add(
                Row(
                    "1d",
                    L,
                    "—",
                    f"UDP throughput, sustained {p.tp_long_count:,}-packet stream, NO filter "
                    "(reference)",
                    long_ref["rx_pps"],
                    "pkt/s",
                    long_ref["rx_pps"],
                    "1d",
                    long_ref["note"],
                )
            )
            for backend in backends:
                tp = bench_throughput(res, topo, backend, True, p.tp_long_count, p.tp_cap_s, p.rate)
                raw[backend]["throughput_long_batch"] = tp
                add(
                    Row(
                        "1e",
                        L,
                        backend,
                        f"UDP throughput, sustained {p.tp_long_count:,}-packet stream, filter "
                        f"attached, checkpoint+commit every {COMMIT_PERIOD_S * 1e3:g} ms, "
                        "batch release",
                        tp["rx_pps"],
                        "pkt/s",
                        long_ref["rx_pps"],
                        "1d",
                        tp["note"],
                    )
                )

        for backend in backends:
            r = raw[backend]
            # 2. release latency
            lat = {
                batch: bench_release_latency(res, topo, backend, batch, p.lat_count, p.lat_reps)
                for batch in (True, False)
            }
            r["release_latency"] = {"batch": lat[True], "nobatch": lat[False]}
            for key, batch in (("2a", True), ("2b", False)):
                d = lat[batch]
                kern = (
                    f"kernel rx timestamp of the last packet (same start): median "
                    f"{d['kernel_ms_median']:.2f} ms, max {d['kernel_ms_max']:.2f} ms"
                    if d["kernel_ms_median"] is not None
                    else "kernel rx timestamp unusable (stamp kept from before the hold)"
                )
                add(
                    Row(
                        key,
                        L,
                        backend,
                        f"Release latency: {p.lat_count:,} pkts held in one epoch, "
                        f"{release_label(batch)}; `commit` sent -> last packet read by the "
                        f"client (median of {p.lat_reps})",
                        d["user_ms_median"],
                        "ms",
                        None if batch else lat[True]["user_ms_median"],
                        "" if batch else "2a",
                        f"max {d['user_ms_max']:.2f} ms; includes the control request round "
                        f"trip and Python reading {p.lat_count:,} datagrams; {kern}; `commit` "
                        f"reply after median {d['reply_ms_median']:.2f} ms (max "
                        f"{d['reply_ms_max']:.2f}); issue goal <= 20 ms with batch release",
                    )
                )

            # 3. memory
            mem = bench_memory(res, topo, backend, p.mem_counts)
            r["memory"] = mem
            steps = mem["steps"]
            for i, step in enumerate(steps):
                add(
                    Row(
                        f"3{chr(97 + i)}",
                        L,
                        backend,
                        f"Filter process RSS per held packet ({step['held']:,} held, one epoch)",
                        step["rss_per_pkt"],
                        "B/pkt",
                        note=f"VmRSS {mem['rss0_kb']:,} -> {step['rss_kb']:,} kB; "
                        f"{mem['pid_check']}; after release {mem['rss_after_release_kb']:,} kB "
                        "(Python keeps freed memory)",
                    )
                )
            for i, step in enumerate(steps):
                add(
                    Row(
                        f"3{chr(97 + len(steps) + i)}",
                        L,
                        backend,
                        f"Kernel memory per held packet, APPROXIMATE ({step['held']:,} held)",
                        step["slab_per_pkt"],
                        "B/pkt",
                        note="machine-wide /proc/meminfo SUnreclaim "
                        f"{mem['sunreclaim0_kb']:,} -> {step['sunreclaim_kb']:,} kB (noisy: "
                        "anything else running counts too); cross-check: skb truesize of the "
                        "same packets queued at the client socket after release = "
                        f"{(mem['truesize_per_pkt'] or 0):,.0f} B/pkt",
                    )
                )

        # 4. RTT
        rtt = bench_rtt(res, topo, backends, p)
        raw["rtt"] = rtt
        a = rtt["none"]
        period_ms = COMMIT_PERIOD_S * 1e3

        def spread(d: dict[str, Any]) -> str:
            return (
                f"p99 {d['p99_us']:,.0f} µs, max {d['max_us']:,.0f} µs, "
                f"{d['n']:,} round trips, lost {d['lost']}"
            )

        add(
            Row(
                "4a",
                L,
                "—",
                "UDP echo RTT client->guest->client, NO filter (median; reference)",
                a["median_us"],
                "µs",
                a["median_us"],
                "4a",
                spread(a),
            )
        )
        for backend in backends:
            b, b2 = rtt[backend]["closed_loop"], rtt[backend]["random_phase"]
            c, s = rtt[backend]["ckpt_commit"], rtt[backend]["status_rtt"]
            add(
                Row(
                    "4b",
                    L,
                    backend,
                    f"UDP echo RTT, filter attached, checkpoint+commit every {period_ms:g} ms, "
                    "back-to-back requests (median)",
                    b["median_us"],
                    "µs",
                    a["median_us"],
                    "4a",
                    f"{spread(b)}; the reply is guest output and waits for a commit. Closed "
                    "loop: each request leaves right after the commit that released the previous "
                    "reply, so its reply waits about one full period",
                )
            )
            add(
                Row(
                    "4b'",
                    L,
                    backend,
                    f"UDP echo RTT, filter attached, checkpoint+commit every {period_ms:g} ms, "
                    f"random 0-{period_ms:g} ms pause before each request (median)",
                    b2["median_us"],
                    "µs",
                    a["median_us"],
                    "4a",
                    f"{spread(b2)}; random phase: expect about period/2 + commit cost",
                )
            )
            add(
                Row(
                    "4c",
                    L,
                    backend,
                    "Per-commit overhead: empty-epoch `checkpoint` + `commit`, two control "
                    "round trips (median)",
                    c["median_us"],
                    "µs",
                    s["median_us"],
                    "status",
                    f"p99 {c['p99_us']:,.0f} µs, {c['n']:,} samples; reference = one no-op "
                    f"`status` round trip (median {s['median_us']:,.0f} µs, p99 "
                    f"{s['p99_us']:,.0f} µs); every request opens a new unix-socket connection",
                )
            )
    finally:
        log(f"tearing down {link} topology")
        topo.destroy()


def machine_info() -> dict[str, Any]:
    import colonet

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "colonet": getattr(colonet, "__version__", "?"),
        "git": commit or "?",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def render(res: Results) -> str:
    m = res.config["machine"]
    p = res.config["params"]
    links, backends = res.config["links"], res.config["backends"]
    long = (
        f" (1d-1e: {p['tp_long_count']:,}, more than the filter's 50,000-packet limit)"
        if p["tp_long_count"]
        else ""
    )
    how = f"paced at {p['rate']:,}/s" if p["rate"] else "sent as fast as possible"
    lines = [
        "### colonet buffer benchmark (`tools/bench_buffer.py`)",
        "",
        f"Machine: {m['nproc']} CPU ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
        f"colonet {m['colonet']} (git {m['git']}); load average at start "
        f"{' '.join(m['loadavg'])}; {m['date']}; run took {res.config.get('runtime_s')} s "
        f"({res.config['mode']} mode).",
        "",
        f"Namespaces built by `Topology` ({', '.join(links)}): guest -> host netdev "
        f"(buffered) -> client; filter backends: {', '.join(backends)}; checkpoint+commit "
        f"period {res.config['commit_period_s'] * 1e3:g} ms where a row says so. All traffic "
        f"is IPv4 UDP with {PAYLOAD}-byte payloads.",
        "",
        f"- 1x throughput: {p['tp_count']:,} datagrams{long} {how} by one Python sender "
        "process in the guest ns, counted by one receiver process in the client ns "
        "(SO_RCVBUFFORCE 512 MiB); rate = received / (first send -> last arrival); every "
        "loss is stated with where it happened.",
        f"- 2x release latency: {p['lat_count']:,} datagrams held in one epoch (status shows "
        "them all held), `checkpoint`, then the clock (perf_counter, same process) runs from "
        "sending `commit` until a receiver thread has read the last datagram; the control "
        "round trip is included. The kernel's rx timestamp of the last datagram is given as "
        f"a cross-check. {p['lat_reps']} repetitions.",
        "- 3x memory: VmRSS of the filter process's pid before/after holding; kernel side "
        "from machine-wide slab counters (approximate).",
        "- 4x RTT: UDP ping-pong client -> echo process in the guest ns -> client; per-commit "
        "overhead = empty `checkpoint` + `commit` over the control socket.",
        "- ratio = value / reference, both measured in this run. Wall-clock timings on a "
        "shared machine.",
        "",
        "| # | link | backend | measurement | value | reference | ratio | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {b: i for i, b in enumerate(["—", *backends])}
    rows = sorted(
        res.rows,
        key=lambda r: (links.index(r.link.split()[0]), r.key, order.get(r.backend, 9)),
    )
    for r in rows:
        ref = f"{fmt_num(r.reference, r.unit)} ({r.ref_key})" if r.reference else "—"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "—"
        note = r.note.replace("|", "/")
        lines.append(
            f"| {r.key} | {r.link} | {r.backend} | {r.measurement} | "
            f"{fmt_num(r.value, r.unit)} | {ref} | {ratio} | {note} |"
        )
    if res.oddities:
        lines += ["", "Oddities observed during the run:"]
        lines += [f"- {o}" for o in res.oddities]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--link",
        choices=("veth", "tap", "both"),
        default="veth",
        help="topology: routed veth (default), bridged tap with relay, or both",
    )
    ap.add_argument(
        "--backend",
        choices=("nfqueue", "tap", "both"),
        default="both",
        help="filter backend(s) to measure (default: both)",
    )
    ap.add_argument(
        "--rate",
        type=int,
        default=0,
        metavar="PPS",
        help="pace the throughput sender (default 0: blast as fast as it can)",
    )
    ap.add_argument("--quick", action="store_true", help="smaller counts (~30 s per link)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_buffer: needs root (network namespaces, iptables, tc)", file=sys.stderr)
        return 2
    p = dataclasses.replace(QUICK if args.quick else DEFAULT, rate=max(0, args.rate))
    links = ["veth", "tap"] if args.link == "both" else [args.link]
    backends = ["nfqueue", "tap"] if args.backend == "both" else [args.backend]
    res = Results(
        config={
            "machine": machine_info(),
            "params": p.__dict__,
            "links": links,
            "backends": backends,
            "mode": "quick" if args.quick else "default",
            "commit_period_s": COMMIT_PERIOD_S,
        }
    )
    t0 = time.monotonic()
    try:
        for link in links:
            run_link(res, link, backends, p)
    except KeyboardInterrupt:
        log("interrupted; everything built so far was torn down")
        return 130
    res.config["runtime_s"] = round(time.monotonic() - t0, 1)
    log(f"done in {res.config['runtime_s']} s")
    if args.json:
        body = {
            "config": res.config,
            "rows": [{**r.__dict__, "ratio": r.ratio} for r in res.rows],
            "oddities": res.oddities,
            "raw": res.raw,
        }
        print(json.dumps(body, indent=2, default=str))
    else:
        print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
