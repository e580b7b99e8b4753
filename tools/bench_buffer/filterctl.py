"""Parent-side control of a filter under test and of the traffic it holds.

Starts `colonet filter run` in the host namespace (and always tears it
down), runs the checkpoint+commit loop the throughput and RTT rows use,
fills the filter with numbered datagrams until it demonstrably holds them,
and drains what the client socket received.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from .colonet_api import Topology, run_in_netns, start_filter_process
from .common import COMMIT_PERIOD_S, seq_payload


@contextlib.contextmanager
def filter_process(topo: Topology, backend: str, *extra: str) -> Iterator[Any]:
    """`colonet filter run --backend BACKEND` in the host ns; always torn down."""
    fp = start_filter_process(topo, "--backend", backend, *extra)
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


def udp_socket(stack: contextlib.ExitStack, ns: str) -> socket.socket:
    """A UDP socket created inside namespace `ns`, closed when `stack` unwinds."""
    sock = run_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    stack.callback(sock.close)
    return sock


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
    """Read whatever is queued on `sock` without blocking; the number of datagrams."""
    sock.setblocking(False)
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(4096)
            n += 1
    return n
