"""`colonet demo`: a protected guest, a secondary, and a client that checks.

Builds four namespaces: guest, host (the primary), secondary, client. The
guest's NIC reaches the host through a tap held by a relay process, as a
VM's would; `colonet secondary` listens in its namespace; `colonet primary`
runs the embedded guest (its counter service bound in the guest namespace),
buffers the tap and checkpoints to the secondary every period. A client
sends requests continuously and checks that the counter it gets back never
goes backwards. One line per checkpoint, a summary at the end; everything is
removed on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
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

from colonet.errors import ColonetError
from colonet.guest.counter_store import REPLY, REQUEST
from colonet.net.netns import socket_in_netns
from colonet.net.privilege import require_net_admin
from colonet.net.topology import Topology, run_prefix

SERVICE_PORT = 7070
REPLICATION_PORT = 7400


@dataclass
class ClientLog:
    sent: int = 0
    answered: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    last_value: int = 0
    rollbacks: int = 0


class Client(threading.Thread):
    """Sends an INC every `interval_s`; checks answers never go back."""

    def __init__(self, topo: Topology, interval_s: float) -> None:
        super().__init__(daemon=True, name="client")
        self.sock = socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.01)
        self.dest = (topo.guest_ip4, SERVICE_PORT)
        self.interval_s = interval_s
        self.log = ClientLog()
        self.sent_at: dict[int, float] = {}
        self.stopping = False

    def run(self) -> None:
        next_send = time.perf_counter()
        while not self.stopping:
            now = time.perf_counter()
            if now >= next_send:
                self.log.sent += 1
                self.sent_at[self.log.sent] = now
                self.sock.sendto(REQUEST.pack(b"INC ", self.log.sent), self.dest)
                next_send += self.interval_s
            try:
                request_id, value = REPLY.unpack(self.sock.recv(64))
            except (TimeoutError, ValueError, OSError):
                continue
            self.log.answered += 1
            sent = self.sent_at.pop(request_id, None)
            if sent is not None:
                self.log.rtts_ms.append((time.perf_counter() - sent) * 1000)
            if value < self.log.last_value:
                self.log.rollbacks += 1
            self.log.last_value = max(value, self.log.last_value)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _spawn(ns: str, *args: str) -> subprocess.Popen:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "colonet", *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def run_demo(args: argparse.Namespace) -> int:
    require_net_admin("colonet demo")
    out = sys.stderr if args.json else sys.stdout
    topo = Topology(run_prefix(), link=args.link, static_neighbours=False, with_secondary=True)
    tmpdir = tempfile.mkdtemp(prefix="colonet-demo-")
    procs: list[subprocess.Popen] = []
    client: Client | None = None
    checkpoints: list[dict[str, Any]] = []
    secondary_events: list[dict[str, Any]] = []
    old_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        topo.build()
        print(
            f"demo: guest {topo.guest_ns}, primary host {topo.host_ns}, secondary "
            f"{topo.secondary_ns}, client {topo.client_ns}; guest NIC: {args.link} "
            f"-> {topo.netdev}",
            file=out,
        )
        secondary = _spawn(
            topo.secondary_ns,
            "secondary",
            "--listen",
            f"{topo.secondary_ip4}:{REPLICATION_PORT}",
            "--json",
        )
        procs.append(secondary)
        assert secondary.stdout is not None
        if not secondary.stdout.readline():
            raise ColonetError("the secondary did not start")
        primary = _spawn(
            topo.host_ns,
            "primary",
            "--peer",
            f"{topo.secondary_ip4}:{REPLICATION_PORT}",
            "--netdev",
            topo.netdev,
            "--guest-netns",
            topo.guest_ns,
            "--guest-ip",
            topo.guest_ip4,
            "--guest-port",
            str(SERVICE_PORT),
            "--checkpoint-delay-ms",
            str(args.period_ms),
            "--duration",
            str(args.duration),
            "--json",
        )
        procs.append(primary)
        client = Client(topo, interval_s=0.005)
        print(
            f"{'epoch':>6} {'dirty pages':>12} {'bytes':>10} {'pause ms':>9} "
            f"{'transfer ms':>12} {'released pkts':>14} {'answered':>9}",
            file=out,
        )
        started = False
        assert primary.stdout is not None
        for line in primary.stdout:
            event = json.loads(line)
            if event.get("event") != "checkpoint":
                print(f"primary: {event}", file=out)
                continue
            if not started:  # the full sync is done: the guest serves from now on
                client.start()
                started = True
            checkpoints.append(event)
            print(
                f"{event['epoch']:>6} {event['dirty_pages']:>12} {event['body_bytes']:>10} "
                f"{event['pause_ms']:>9.2f} {event['transfer_ms']:>12.2f} "
                f"{event.get('released_packets') or 0:>14} {client.log.answered:>9}",
                file=out,
            )
        primary.wait(timeout=30)
        sec_out, _ = secondary.communicate(timeout=30)
        secondary_events = [json.loads(x) for x in sec_out.splitlines() if x.startswith("{")]
    except KeyboardInterrupt:
        print("demo: interrupted, tearing down", file=out)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if client is not None:
            client.stopping = True
            if client.is_alive():
                client.join(timeout=2)
            client.sock.close()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
        topo.destroy()
        shutil.rmtree(tmpdir, ignore_errors=True)
    summary = _summary(checkpoints, secondary_events, client.log if client else ClientLog(), args)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0 if summary["verdict"] == "pass" else 1


def _summary(checkpoints, secondary_events, log: ClientLog, args) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    applied = [e["epoch"] for e in secondary_events if e.get("event") == "applied"]
    pauses = [c["pause_ms"] for c in checkpoints]
    transfers = [c["transfer_ms"] for c in checkpoints]
    ok = (
        log.rollbacks == 0
        and len(checkpoints) > 1
        and log.answered > 0
        and applied == [c["epoch"] for c in checkpoints]
    )
    return {
        "checkpoints": len(checkpoints),
        "applied_on_secondary": len(applied),
        "period_ms": args.period_ms,
        "packets_released": sum(c.get("released_packets") or 0 for c in checkpoints),
        "bytes_sent": sum(c["body_bytes"] for c in checkpoints),
        "pause_ms_median": round(statistics.median(pauses), 2) if pauses else None,
        "pause_ms_p99": _pct(pauses, 0.99),
        "transfer_ms_median": round(statistics.median(transfers), 2) if transfers else None,
        "requests_sent": log.sent,
        "answered": log.answered,
        "rtt_ms_median": round(statistics.median(log.rtts_ms), 2) if log.rtts_ms else None,
        "rtt_ms_p99": _pct(log.rtts_ms, 0.99),
        "rollbacks": log.rollbacks,
        "last_counter_seen": log.last_value,
        "verdict": "pass" if ok else "fail",
    }


def _print_summary(s: dict[str, Any]) -> None:
    rows = [
        (
            "checkpoints (primary / applied on secondary)",
            f"{s['checkpoints']} / {s['applied_on_secondary']}",
        ),
        ("checkpoint period (ms)", s["period_ms"]),
        ("guest pause ms median / p99", f"{s['pause_ms_median']} / {s['pause_ms_p99']}"),
        ("transfer ms median", s["transfer_ms_median"]),
        ("bytes sent to the secondary", s["bytes_sent"]),
        ("packets released by the filter", s["packets_released"]),
        ("requests sent / answered", f"{s['requests_sent']} / {s['answered']}"),
        ("reply RTT ms median / p99", f"{s['rtt_ms_median']} / {s['rtt_ms_p99']}"),
        ("rollbacks seen by the client", s["rollbacks"]),
        ("verdict", s["verdict"].upper()),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nsummary")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
