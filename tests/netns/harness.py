"""Traffic and process helpers for the namespace tests."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from colonet.net import owner
from colonet.net.netns import netns_path, run_in_netns, socket_in_netns
from colonet.net.topology import Topology
from tests.control.raw import raw_request as request

SO_RCVBUFFORCE = 33
PORT = 9000


def colonet_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "colonet", *args]


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass
class FilterProcess:
    """A `colonet filter run` process in a topology's host namespace."""

    topo: Topology
    proc: subprocess.Popen
    socket_path: str
    tmpdir: str
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return next(iter(self.ready["backends"].values()))

    @classmethod
    def start(
        cls, topo: Topology, *extra: str, netdevs: tuple[str, ...] | None = None
    ) -> FilterProcess:
        tmpdir = tempfile.mkdtemp(prefix="cn")
        path = os.path.join(tmpdir, "ctl.sock")
        netdev_args = [a for n in (netdevs or (topo.netdev,)) for a in ("--netdev", n)]
        argv = colonet_argv("filter", "run", *netdev_args, "--socket", path, "--json", *extra)
        proc = subprocess.Popen(
            in_ns(topo.host_ns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            proc.wait()
            raise RuntimeError(f"colonet filter run failed ({proc.returncode}): {err}")
        return cls(topo, proc, path, tmpdir, json.loads(line))

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return request(self.socket_path, {"op": op, **fields})

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def netdev_status(self, index: int = 0) -> dict[str, Any]:
        return self.status()["netdevs"][index]

    def wait_held(self, at_least: int, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.netdev_status()
            held = st["held_packets"] + st["tail_dropped_packets"]
            if held >= at_least or time.monotonic() > deadline:
                return st
            time.sleep(0.02)

    def wait_event(self, name: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The next JSON event line called `name` on the filter's stdout."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.proc.stdout], [], [], left)[0]:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("event") == name:
                return event
        return None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            colonet_argv("filter", *args, "--socket", self.socket_path),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def terminate(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        self._forget_tmpdir()
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        # A killed filter leaves its rules (fail-closed); remove them.
        subprocess.run(
            in_ns(self.topo.host_ns, colonet_argv("cleanup", "--force")),
            capture_output=True,
            timeout=60,
        )
        self._forget_tmpdir()

    def _forget_tmpdir(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def family_addrs(topo: Topology, family: int) -> tuple[str, str]:
    if family == socket.AF_INET6:
        return topo.guest_ip6, topo.client_ip6
    return topo.guest_ip4, topo.client_ip4


def client_receiver(topo: Topology, family: int, port: int = PORT) -> socket.socket:
    _, client_ip = family_addrs(topo, family)
    sock = socket_in_netns(topo.client_ns, family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 * 1024 * 1024)
    sock.bind((client_ip, port))
    sock.setblocking(False)
    return sock


def guest_sender(topo: Topology, family: int) -> socket.socket:
    return socket_in_netns(topo.guest_ns, family, socket.SOCK_DGRAM)


def send_numbered(
    sock: socket.socket,
    dest: tuple[str, int],
    numbers: Iterable[int],
    filt: FilterProcess | None = None,
    chunk: int = 250,
    size: int = 64,
) -> int:
    """Send one datagram per number ("seq:NNNN" padded to `size` bytes).

    With `filt`, waits after each chunk until the filter has seen it, so a
    burst is not lost on its way to the filter (a tap's queue holds ~1000).
    """
    sent = 0
    base = filt.netdev_status()["held_packets"] if filt else 0
    for n in numbers:
        sock.sendto(f"seq:{n:08d}".encode().ljust(size, b"."), dest)
        sent += 1
        if filt and sent % chunk == 0:
            filt.wait_held(base + sent)
    if filt:
        filt.wait_held(base + sent)
    return sent


def receive_numbers(sock: socket.socket, quiet_s: float = 0.5, limit_s: float = 20.0) -> list[int]:
    """Read datagrams until none arrives for `quiet_s`; return their numbers."""
    got: list[int] = []
    sock.settimeout(quiet_s)
    deadline = time.monotonic() + limit_s
    with contextlib.suppress(TimeoutError):
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if data.startswith(b"seq:"):
                got.append(int(data[4:12]))
    sock.setblocking(False)
    return got


def nothing_waiting(sock: socket.socket, wait_s: float = 0.3) -> bool:
    time.sleep(wait_s)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    return False


def host_kernel_state(topo: Topology) -> dict[str, Any]:
    """What colonet may have installed in the host namespace."""

    def read() -> dict[str, Any]:
        with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
            queues = f.read().split("\n")
        # Queue number and owner only: the counters move with traffic.
        return {"queues": [" ".join(q.split()[:2]) for q in queues if q.strip()]}

    def run(*argv: str) -> str:
        return subprocess.run(
            in_ns(topo.host_ns, list(argv)), capture_output=True, text=True
        ).stdout

    state = run_in_netns(topo.host_ns, read)
    state["rules"] = [
        line
        for tool in ("iptables-save", "ip6tables-save")
        for line in run(tool).splitlines()
        if "colonet" in line
    ]
    links = run("ip", "-o", "link")
    state["links"] = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    state["qdiscs"] = run("tc", "qdisc", "show").splitlines()
    state["filters"] = [
        line
        for dev in (topo.netdev, "cli0")
        for line in run("tc", "filter", "show", "dev", dev, "ingress").splitlines()
    ]
    state["locks"] = lock_files(topo)
    return state


def lock_files(topo: Topology) -> list[str]:
    """colonet's netdev lock files (colonet.net.owner) for the host namespace."""
    prefix = f"net{os.stat(netns_path(topo.host_ns)).st_ino}-"
    with contextlib.suppress(FileNotFoundError):
        return sorted(n for n in os.listdir(owner.run_dir()) if n.startswith(prefix))
    return []


def scrape_metrics(topo: Topology, port: int) -> str:
    """A filter's Prometheus text, fetched from inside its namespace."""
    import urllib.request

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    return run_in_netns(topo.host_ns, scrape)


def colonet_footprint(state: dict[str, Any]) -> list[str]:
    """The parts of a host state that only colonet puts there."""
    return [
        *state["rules"],
        *state["queues"],
        *(link for link in state["links"] if link.startswith("cn")),
        *state["filters"],
        *state["locks"],
    ]
