"""`colonet demo`: a guest serving a client through a buffered tap.

Builds guest, host and client namespaces (the guest's NIC is a tap held by
a relay process, as a VM's would be), runs `colonet filter run` on the tap,
and checkpoints from a timer: pause the guest, seal the epoch, resume,
commit. The guest keeps a counter and answers each client request with its
next value; the client checks that the answers only ever go up. Everything
is removed on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from colonet.control.client import request
from colonet.errors import ColonetError
from colonet.net.netns import socket_in_netns
from colonet.net.privilege import require_net_admin
from colonet.net.topology import Topology, run_prefix

SERVICE_PORT = 7070


@dataclass
class ClientLog:
    sent: int = 0
    answered: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    last_value: int = 0
    rollbacks: int = 0


class CounterService(threading.Thread):
    """The guest's service: each request gets the next counter value."""

    def __init__(self, topo: Topology) -> None:
        super().__init__(daemon=True, name="guest-service")
        self.sock = socket_in_netns(topo.guest_ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((topo.guest_ip4, SERVICE_PORT))
        self.sock.settimeout(0.2)
        self.counter = 0
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.counter += 1
            self.sock.sendto(data[:8] + self.counter.to_bytes(8, "big"), peer)


class Client(threading.Thread):
    """Sends a request every `interval_s`; checks answers never go back."""

    def __init__(self, topo: Topology, interval_s: float) -> None:
        super().__init__(daemon=True, name="client")
        self.sock = socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.01)
        self.dest = (topo.guest_ip4, SERVICE_PORT)
        self.interval_s = interval_s
        self.log = ClientLog()
        self.stopping = False

    def run(self) -> None:
        next_send = time.perf_counter()
        while not self.stopping:
            now = time.perf_counter()
            if now >= next_send:
                self.sock.sendto(int(now * 1e9).to_bytes(8, "big"), self.dest)
                self.log.sent += 1
                next_send += self.interval_s
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            sent_ns = int.from_bytes(data[:8], "big")
            value = int.from_bytes(data[8:16], "big")
            self.log.answered += 1
            self.log.rtts_ms.append((time.perf_counter() * 1e9 - sent_ns) / 1e6)
            if value < self.log.last_value:
                self.log.rollbacks += 1
            self.log.last_value = max(value, self.log.last_value)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_demo(args: argparse.Namespace) -> int:
    require_net_admin("colonet demo")
    out = sys.stderr if args.json else sys.stdout
    topo = Topology(run_prefix(), link=args.link, static_neighbours=False)
    tmpdir = tempfile.mkdtemp(prefix="colonet-demo-")
    sock_path = os.path.join(tmpdir, "ctl.sock")
    filt: subprocess.Popen | None = None
    threads: list[Any] = []
    summary: dict[str, Any] = {}
    # SIGTERM tears down like Ctrl-C does.
    old_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        topo.build()
        print(
            f"demo: namespaces {topo.guest_ns} (guest) {topo.host_ns} (host) "
            f"{topo.client_ns} (client); guest NIC is a {args.link} -> {topo.netdev}",
            file=out,
        )
        filt = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                topo.host_ns,
                sys.executable,
                "-m",
                "colonet",
                "filter",
                "run",
                "--netdev",
                topo.netdev,
                "--socket",
                sock_path,
                "--json",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert filt.stdout is not None
        if not filt.stdout.readline():
            raise ColonetError("the filter process did not start")
        service, client = CounterService(topo), Client(topo, interval_s=0.005)
        threads = [service, client]
        for t in threads:
            t.start()
        summary = _checkpoint_loop(topo, sock_path, args, client, out)
        summary["guest_counter"] = service.counter
    except KeyboardInterrupt:
        print("demo: interrupted, tearing down", file=out)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        for t in threads:
            t.stopping = True
        for t in threads:
            t.join(timeout=2)
            t.sock.close()
        if filt is not None:
            filt.terminate()
            try:
                filt.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                filt.kill()
                filt.communicate()
        topo.destroy()
        shutil.rmtree(tmpdir, ignore_errors=True)
    ok = summary["rollbacks"] == 0 and summary["epochs"] > 0 and summary["answered"] > 0
    summary["verdict"] = "pass" if ok else "fail"
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0 if ok else 1


def _checkpoint_loop(
    topo: Topology, sock_path: str, args: argparse.Namespace, client: Client, out: Any
) -> dict[str, Any]:
    period_s = args.period_ms / 1000
    end = time.monotonic() + args.duration
    pauses_ms: list[float] = []
    epochs = held_total = released_total = 0
    print(f"{'epoch':>6} {'held':>6} {'released':>9} {'pause ms':>9} {'answered':>9}", file=out)
    next_tick = time.monotonic() + period_s
    while time.monotonic() < end:
        time.sleep(max(0.0, next_tick - time.monotonic()))
        next_tick += period_s
        # Pause the guest, seal its output, resume it (speculatively): its
        # new packets go to the next epoch while this one waits for commit.
        t0 = time.perf_counter()
        topo.pause_guest()
        epoch = request(sock_path, {"op": "checkpoint"})["epoch"]
        topo.resume_guest()
        pauses_ms.append((time.perf_counter() - t0) * 1000)
        status = request(sock_path, {"op": "status"})["netdevs"][0]
        held = next(e["held_packets"] for e in status["epochs"] if e["epoch"] == epoch)
        released = request(sock_path, {"op": "commit", "epoch": epoch})["released_packets"]
        epochs += 1
        held_total += held
        released_total += released
        print(
            f"{epoch:>6} {held:>6} {released:>9} {pauses_ms[-1]:>9.2f} {client.log.answered:>9}",
            file=out,
        )
    final = request(sock_path, {"op": "status"})["netdevs"][0]
    time.sleep(0.05)
    log = client.log
    return {
        "epochs": epochs,
        "period_ms": args.period_ms,
        "packets_held": held_total,
        "packets_released": released_total,
        "tail_dropped": final["tail_dropped_packets"],
        "held_at_exit": final["held_packets"],
        "requests_sent": log.sent,
        "answered": log.answered,
        "rtt_ms_median": round(statistics.median(log.rtts_ms), 2) if log.rtts_ms else None,
        "rtt_ms_p99": round(_percentile(log.rtts_ms, 0.99), 2),
        "pause_ms_median": round(statistics.median(pauses_ms), 2) if pauses_ms else None,
        "pause_ms_p99": round(_percentile(pauses_ms, 0.99), 2),
        "rollbacks": log.rollbacks,
        "last_counter_seen": log.last_value,
    }


def _print_summary(s: dict[str, Any]) -> None:
    rows = [
        ("epochs committed", s["epochs"]),
        ("checkpoint period (ms)", s["period_ms"]),
        ("packets held / released", f"{s['packets_held']} / {s['packets_released']}"),
        ("tail-dropped", s["tail_dropped"]),
        ("held at exit (never released)", s["held_at_exit"]),
        ("requests sent / answered", f"{s['requests_sent']} / {s['answered']}"),
        ("reply RTT ms median / p99", f"{s['rtt_ms_median']} / {s['rtt_ms_p99']}"),
        ("guest pause ms median / p99", f"{s['pause_ms_median']} / {s['pause_ms_p99']}"),
        ("counter: guest / last seen", f"{s['guest_counter']} / {s['last_counter_seen']}"),
        ("rollbacks seen by client", s["rollbacks"]),
        ("verdict", s["verdict"].upper()),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nsummary")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
