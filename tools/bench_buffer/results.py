"""Result rows, the collected results of a run, and the Markdown table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .common import PAYLOAD


@dataclass
class Row:
    key: str
    link: str
    backend: str
    measurement: str
    value: float | None
    unit: str
    reference: float | None = None
    ref_key: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference


@dataclass
class Results:
    config: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    oddities: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def fmt_num(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit in ("ms", "µs"):
        return (
            f"{v:,.2f} {unit}" if v < 10 else f"{v:,.1f} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
        )
    return f"{v:,.0f} {unit}"


def _header(res: Results) -> list[str]:
    """Machine, topology and method: everything above the table."""
    m = res.config["machine"]
    p = res.config["params"]
    links, backends = res.config["links"], res.config["backends"]
    long = (
        f" (1d-1e: {p['tp_long_count']:,}, more than the filter's 50,000-packet limit)"
        if p["tp_long_count"]
        else ""
    )
    how = f"paced at {p['rate']:,}/s" if p["rate"] else "sent as fast as possible"
    return [
        "### colonet buffer benchmark (`tools/bench_buffer.py`)",
        "",
        f"Machine: {m['nproc']} CPU ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
        f"colonet {m['colonet']} (git {m['git']}); load average at start "
        f"{' '.join(m['loadavg'])}; {m['date']}; run took {res.config.get('runtime_s')} s "
        f"({res.config['mode']} mode).",
        "",
        f"Namespaces built by `Topology` ({', '.join(links)}): guest -> host netdev "
        f"(buffered) -> client; filter backends: {', '.join(backends)}; checkpoint+commit "
        f"period {res.config['commit_period_s'] * 1e3:g} ms where a row says so. All traffic "
        f"is IPv4 UDP with {PAYLOAD}-byte payloads.",
        "",
        f"- 1x throughput: {p['tp_count']:,} datagrams{long} {how} by one Python sender "
        "process in the guest ns, counted by one receiver process in the client ns "
        "(SO_RCVBUFFORCE 512 MiB); rate = received / (first send -> last arrival); every "
        "loss is stated with where it happened.",
        f"- 2x release latency: {p['lat_count']:,} datagrams held in one epoch (status shows "
        "them all held), `checkpoint`, then the clock (perf_counter, same process) runs from "
        "sending `commit` until a receiver thread has read the last datagram; the control "
        "round trip is included. The kernel's rx timestamp of the last datagram is given as "
        f"a cross-check. {p['lat_reps']} repetitions.",
        "- 3x memory: VmRSS of the filter process's pid before/after holding; kernel side "
        "from machine-wide slab counters (approximate).",
        "- 4x RTT: UDP ping-pong client -> echo process in the guest ns -> client; per-commit "
        "overhead = empty `checkpoint` + `commit` over the control socket.",
        "- ratio = value / reference, both measured in this run. Wall-clock timings on a "
        "shared machine.",
        "",
    ]


def render(res: Results) -> str:
    """The Markdown report: header, one table row per Row, then the oddities."""
    links, backends = res.config["links"], res.config["backends"]
    lines = _header(res)
    lines += [
        "| # | link | backend | measurement | value | reference | ratio | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {b: i for i, b in enumerate(["—", *backends])}
    rows = sorted(
        res.rows,
        key=lambda r: (links.index(r.link.split()[0]), r.key, order.get(r.backend, 9)),
    )
    for r in rows:
        ref = f"{fmt_num(r.reference, r.unit)} ({r.ref_key})" if r.reference else "—"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "—"
        note = r.note.replace("|", "/")
        lines.append(
            f"| {r.key} | {r.link} | {r.backend} | {r.measurement} | "
            f"{fmt_num(r.value, r.unit)} | {ref} | {ratio} | {note} |"
        )
    if res.oddities:
        lines += ["", "Oddities observed during the run:"]
        lines += [f"- {o}" for o in res.oddities]
    return "\n".join(lines)
