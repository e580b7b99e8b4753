"""`colonet report RUN.jsonl --out timeline.png`: a run's epochs at a glance.

The event log is JSON lines, each with `t` (Unix seconds) and `source`
(primary, secondary, filters, demo), as `colonet demo` writes it, read and
checked by `colonet.demo.run_log.load_events`. The picture, top to bottom:
each checkpoint's guest pause (red) and transfer (blue) on the time axis
with the secondary's applies (green ticks); bytes held per netdev; packets
released at each commit; vertical lines at the kill and at every failover
event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from colonet.errors import UsageError


def _of(events: Iterable[dict[str, Any]], source: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("source") == source and e.get("event") == kind]


def render(events: list[dict[str, Any]], out: str) -> dict[str, int]:
    """Draw the timeline into `out` (PNG); what was drawn, counted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = events[0]["t"]
    checkpoints = _of(events, "primary", "checkpoint")
    applied = _of(events, "secondary", "applied")
    samples = _of(events, "filters", "filters")
    failovers = [e for e in events if e.get("event") == "failover"]
    kills = _of(events, "demo", "kill")

    fig, (ax_ck, ax_held, ax_rel) = plt.subplots(
        3, 1, figsize=(12, 7.5), sharex=True, gridspec_kw={"height_ratios": [1.2, 1, 1]}
    )
    for c in checkpoints:
        end = c["t"] - t0
        start = end - c["total_ms"] / 1000
        pause, transfer = c["pause_ms"] / 1000, c["transfer_ms"] / 1000
        ax_ck.broken_barh([(start, max(pause, 0.001))], (1.1, 0.8), color="tab:red")
        ax_ck.broken_barh([(start + pause, max(transfer, 0.001))], (1.1, 0.8), color="tab:blue")
    ax_ck.vlines([a["t"] - t0 for a in applied], 0.1, 0.9, color="tab:green", linewidth=1)
    ax_ck.set_yticks([0.5, 1.5], ["secondary\napplied", "primary\npause | transfer"])
    ax_ck.set_ylim(0, 2)
    ax_ck.set_title(
        f"colonet run: {len(checkpoints)} checkpoints, {len(applied)} applied on the secondary"
        + (f", failover ({failovers[0].get('reason')})" if failovers else "")
    )

    held: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for s in samples:
        for n in s.get("netdevs", []):
            held[n["netdev"]].append((s["t"] - t0, n["held_bytes"]))
    for netdev, points in held.items():
        xs, ys = zip(*points, strict=True)
        ax_held.step(xs, ys, where="post", label=netdev)
    if held:
        ax_held.legend(loc="upper right")
    ax_held.set_ylabel("bytes held")

    ax_rel.bar(
        [c["t"] - t0 for c in checkpoints],
        [c.get("released_packets") or 0 for c in checkpoints],
        width=0.02,
        color="tab:purple",
    )
    ax_rel.set_ylabel("packets released\nat each commit")
    ax_rel.set_xlabel("seconds since the run started")

    for ax in (ax_ck, ax_held, ax_rel):
        for k in kills:
            ax.axvline(k["t"] - t0, color="black", linestyle="--", linewidth=1)
        for f in failovers:
            ax.axvline(f["t"] - t0, color="tab:orange", linewidth=1.5)
    if kills:
        ax_ck.text(kills[0]["t"] - t0, 1.95, " primary killed", va="top", fontsize=8)
    for f in failovers:
        ax_held.text(
            f["t"] - t0, ax_held.get_ylim()[1], f" {f.get('mode')} ({f.get('reason')})",
            va="top", fontsize=8, color="tab:orange",
        )  # fmt: skip
    fig.tight_layout()
    try:
        # PNG whatever the name ends in: the name is the user's, the format ours.
        fig.savefig(out, dpi=110, format="png")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return {
        "checkpoints": len(checkpoints),
        "applied": len(applied),
        "held_samples": len(samples),
        "failovers": len(failovers),
    }
