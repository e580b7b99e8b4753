"""1. UDP throughput guest -> client, with and without a filter.

A sender process in the guest ns blasts (or paces) numbered 64-byte
datagrams at a receiver process in the client ns. Rows: 1a no filter
(reference), 1b/1c filter attached with checkpoint+commit every 10 ms, batch
release and --no-batch-release; 1d/1e the same as 1a/1b for a stream longer
than the filter's 50,000-packet limit. Rate = received / (first send -> last
arrival); every lost packet is attributed to the hop that dropped it.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Any

from .colonet_api import Topology
from .common import BATCH_FLAG, COMMIT_PERIOD_S, PAYLOAD, TP_PORT, Params, log, release_label
from .counters import delta, kernel_drops, link_counters, softnet_drops
from .filterctl import CommitLoop, filter_process
from .results import Results, Row
from .workers import Worker


def _stream(
    out: dict[str, Any],
    topo: Topology,
    backend: str | None,
    batch: bool,
    count: int,
    cap_s: float,
    rate: int,
) -> None:
    """Run sender and receiver once; record their results and the drop counters in `out`."""
    extra = () if batch else (BATCH_FLAG,)
    with contextlib.ExitStack() as stack:
        fp = stack.enter_context(filter_process(topo, backend, *extra)) if backend else None
        rx = Worker(
            "recv",
            topo.client_ns,
            ip=topo.client_ip4,
            port=TP_PORT,
            expected=count,
            rcvbuf=512 * 1024 * 1024,
            quiet_s=1.5,
            deadline_s=cap_s + 10,
        )
        stack.callback(rx.close)
        tx = Worker(
            "send",
            topo.guest_ns,
            dest=topo.client_ip4,
            port=TP_PORT,
            count=count,
            cap_s=cap_s,
            rate=rate,
        )
        stack.callback(tx.close)
        softnet0 = softnet_drops()
        guest0 = link_counters(topo.guest_ns, "eth0")
        host0 = link_counters(topo.host_ns, topo.netdev)
        loop = None
        if fp is not None:
            kdrop0 = kernel_drops(topo, fp)
            loop = CommitLoop(fp)
            loop.start()
        try:
            tx.go()
            sent = tx.result(cap_s + 30)
            got = rx.result(cap_s + 40)
        finally:
            if loop is not None:
                loop.stop()
        out["sender"], out["receiver"] = sent, got
        out["softnet_drops"] = softnet_drops() - softnet0
        guest1 = link_counters(topo.guest_ns, "eth0")
        host1 = link_counters(topo.host_ns, topo.netdev)
        out["guest_tx_dropped"] = guest1["tx_dropped"] - guest0["tx_dropped"]
        out["netdev_rx_dropped"] = host1["rx_dropped"] - host0["rx_dropped"]
        if fp is not None and loop is not None:
            _filter_figures(out, topo, fp, loop, kdrop0)


def _filter_figures(
    out: dict[str, Any], topo: Topology, fp: Any, loop: CommitLoop, kdrop0: dict[str, int]
) -> None:
    """Drops into and inside the filter, and how the commit loop kept up."""
    st = fp.netdev_status()
    out["kernel_drops"] = delta(kernel_drops(topo, fp), kdrop0)
    out["kernel_dropped"] = out["kernel_drops"]["total"]
    out["tail_dropped"] = st["tail_dropped_packets"]
    out["filter_status"] = st
    out["commits"] = len(loop.durations)
    out["commit_ms_median"] = statistics.median(loop.durations) * 1e3
    out["commit_ms_max"] = max(loop.durations) * 1e3
    out["released_by_commits"] = loop.released


def _note(out: dict[str, Any], backend: str | None, elapsed: float) -> str:
    """The row's note: counts, and every drop counter that moved."""
    sent, got, lost = out["sender"], out["receiver"], out["lost"]
    parts = [
        f"sent {sent['sent']:,} (sender alone {out['tx_pps']:,.0f}/s)",
        f"received {got['received']:,} in {elapsed * 1e3:,.0f} ms",
        f"**lost {lost:,}**" if lost else "lost 0",
        f"rx-socket drops {got['socket_drops']}",
    ]
    if got["duplicates"] or got["out_of_order"]:
        parts.append(f"dup {got['duplicates']}, out-of-order {got['out_of_order']}")
    if backend:
        kd = out["kernel_drops"]
        where = (
            f"nfqueue: queue full {kd['queue_dropped']}, netlink socket full {kd['user_dropped']}"
            if backend == "nfqueue"
            else "capture-tap tx_dropped"
        )
        parts.append(f"kernel drops before the filter {out['kernel_dropped']} ({where})")
        parts.append(f"tail-drops {out['tail_dropped']}")
        parts.append(
            f"{out['commits']} ckpt+commit cycles, each median {out['commit_ms_median']:.1f} ms "
            f"max {out['commit_ms_max']:.0f} ms"
        )
    other = {
        "guest eth0 tx_dropped": out["guest_tx_dropped"],
        "netdev rx_dropped": out["netdev_rx_dropped"],
        "backlog drops (host-wide)": out["softnet_drops"],
    }
    parts += [f"{k} {v}" for k, v in other.items() if v]
    return "; ".join(parts)


