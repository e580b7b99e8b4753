#!/usr/bin/env python3
"""Dirty-page tracking of a QEMU guest's RAM: PAGEMAP_SCAN vs the brute-force fallback.

Run from the repository root (root, or a user who may use userfaultfd):

    .venv/bin/python tools/bench_qemu_dirty.py [--ram-mib 128 1024] [--epochs 30]
        [--load-rps 200] [--json]

For each RAM size the tiny guest (tools/build_guest.sh) boots under QEMU
(TCG) with its RAM in a shared /dev/shm file and the uffd_wp_shim helper
preloaded (colonet/guest/qemu_tracked.py), and idles once its counter
service is up; with --load-rps, a client sends that many INC requests per
second to the counter service through a user-mode NIC (QEMU's slirp,
forwarded from a local UDP port). Then, for each epoch of --epoch-ms: pause (QMP stop), scan
the written pages (PAGEMAP_SCAN, re-armed), find the changed pages by
comparing RAM with the last copy (BruteForceDiffer, the fallback), save
the device state without RAM (x-ignore-shared), resume. Reported: pages
written per epoch, scan ms, brute-force ms, pages the brute-force found
that the scan missed (must be 0), device-state bytes and ms, stop and
cont ms. Progress on stderr, a Markdown table (or --json) on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from colonet.guest.counter_store import REPLY, REQUEST  # noqa: E402
from colonet.guest.dirty_scan import BruteForceDiffer  # noqa: E402
from colonet.guest.qemu import build_guest  # noqa: E402
from colonet.guest.qemu_tracked import TrackedQemu, TrackedQemuError  # noqa: E402
from colonet.guest.qmp_io import wait_for_console  # noqa: E402
from colonet.guest.uffd_shim import build_shim  # noqa: E402

READY = "counter_service: listening"


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class Load:
    """INC requests at a fixed rate to the guest's counter service; counts answers."""

    def __init__(self, port: int, rps: int) -> None:
        self.port, self.rps = port, rps
        self.sent = self.answered = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        period, next_at = 1.0 / self.rps, time.monotonic()
        while not self._stop.is_set():
            self.sent += 1
            self.sock.sendto(REQUEST.pack(b"INC ", self.sent), ("127.0.0.1", self.port))
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _receive(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                REPLY.unpack(self.sock.recv(64))
                self.answered += 1

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.sock.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "max": round(ordered[-1], 3),
    }


def measure(ram_mib: int, args: argparse.Namespace, kernel: str, initrd: str, shim: str) -> dict:
    tmp = tempfile.mkdtemp(prefix="colonet-bench-dirty-")
    serial = os.path.join(tmp, "serial.log")
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "q35,accel=tcg",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        f"file:{serial}",
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        "console=ttyS0 quiet colonet.ip=10.0.2.15/24",  # QEMU's user-mode network
    ]
    port = _free_udp_port()
    if args.load_rps:
        argv += [
            "-netdev",
            f"user,id=n0,hostfwd=udp:127.0.0.1:{port}-:7070",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:c0:10:01",
        ]
    vm = TrackedQemu(argv, ram_mib, shim)
    load: Load | None = None
    try:
        vm.start()
        vm.cmd(
            "migrate-set-capabilities",
            capabilities=[{"capability": "x-ignore-shared", "state": True}],
        )
        vm.cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 30})
        wait_for_console(serial, READY, 300, TrackedQemuError)
        if args.load_rps:
            load = Load(port, args.load_rps)
        time.sleep(args.settle_s)
        print(f"{ram_mib} MiB: booted, measuring", file=sys.stderr, flush=True)
        vm.pause()
        vm.collect_dirty()
        differ = BruteForceDiffer(vm.ram_view(), vm.page_size)
        vm.resume()
        rows: dict[str, list[float]] = {
            k: [] for k in ("pages", "scan_ms", "brute_ms", "missed", "dev_bytes", "dev_ms")
        }
        rows.update(stop_ms=[], cont_ms=[])
        for _ in range(args.epochs):
            time.sleep(args.epoch_ms / 1000)
            started = time.perf_counter()
            vm.pause()
            rows["stop_ms"].append(_ms(started))
            started = time.perf_counter()
            written = vm.collect_dirty()
            rows["scan_ms"].append(_ms(started))
            started = time.perf_counter()
            changed = differ.collect()
            rows["brute_ms"].append(_ms(started))
            rows["missed"].append(len(set(changed) - set(written)))
            rows["pages"].append(len(written))
            started = time.perf_counter()
            rows["dev_bytes"].append(len(vm.save_devices()))
            rows["dev_ms"].append(_ms(started))
            started = time.perf_counter()
            vm.resume()
            rows["cont_ms"].append(_ms(started))
        differ.close()
        result: dict[str, Any] = {
            "ram_mib": ram_mib,
            "epoch_ms": args.epoch_ms,
            "load_rps": args.load_rps,
        }
        if load is not None:
            result["requests_sent"], result["requests_answered"] = load.sent, load.answered
        result.update({k: _summary(v) for k, v in rows.items()})
        result["missed_total"] = int(sum(rows["missed"]))
        print(f"{ram_mib} MiB: {result}", file=sys.stderr, flush=True)
        return result
    finally:
        if load is not None:
            load.close()
        vm.close()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ram-mib", type=int, nargs="+", default=[128])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--epoch-ms", type=int, default=100)
    parser.add_argument("--settle-s", type=float, default=2.0, help="wait after boot")
    parser.add_argument(
        "--load-rps", type=int, default=0, help="INC requests/s to the guest (0: idle)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kernel, initrd = build_guest()
    shim = build_shim()
    results = [measure(mib, args, kernel, initrd, shim) for mib in args.ram_mib]
    if args.json:
        print(json.dumps(results))
        return 0
    what = f"{args.load_rps} INC requests/s" if args.load_rps else "idle"
    print(
        f"Tiny guest (TCG), {what}, {args.epochs} epochs of {args.epoch_ms} ms; "
        "median / p90 / max per epoch."
    )
    print()
    print(
        "| RAM | pages written | PAGEMAP_SCAN ms | brute-force ms | missed by scan "
        "| device state KB (ms) | stop ms | cont ms |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def three(s: dict[str, float], digits: int = 2) -> str:
        return " / ".join(f"{s[k]:.{digits}f}" for k in ("median", "p90", "max"))

    for r in results:
        print(
            f"| {r['ram_mib']} MiB | {three(r['pages'], 0)} | {three(r['scan_ms'])} "
            f"| {three(r['brute_ms'], 1)} | {r['missed_total']} "
            f"| {r['dev_bytes']['median'] / 1024:.0f} ({r['dev_ms']['median']:.1f}) "
            f"| {three(r['stop_ms'])} | {three(r['cont_ms'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
