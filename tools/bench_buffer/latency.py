"""2. Release latency: from sending `commit` to the last released packet arriving.

`count` numbered datagrams are held in one epoch (the filter's status shows
them all held), then `checkpoint`; the clock (perf_counter, one process)
runs from sending `commit` until a receiver thread in the client ns has read
the last datagram, so the control round trip is included. The kernel's
receive timestamp of that datagram is a cross-check. Rows 2a (batch
release) and 2b (--no-batch-release, 2a as the reference).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import struct
import threading
import time
from typing import Any

from .colonet_api import Topology
from .common import (
    BATCH_FLAG,
    LAT_PORT,
    SEND_CHUNK,
    SO_RCVBUFFORCE,
    SO_TIMESTAMPNS,
    Params,
    log,
    release_label,
)
from .filterctl import drain, filter_process, send_held, udp_socket
from .results import Results, Row


def _receive(rx: socket.socket, count: int, box: dict[str, Any], ready: threading.Event) -> None:
    """Receiver thread: read count-1 datagrams, then the last with its kernel timestamp."""
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


def measure_release(fp: Any, rx: socket.socket, count: int, last_seq: int) -> dict[str, Any]:
    """Time from sending `commit` to the last of `count` held packets arriving.

    A receiver thread is already blocked in recv when the main thread sends
    `commit`; it reads count-1 datagrams the cheap way and the last one with
    its kernel receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME).
    """
    box: dict[str, Any] = {}
    ready = threading.Event()
    th = threading.Thread(target=_receive, args=(rx, count, box, ready), name="release-rx")
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


def _release_runs(
    res: Results,
    topo: Topology,
    fp: Any,
    rx: socket.socket,
    tx: socket.socket,
    label: str,
    count: int,
    reps: int,
) -> list[dict[str, Any]]:
    """`reps` times: fill the filter with `count` datagrams, checkpoint, time the release."""
    runs: list[dict[str, Any]] = []
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
    return runs


def bench_release_latency(
    res: Results, topo: Topology, backend: str, batch: bool, count: int, reps: int
) -> dict[str, Any]:
    """Release latency through `backend`'s filter, `reps` repetitions summarised."""
    label = f"{backend}, {release_label(batch)}"
    log(f"[{topo.link}] release latency, {label}: {reps} x {count:,} held packets")
    extra = () if batch else (BATCH_FLAG,)
    with filter_process(topo, backend, *extra) as fp, contextlib.ExitStack() as stack:
        rx = udp_socket(stack, topo.client_ns)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 * 1024 * 1024)
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        rx.bind((topo.client_ip4, LAT_PORT))
        tx = udp_socket(stack, topo.guest_ns)
        runs = _release_runs(res, topo, fp, rx, tx, label, count, reps)
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


def run_release_latency(
    res: Results, topo: Topology, link_label: str, backend: str, p: Params
) -> dict[str, Any]:
    """Rows 2a/2b for one backend; returns the raw figures, batch and nobatch."""
    lat = {
        batch: bench_release_latency(res, topo, backend, batch, p.lat_count, p.lat_reps)
        for batch in (True, False)
    }
    for key, batch in (("2a", True), ("2b", False)):
        d = lat[batch]
        kern = (
            f"kernel rx timestamp of the last packet (same start): median "
            f"{d['kernel_ms_median']:.2f} ms, max {d['kernel_ms_max']:.2f} ms"
            if d["kernel_ms_median"] is not None
            else "kernel rx timestamp unusable (stamp kept from before the hold)"
        )
        res.add(
            Row(
                key,
                link_label,
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
    return {"batch": lat[True], "nobatch": lat[False]}
