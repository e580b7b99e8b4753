"""4. Round-trip time through an attached filter, and the cost of one commit.

UDP ping-pong from the client ns to an echo process in the guest ns: 4a
without a filter (reference); 4b with a filter committing every 10 ms,
back-to-back requests (each reply waits about one period); 4b' the same with
a random pause before each request (about period/2 + commit cost); 4c one
empty-epoch `checkpoint` + `commit` over the control socket, against one
no-op `status` round trip.
"""

from __future__ import annotations

import contextlib
import random
import socket
import statistics
import struct
import time
from typing import Any

from .colonet_api import Topology
from .common import COMMIT_PERIOD_S, ECHO_PORT, PAYLOAD, Params, log, pct
from .filterctl import CommitLoop, drain, filter_process, udp_socket
from .results import Results, Row
from .workers import Worker


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


def _control_overhead(
    res: Results, topo: Topology, backend: str, fp: Any, cl: socket.socket, p: Params
) -> tuple[list[float], list[float]]:
    """Pure cost of one empty checkpoint+commit, and of a no-op request (µs lists)."""
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
    return ctl, noop


def _rtt_with_filter(
    res: Results, topo: Topology, backend: str, cl: socket.socket, p: Params
) -> dict[str, Any]:
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
        ctl, noop = _control_overhead(res, topo, backend, fp, cl, p)
        d["ckpt_commit"] = summarize_us(ctl)
        d["status_rtt"] = summarize_us(noop)
    return d


def bench_rtt(
    res: Results, topo: Topology, backends: list[str], p: Params
) -> dict[str, dict[str, Any]]:
    """RTT without a filter, then with each backend's; one echo process throughout."""
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
        cl = udp_socket(stack, topo.client_ns)
        cl.connect((topo.guest_ip4, ECHO_PORT))
        cl.settimeout(1.0)
        ping_pong(cl, 50, 5)  # warm-up
        a = ping_pong(cl, p.rtt_n, p.rtt_cap_s)
        out["none"] = summarize_us(a["rtts_us"], a["lost"])
        for backend in backends:
            out[backend] = _rtt_with_filter(res, topo, backend, cl, p)
        with contextlib.suppress(OSError):
            cl.send(b"stop")
        with contextlib.suppress(Exception):
            out["echo"] = echo.result(10)
    return out


def _spread(d: dict[str, Any]) -> str:
    return (
        f"p99 {d['p99_us']:,.0f} µs, max {d['max_us']:,.0f} µs, "
        f"{d['n']:,} round trips, lost {d['lost']}"
    )


def _backend_rows(
    res: Results, link_label: str, backend: str, rtt: dict[str, Any], a: dict[str, Any]
) -> None:
    """Rows 4b, 4b' and 4c for one backend; `a` is the no-filter reference (4a)."""
    period_ms = COMMIT_PERIOD_S * 1e3
    b, b2 = rtt[backend]["closed_loop"], rtt[backend]["random_phase"]
    c, s = rtt[backend]["ckpt_commit"], rtt[backend]["status_rtt"]
    res.add(
        Row(
            "4b",
            link_label,
            backend,
            f"UDP echo RTT, filter attached, checkpoint+commit every {period_ms:g} ms, "
            "back-to-back requests (median)",
            b["median_us"],
            "µs",
            a["median_us"],
            "4a",
            f"{_spread(b)}; the reply is guest output and waits for a commit. Closed "
            "loop: each request leaves right after the commit that released the previous "
            "reply, so its reply waits about one full period",
        )
    )
    res.add(
        Row(
            "4b'",
            link_label,
            backend,
            f"UDP echo RTT, filter attached, checkpoint+commit every {period_ms:g} ms, "
            f"random 0-{period_ms:g} ms pause before each request (median)",
            b2["median_us"],
            "µs",
            a["median_us"],
            "4a",
            f"{_spread(b2)}; random phase: expect about period/2 + commit cost",
        )
    )
    res.add(
        Row(
            "4c",
            link_label,
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


def run_rtt(
    res: Results, topo: Topology, link_label: str, backends: list[str], p: Params
) -> dict[str, dict[str, Any]]:
    """Rows 4a-4c; returns the raw figures."""
    rtt = bench_rtt(res, topo, backends, p)
    a = rtt["none"]
    res.add(
        Row(
            "4a",
            link_label,
            "—",
            "UDP echo RTT client->guest->client, NO filter (median; reference)",
            a["median_us"],
            "µs",
            a["median_us"],
            "4a",
            _spread(a),
        )
    )
    for backend in backends:
        _backend_rows(res, link_label, backend, rtt, a)
    return rtt
