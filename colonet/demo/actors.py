"""The demo's actors: the client that checks every reply, the colonet
processes whose JSON events it follows, and the sampler of held bytes."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from colonet.control.client import EngineClient
from colonet.demo.consistency import Reply
from colonet.errors import ColonetError
from colonet.guest.counter_store import REPLY, REQUEST
from colonet.net.netns import socket_in_netns
from colonet.net.topology import Topology

SERVICE_PORT = 7070


class Client(threading.Thread):
    """Sends an INC every `interval_s` and records every reply."""

    def __init__(self, topo: Topology, interval_s: float) -> None:
        super().__init__(daemon=True, name="client")
        self.sock = socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.002)
        self.dest = (topo.guest_ip4, SERVICE_PORT)
        self.interval_s = interval_s
        self.sent = 0
        self.replies: list[Reply] = []
        self.rtts_ms: list[tuple[float, float]] = []  # (received at, round trip ms)
        self._sent_at: dict[int, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        next_send = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_send:
                self.sent += 1
                self._sent_at[self.sent] = now
                # A full send queue (the guest's address not yet resolved)
                # loses this request, as the network would.
                with contextlib.suppress(OSError):
                    self.sock.sendto(REQUEST.pack(b"INC ", self.sent), self.dest)
                next_send = max(next_send + self.interval_s, now)
            try:
                request_id, value = REPLY.unpack(self.sock.recv(64))
            except (TimeoutError, ValueError, OSError):
                continue
            at = time.monotonic()
            self.replies.append(Reply(at, request_id, value))
            sent = self._sent_at.pop(request_id, None)
            if sent is not None:
                self.rtts_ms.append((at, (at - sent) * 1000))

    def close(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=2)
        self.sock.close()


@dataclass
class EventProcess:
    """A colonet process in a namespace whose JSON events are collected."""

    popen: subprocess.Popen
    source: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    news: queue.Queue = field(default_factory=queue.Queue)

    @classmethod
    def spawn(cls, ns: str | None, *args: str) -> EventProcess:
        argv = ["ip", "netns", "exec", ns] if ns else []
        argv += [sys.executable, "-m", "colonet", *args, "--json"]
        proc = cls(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True), source=args[0])
        threading.Thread(target=proc._read, daemon=True).start()
        return proc

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if line.startswith("{"):
                # Stamped on arrival: the run log's time axis (ms accuracy).
                event = json.loads(line) | {"t": time.time(), "source": self.source}
                self.events.append(event)
                self.news.put(event)
        self.news.put(None)

    def wait_for(self, kind: str, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        for event in self.events:
            if event.get("event") == kind:
                return event
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.news.get(timeout=left)
            except queue.Empty:
                return None
            if event is None:
                return None
            if event.get("event") == kind:
                return event
        return None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class HeldSampler(threading.Thread):
    """Samples what the primary's filters hold, every 100 ms, for the timeline."""

    def __init__(self, primary_sock: str) -> None:
        super().__init__(daemon=True, name="held-sampler")
        self.primary_sock = primary_sock
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(0.1):
            held = filters_held(self.primary_sock)
            if held is not None:
                event = {"t": time.time(), "source": "filters", "event": "filters"}
                self.events.append(event | {"netdevs": held})

    def stop(self) -> None:
        self._stop.set()


def filters_held(primary_sock: str) -> list[dict[str, Any]] | None:
    """Per netdev: what the primary's filters hold now (None: no answer)."""
    try:
        filters = EngineClient(primary_sock).status().filters
    except ColonetError:
        return None
    if filters is None:
        return None
    return [
        {
            "netdev": n.netdev,
            "held_packets": n.queue.held_packets,
            "held_bytes": n.queue.held_bytes,
            "tail_dropped_packets": n.queue.tail_dropped_packets,
        }
        for n in filters.netdevs
    ]
