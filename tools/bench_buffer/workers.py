"""Worker processes: a UDP sender, a counting receiver and an echo server.

Each runs in one namespace as its own process, so the traffic it makes or
counts does not compete with the parent's threads for the GIL. The parent
starts one with `Worker(kind, ns, **params)`; the child is the entry script
run again as `python tools/bench_buffer.py --worker KIND NS JSON`, which
lands in `worker_main`. The child prints "ready", (the sender) waits for
"go" on stdin, and prints its result as one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .colonet_api import enter_netns
from .common import SO_RCVBUFFORCE, seq_payload
from .counters import udp_socket_stats

# The script the workers are started from: the same entry point as the
# parent, whose `main` hands `--worker ...` to `worker_main`.
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / "bench_buffer.py"


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
    stats = udp_socket_stats(p["port"])
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
    """Child side: `KIND NS JSON` -> run that worker inside namespace NS."""
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
            [sys.executable, str(ENTRY_SCRIPT), "--worker", kind, ns, json.dumps(params)],
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
