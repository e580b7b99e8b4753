#!/usr/bin/env python3
"""Benchmark colonet's checkpoint engine: pause, transfer and rate over loopback TCP.

Run from the repository root (no root needed):

    .venv/bin/python tools/bench_checkpoint.py [--ram-mib MIB] [--quick] [--json]

Real engine checkpoints over loopback TCP for 0.1, 1, 10 and 100 % of pages
dirty, next to a plain local copy of the same pages timed in the same run,
then checkpoints per second sustained; the output's header says what is
timed. Progress goes to stderr; a Markdown table (or --json) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from colonet.buffer.hooks import CountingHooks  # noqa: E402
from colonet.checkpoint.pages import DeviceSection, encode_checkpoint  # noqa: E402
from colonet.checkpoint.primary import EngineConfig, PrimaryEngine  # noqa: E402
from colonet.checkpoint.protocol import PrimaryProtocol, SecondaryProtocol  # noqa: E402
from colonet.checkpoint.secondary import SecondaryEngine, SecondaryExit  # noqa: E402
from colonet.checkpoint.transport import Channel, ChannelConfig  # noqa: E402
from colonet.guest.ram import GuestRam  # noqa: E402

DIRTY_PERCENTS = (0.1, 1.0, 10.0, 100.0)
SUSTAIN_DIRTY_PERCENT = 0.1
# colonet's transport, but with a 10 s idle heartbeat timeout: between two
# measured checkpoints this one thread dirties up to 1 GiB and times a plain
# copy of it, seconds in which no heartbeat leaves (a real engine's loop
# keeps sending them).
LINK = ChannelConfig(heartbeat_timeout_ms=10_000, checkpoint_timeout_ms=30_000)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchGuest:
    """The Guest interface over a bare GuestRam: no service, no workload threads."""

    def __init__(self, pages: int) -> None:
        self.ram = GuestRam(pages)
        self.page_size, self.ram_pages = self.ram.page_size, pages
        self.lock = threading.Lock()  # a writer holds it per step, as a vCPU would
        self._paused = False

    def pause(self) -> None:
        if not self._paused:
            self.lock.acquire()
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.lock.release()

    def ram_view(self) -> memoryview:
        return self.ram.view()

    def collect_dirty(self) -> list[int]:
        return self.ram.collect_dirty()

    def save_devices(self) -> list[DeviceSection]:
        return [DeviceSection("service", 1, b'{"served": 0}')]

    def load_devices(self, sections: Sequence[DeviceSection]) -> None: ...

    def netdevs(self) -> list[str]:
        return []

    def activate(self) -> None: ...

    def shutdown(self) -> None:
        self.resume()
        self.ram.close()


def fill_ram(ram: GuestRam, zero_percent: float, rng: random.Random) -> int:
    """Random contents in (100 - zero_percent) % of pages; returns the zero pages."""
    zeros = 0
    for page in range(ram.pages):
        if rng.random() * 100 < zero_percent:
            zeros += 1
        else:
            ram.write(page * ram.page_size, rng.randbytes(ram.page_size))
    return zeros


def dirty(ram: GuestRam, pages: Sequence[int], rng: random.Random, lock: Any = None) -> None:
    """8 non-zero random bytes at a random offset in each page (under `lock`, per page)."""
    ps = ram.page_size
    for page in pages:
        data = (rng.getrandbits(64) | 1).to_bytes(8, "little")
        with lock or contextlib.nullcontext():
            ram.write(page * ps + rng.randrange(ps - 8), data)


def copy_pages_ms(ram: GuestRam, pages: Sequence[int]) -> float:
    """Copy `pages` into a preallocated, already faulted-in bytearray."""
    ps = ram.page_size
    buf = bytearray(len(pages) * ps)
    buf[::ps] = b"\x01" * len(pages)  # fault the buffer in before the clock starts
    dst = memoryview(buf)

    def copy(src: memoryview) -> None:
        for i, page in enumerate(pages):
            dst[i * ps : (i + 1) * ps] = src[page * ps : (page + 1) * ps]

    return timed_ms(ram, copy)


def timed_ms(ram: GuestRam, make: Callable[[memoryview], object]) -> float:
    """make(view of all RAM); what it makes is dropped at once."""
    with ram.view() as view:
        started = time.perf_counter()
        made = make(view)
        elapsed = time.perf_counter() - started
    del made
    return elapsed * 1e3


@dataclass
class Row:
    measurement: str
    value: float
    unit: str  # "ms", "B" or "/s"
    reference: float | None = None
    ref_label: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.reference if self.reference else None


def fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value:,.0f} B ({value / 2**20:,.2f} MiB)"
    if unit == "ms":
        return f"{value:,.3f} ms" if value < 10 else f"{value:,.1f} ms"
    return f"{value:,.0f} {unit}"


def spread(values: Sequence[float], note: str = "") -> str:
    """'median of n (min, max)' or '1 sample', then `note`."""
    head = f"median of {len(values)} (min {min(values):,.3f}, max {max(values):,.3f} ms)"
    head = "1 sample" if len(values) == 1 else head
    return f"{head}; {note}" if note else head


@dataclass
class Bench:
    engine: PrimaryEngine
    guest: BenchGuest
    rng: random.Random
    reps: int
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    oddities: list[str] = field(default_factory=list)

    def full_sync(self, zeros: int, whole_ms: list[float]) -> None:
        self.engine.connect("bench")
        st = self.engine.history[0]
        self.raw["full_sync"] = {**vars(st), "ram_digest": None, "whole_copy_ms": whole_ms}
        label = f"initial full sync ({self.guest.ram_pages:,} pages, {zeros:,} zero)"
        ref = (statistics.median(whole_ms), "bytes(ram), all RAM")
        note = f"1 sample; reference: {spread(whole_ms)}, the first run is the slowest"
        self.rows += [
            Row(f"Pause, {label}", st.pause_ms, "ms", *ref, note),
            Row(f"Transfer, {label}", st.transfer_ms, "ms", note="1 sample"),
            Row(f"Body bytes, {label}", st.body_bytes, "B", self.guest.ram.size, "RAM size"),
        ]

    def ratio(self, percent: float) -> None:
        ram, pages, ps = self.guest.ram, self.guest.ram_pages, self.guest.page_size
        k = max(1, round(pages * percent / 100))
        samples: list[dict[str, float]] = []
        for rep in range(self.reps):
            chosen = list(range(pages)) if k >= pages else sorted(self.rng.sample(range(pages), k))
            dirty(ram, chosen, self.rng)
            s = {"copy_ms": copy_pages_ms(ram, chosen)}
            if k >= pages:
                s["whole_copy_ms"] = timed_ms(ram, bytes)
            devices = self.guest.save_devices()
            encode = partial(encode_checkpoint, 1, dirty_pages=chosen, sections=devices)
            s["encode_ms"] = timed_ms(ram, encode)
            st = self.engine.checkpoint()
            if st.dirty_pages != k:
                self.oddities.append(f"{percent:g} % rep {rep}: {st.dirty_pages} dirty, not {k}")
            s |= {"pause_ms": st.pause_ms, "transfer_ms": st.transfer_ms, "total_ms": st.total_ms}
            s |= {"both_ms": st.pause_ms + st.transfer_ms, "body_bytes": st.body_bytes}
            samples.append(s)
            log(f"{percent:g} % dirty: pause {st.pause_ms:.1f}, transfer {st.transfer_ms:.1f} ms")
        self.raw[f"dirty_{percent:g}"] = samples
        col = {key: [s[key] for s in samples] for key in samples[0]}
        med = {key: statistics.median(values) for key, values in col.items()}
        label = f"{percent:g} % dirty ({k:,} pages, {k * ps / 2**20:,.2f} MiB)"
        copy = (med["copy_ms"], f"copy of the {k:,} pages")
        for name, key, ref, note in (
            ("Pause", "pause_ms", copy, f"encode_checkpoint alone {med['encode_ms']:,.2f} ms"),
            ("Transfer", "transfer_ms", (None, ""), "body sent -> RECEIVED"),
            ("Pause + transfer", "both_ms", copy, ""),
            ("Total", "total_ms", copy, "REQUEST -> LOADED"),
        ):
            self.rows.append(Row(f"{name}, {label}", med[key], "ms", *ref, spread(col[key], note)))
        self.rows.append(Row(f"Body bytes, {label}", med["body_bytes"], "B", k * ps, "dirty bytes"))
        if "whole_copy_ms" in med:
            note = spread(col["whole_copy_ms"], "the reference allocates and faults in a buffer")
            ref = (med["whole_copy_ms"], "bytes(ram), all RAM")
            self.rows.append(Row(f"Pause, {label}", med["pause_ms"], "ms", *ref, note))

    def sustained(self, seconds: float) -> None:
        engine, pages = self.engine, self.guest.ram_pages
        k = max(1, round(pages * SUSTAIN_DIRTY_PERCENT / 100))
        first = len(engine.history)
        go, stop, rng = threading.Event(), threading.Event(), random.Random(self.rng.random())

        def dirtier() -> None:
            while not stop.is_set():
                if go.wait(0.05):
                    go.clear()
                    dirty(self.guest.ram, rng.sample(range(pages), k), rng, self.guest.lock)

        thread = threading.Thread(target=dirtier, name="bench-dirtier", daemon=True)
        timer = threading.Timer(seconds, engine.stop)
        engine.on_checkpoint = lambda _stats: go.set()
        started = time.perf_counter()
        try:
            thread.start()
            timer.start()
            engine.run()
        finally:
            elapsed = time.perf_counter() - started
            timer.cancel()
            stop.set()
            thread.join(timeout=10)
            engine.on_checkpoint = None
        hist = engine.history[first:]
        pauses, transfers = [s.pause_ms for s in hist], [s.transfer_ms for s in hist]
        totals = [s.total_ms for s in hist]
        self.raw["sustained"] = {"seconds": elapsed, "pause_ms": pauses, "transfer_ms": transfers}
        log(f"sustained: {len(hist)} checkpoints in {elapsed:.1f} s")
        each = statistics.median(s.dirty_pages for s in hist)
        note = (
            f"{len(hist):,} checkpoints in {elapsed:.1f} s, checkpoint_delay_ms=1; a thread "
            f"dirties {k:,} pages ({SUSTAIN_DIRTY_PERCENT:g} %) after each checkpoint; median "
            f"{each:,.0f} dirty pages per checkpoint"
        )
        self.rows.append(
            Row("Checkpoints per second, sustained", len(hist) / elapsed, "/s", note=note)
        )
        for name, values in (("Pause", pauses), ("Transfer", transfers), ("Total", totals)):
            p99 = statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]
            note = f"median of {len(values):,}; p99 {p99:,.3f} ms, max {max(values):,.3f} ms"
            self.rows.append(Row(f"{name}, sustained", statistics.median(values), "ms", note=note))


def run(config: dict[str, Any]) -> Bench:
    pages = config["ram_mib"] * 2**20 // 4096
    rng = random.Random(config["seed"])
    guest = BenchGuest(pages)
    socks: list[socket.socket] = []
    secondary: SecondaryEngine | None = None
    sthread: threading.Thread | None = None
    exits: list[SecondaryExit] = []
    try:
        log(f"filling {config['ram_mib']} MiB of guest RAM, {config['zero_percent']:g} % zero")
        zeros = fill_ram(guest.ram, config["zero_percent"], rng)
        whole_ms = [timed_ms(guest.ram, bytes) for _ in range(3)]  # the 1st is cold memory
        with socket.create_server(("127.0.0.1", 0)) as listener:
            socks.append(socket.create_connection(listener.getsockname()))
            socks.append(listener.accept()[0])
        secondary = SecondaryEngine(Channel(socks[1], SecondaryProtocol(), LINK))
        sthread = threading.Thread(target=lambda: exits.append(secondary.serve()), daemon=True)
        sthread.start()
        channel = Channel(socks[0], PrimaryProtocol(), LINK)
        config_ = EngineConfig(checkpoint_delay_ms=1, reply_timeout_ms=600_000)
        engine = PrimaryEngine(guest, channel, CountingHooks(), config_)
        bench = Bench(engine, guest, rng, config["reps"])
        log("initial full sync")
        bench.full_sync(zeros, whole_ms)
        for percent in DIRTY_PERCENTS:
            bench.ratio(percent)
        bench.sustained(config["sustain_s"])
        engine.checkpoint()  # carries the dirtier's last pages: both copies must match now
        assert secondary.cache is not None
        with guest.ram.view() as view:
            same = hashlib.sha256(view).digest() == secondary.cache.digest()
        config["ram_identical"] = same
        if not same:
            bench.oddities.append("secondary RAM differs from primary RAM at the end")
        engine.shutdown("benchmark done")
        sthread.join(timeout=30)
    finally:
        if sthread is not None and sthread.is_alive():
            for sock in socks:  # unblocks the secondary's recv
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            sthread.join(timeout=10)
        for sock in socks:
            sock.close()
        if secondary and secondary.cache and sthread and not sthread.is_alive():
            secondary.cache.close()
        try:
            guest.shutdown()
        except BufferError:  # the engine's RAM view of an interrupted checkpoint is alive
            log("guest RAM still exported by an interrupted checkpoint; freed at exit")
    config["secondary_exit"] = exits[0].reason if exits else "none"
    return bench


def machine_info() -> dict[str, Any]:
    import colonet

    cpu = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
    git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu[0].split(":", 1)[1].strip() if cpu else "?",
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "colonet": getattr(colonet, "__version__", "?"),
        "git": subprocess.run(git, capture_output=True, text=True).stdout.strip() or "?",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def render(bench: Bench, c: dict[str, Any]) -> str:
    m = c["machine"]
    lines = [
        "### colonet checkpoint benchmark (`tools/bench_checkpoint.py`)",
        "",
        f"Machine: {m['nproc']} CPU ({m['cpu']}), {m['memory_gib']} GiB RAM, kernel {m['kernel']}, "
        f"Python {m['python']}, colonet {m['colonet']} (git {m['git']}); load average at start "
        f"{' '.join(m['loadavg'])}; {m['date']}; run took {c['runtime_s']} s ({c['mode']} mode), "
        f"peak RSS {c['peak_rss_mib']:,} MiB.",
        "",
        f"Guest: {c['ram_mib']:,} MiB, filled once with {c['zero_percent']:g} % zero pages, "
        "random pages elsewhere. PrimaryEngine and SecondaryEngine (a thread: they share the GIL) "
        "over loopback TCP; CountingHooks, speculative, uncompressed, 1 MiB chunks. Per dirty "
        f"ratio {c['reps']} checkpoint(s), each after writing 8 random non-zero bytes into every "
        "page of a fresh random sample; median shown. Pause (collect dirty + copy the pages "
        "out of RAM; the body is encoded after the guest resumed), "
        "transfer (body sent -> VMSTATE_RECEIVED: the secondary's staging and verification "
        "included), total (REQUEST -> LOADED) and body bytes: the engine's CheckpointStats. "
        "Reference, same run: a Python loop copying the same pages with memoryview slicing into "
        "a preallocated, faulted-in bytearray; ratio = value / reference. Secondary RAM equal "
        f"to primary RAM at the end: {'yes' if c.get('ram_identical') else 'NO'}; secondary "
        f"exit: {c['secondary_exit']}.",
        "",
        "Transport: colonet's ChannelConfig with a 10 s idle heartbeat timeout.",
        "",
        "| measurement | value | reference | ratio | note |",
        "|---|---|---|---|---|",
    ]
    for r in bench.rows:
        ref = f"{fmt(r.reference, r.unit)} ({r.ref_label})" if r.reference else "—"
        ratio = f"{r.ratio:,.2f}x" if r.ratio is not None else "—"
        cells = (r.measurement, fmt(r.value, r.unit), ref, ratio, r.note.replace("|", "/"))
        lines.append(f"| {' | '.join(cells)} |")
    if bench.oddities:
        lines += ["", "Oddities observed during the run:", *[f"- {o}" for o in bench.oddities]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--ram-mib", type=int, help="guest RAM (default 1024, 256 with --quick)")
    ap.add_argument("--zero-percent", type=float, default=50.0, help="zero pages at start (50)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="256 MiB, 1 rep, 2 s sustained")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    ram_mib = args.ram_mib or (256 if args.quick else 1024)
    if ram_mib < 1 or not 0 <= args.zero_percent <= 100:
        ap.error("--ram-mib must be >= 1 and --zero-percent in 0..100")
    reps, sustain_s = (1, 2.0) if args.quick else (3, 5.0)
    mode = "quick" if args.quick else "default"
    config = {"machine": machine_info(), "mode": mode, "ram_mib": ram_mib, "reps": reps}
    config |= {"sustain_s": sustain_s, "zero_percent": args.zero_percent, "seed": args.seed}
    started = time.monotonic()
    try:
        bench = run(config)
    except KeyboardInterrupt:
        log("interrupted; everything was torn down")
        return 130
    config["runtime_s"] = round(time.monotonic() - started, 1)
    config["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    log(f"done in {config['runtime_s']} s")
    if not args.json:
        print(render(bench, config))
        return 0
    rows = [{**vars(r), "ratio": r.ratio} for r in bench.rows]
    out = {"config": config, "rows": rows, "raw": bench.raw, "oddities": bench.oddities}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