def _oddities(
    res: Results, topo: Topology, label: str, backend: str | None, out: dict[str, Any]
) -> None:
    sent, got, lost = out["sender"], out["receiver"], out["lost"]
    if got["socket_drops"]:
        res.oddities.append(
            f"[{topo.link}] throughput {label}: receiver socket dropped "
            f"{got['socket_drops']} (rcvbuf {got['rcvbuf']})"
        )
    if backend and lost:
        nic = out["guest_tx_dropped"]
        res.oddities.append(
            f"[{topo.link}] throughput {label}: {lost:,} of {sent['sent']:,} packets lost: "
            f"{nic:,} in the guest NIC's queue before colonet (guest eth0 tx_dropped), "
            f"{out['kernel_dropped']:,} by the kernel on the way into the filter, "
            f"{out['tail_dropped']:,} tail-dropped by the filter (--max-packets 50,000), "
            f"{lost - nic - out['kernel_dropped'] - out['tail_dropped']:,} unaccounted"
        )
    if backend and out["commit_ms_max"] > 5 * COMMIT_PERIOD_S * 1e3:
        res.oddities.append(
            f"[{topo.link}] throughput {label}: one checkpoint+commit cycle took "
            f"{out['commit_ms_max']:.0f} ms (period {COMMIT_PERIOD_S * 1e3:g} ms) while the "
            "sender was blasting: control requests wait while the daemon reads packets"
        )
    if got["duplicates"] or got["out_of_order"]:
        res.oddities.append(
            f"[{topo.link}] throughput {label}: {got['duplicates']} duplicates, "
            f"{got['out_of_order']} out of order"
        )


def bench_throughput(
    res: Results,
    topo: Topology,
    backend: str | None,
    batch: bool,
    count: int,
    cap_s: float,
    rate: int = 0,
) -> dict[str, Any]:
    """One stream of `count` datagrams, through `backend`'s filter or (None) no filter."""
    label = f"{backend}, {release_label(batch)}" if backend else "no filter"
    log(f"[{topo.link}] throughput, {label}: {count:,} x {PAYLOAD} B UDP")
    out: dict[str, Any] = {"filter": label}
    _stream(out, topo, backend, batch, count, cap_s, rate)
    sent, got = out["sender"], out["receiver"]
    elapsed = (got["t_last"] - sent["t_start"]) / 1e9 if got["received"] else float("nan")
    out["rx_pps"] = got["received"] / elapsed if got["received"] else 0.0
    send_s = (sent["t_end"] - sent["t_start"]) / 1e9
    out["tx_pps"] = sent["sent"] / send_s if send_s > 0 else 0.0
    out["lost"] = sent["sent"] - got["received"]
    out["note"] = _note(out, backend, elapsed)
    _oddities(res, topo, label, backend, out)
    return out


def run_throughput(
    res: Results,
    topo: Topology,
    link_label: str,
    backends: list[str],
    p: Params,
    raw: dict[str, Any],
) -> None:
    """Rows 1a-1c (and 1d-1e when `p.tp_long_count`); raw figures go into `raw`."""
    ref = bench_throughput(res, topo, None, True, p.tp_count, p.tp_cap_s, p.rate)
    raw["throughput_no_filter"] = ref
    ref_pps = ref["rx_pps"]
    res.add(
        Row(
            "1a",
            link_label,
            "—",
            f"UDP throughput guest->client, {p.tp_count:,}-packet burst, NO filter: the "
            "kernel's unbuffered path (reference)",
            ref_pps,
            "pkt/s",
            ref_pps,
            "1a",
            ref["note"],
        )
    )
    for backend in backends:
        r: dict[str, Any] = raw.setdefault(backend, {})
        for key, batch in (("1b", True), ("1c", False)):
            tp = bench_throughput(res, topo, backend, batch, p.tp_count, p.tp_cap_s, p.rate)
            r[f"throughput_{'batch' if batch else 'nobatch'}"] = tp
            res.add(
                Row(
                    key,
                    link_label,
                    backend,
                    f"UDP throughput, {p.tp_count:,}-packet burst, filter attached, "
                    f"checkpoint+commit every {COMMIT_PERIOD_S * 1e3:g} ms, "
                    f"{release_label(batch)}",
                    tp["rx_pps"],
                    "pkt/s",
                    ref_pps,
                    "1a",
                    tp["note"],
                )
            )
    if p.tp_long_count:
        _run_sustained(res, topo, link_label, backends, p, raw)


def _run_sustained(
    res: Results,
    topo: Topology,
    link_label: str,
    backends: list[str],
    p: Params,
    raw: dict[str, Any],
) -> None:
    """Rows 1d/1e: sustained overload.

    More packets than --max-packets, sent faster than the filter takes them.
    """
    long_ref = bench_throughput(res, topo, None, True, p.tp_long_count, p.tp_cap_s, p.rate)
    raw["throughput_long_no_filter"] = long_ref
    res.add(
        Row(
            "1d",
            link_label,
            "—",
            f"UDP throughput, sustained {p.tp_long_count:,}-packet stream, NO filter (reference)",
            long_ref["rx_pps"],
            "pkt/s",
            long_ref["rx_pps"],
            "1d",
            long_ref["note"],
        )
    )
    for backend in backends:
        tp = bench_throughput(res, topo, backend, True, p.tp_long_count, p.tp_cap_s, p.rate)
        raw[backend]["throughput_long_batch"] = tp
        res.add(
            Row(
                "1e",
                link_label,
                backend,
                f"UDP throughput, sustained {p.tp_long_count:,}-packet stream, filter "
                f"attached, checkpoint+commit every {COMMIT_PERIOD_S * 1e3:g} ms, "
                "batch release",
                tp["rx_pps"],
                "pkt/s",
                long_ref["rx_pps"],
                "1d",
                tp["note"],
            )
        )
