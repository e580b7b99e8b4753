"""3. Memory per held packet: filter-process RSS and kernel slab deltas.

The filter (one process, checked to have no children) holds growing numbers
of 64-byte datagrams in one epoch; VmRSS of its pid and the machine-wide
SUnreclaim slab counter are read before and at each step. Kernel memory is
approximate (anything else running counts too); the cross-check is the skb
truesize the same packets are charged at the client socket after release.
Rows 3a.. (RSS per step), then one kernel row per step.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from .colonet_api import Topology, run_in_netns
from .common import MEM_PORT, SEND_CHUNK, SO_RCVBUFFORCE, Params, log
from .counters import filter_pid, meminfo_kb, rss_kb, udp_socket_stats
from .filterctl import drain, filter_process, send_held, udp_socket
from .results import Results, Row


def _hold_steps(
    out: dict[str, Any],
    fp: Any,
    tx: socket.socket,
    dest: tuple[str, int],
    chunk: int,
    counts: list[int],
    pid: int,
) -> None:
    """Grow the held epoch to each of `counts`; after each, read RSS and slab."""
    rss0, slab0 = out["rss0_kb"], out["sunreclaim0_kb"]
    held = 0
    seq = 1000  # 0-999 went into the warm-up epoch
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


def _release(out: dict[str, Any], topo: Topology, fp: Any, rx: socket.socket, pid: int) -> int:
    """Commit the held epoch and account for where the packets went; the released count."""
    fp.call("checkpoint")
    t0 = time.perf_counter()
    released = fp.call("commit")["released_packets"]
    out["commit_ms"] = (time.perf_counter() - t0) * 1e3
    time.sleep(0.3)
    out["released"] = released
    out["rss_after_release_kb"] = rss_kb(pid)
    # The same packets, now charged to the receiving socket: the kernel's
    # own size accounting (skb truesize) of one 64-byte datagram.
    udp = run_in_netns(topo.client_ns, lambda: udp_socket_stats(MEM_PORT))
    out["rx_queue_bytes"] = udp["rx_queue_bytes"]
    out["rx_socket_drops"] = udp["drops"]
    out["truesize_per_pkt"] = udp["rx_queue_bytes"] / released if released else None
    out["sunreclaim_released_kb"] = meminfo_kb("SUnreclaim")
    out["delivered"] = drain(rx)
    time.sleep(0.2)
    out["sunreclaim_drained_kb"] = meminfo_kb("SUnreclaim")
    return released


def bench_memory(res: Results, topo: Topology, backend: str, counts: list[int]) -> dict[str, Any]:
    """Memory held per packet by `backend`'s filter, one step per entry of `counts`."""
    log(f"[{topo.link}] memory per held packet, {backend}: {counts}")
    out: dict[str, Any] = {"steps": []}
    limit = max(counts) + 10_000
    with (
        filter_process(topo, backend, "--max-packets", str(limit), "--high-water", "1.0") as fp,
        contextlib.ExitStack() as stack,
    ):
        pid = filter_pid(fp)
        out["pid_check"] = f"pid {pid} = the python running `colonet filter run`, no children"
        rx = udp_socket(stack, topo.client_ns)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 512 * 1024 * 1024)
        rx.bind((topo.client_ip4, MEM_PORT))
        tx = udp_socket(stack, topo.guest_ns)
        dest = (topo.client_ip4, MEM_PORT)
        chunk = SEND_CHUNK[topo.link]
        # Warm up the code paths (one small epoch) so the baseline has them.
        send_held(tx, dest, range(1000), fp, chunk=chunk)
        fp.call("checkpoint")
        fp.call("commit")
        time.sleep(0.2)
        drain(rx)
        out["rss0_kb"], out["sunreclaim0_kb"] = rss_kb(pid), meminfo_kb("SUnreclaim")
        _hold_steps(out, fp, tx, dest, chunk, counts, pid)
        released = _release(out, topo, fp, rx, pid)
    if out["delivered"] != max(counts):
        res.oddities.append(
            f"[{topo.link}] memory {backend}: held {max(counts):,} test datagrams, the commit "
            f"released {released:,} packets, the client read {out['delivered']:,}"
        )
    # released > read: other guest output (e.g. IPv6 MLD / router solicitations)
    # was held in the same epoch; it does not reach the UDP socket.
    out["other_guest_output"] = released - max(counts)
    return out


def run_memory(
    res: Results, topo: Topology, link_label: str, backend: str, p: Params
) -> dict[str, Any]:
    """Rows 3a.. for one backend: RSS per step, then kernel memory per step."""
    mem = bench_memory(res, topo, backend, p.mem_counts)
    steps = mem["steps"]
    for i, step in enumerate(steps):
        res.add(
            Row(
                f"3{chr(97 + i)}",
                link_label,
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
        res.add(
            Row(
                f"3{chr(97 + len(steps) + i)}",
                link_label,
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
    return mem
