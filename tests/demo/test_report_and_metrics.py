"""The timeline picture from a recorded run log, and the metrics exposition.
No root: pure inputs, loopback HTTP."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from colonet.buffer.epoch_queue import QueueStats
from colonet.buffer.status import FilterSetStatus, NetdevStatus
from colonet.demo.report import load_events, render
from colonet.errors import UsageError
from colonet.node.metrics import EngineMetrics, FilterCollector, serve_metrics

T0 = 1_800_000_000.0


def recorded_run() -> list[dict]:
    events = [{"t": T0, "source": "secondary", "event": "listening"}]
    for n in range(1, 11):
        t = T0 + 0.1 * n
        events.append(
            {"t": t, "source": "primary", "event": "checkpoint", "epoch": n, "pause_ms": 1.2,
             "transfer_ms": 0.8, "total_ms": 3.0, "released_packets": 20 + n}
        )  # fmt: skip
        events.append({"t": t + 0.001, "source": "secondary", "event": "applied", "epoch": n})
        events.append(
            {"t": t + 0.05, "source": "filters", "event": "filters",
             "netdevs": [{"netdev": "gst0", "held_packets": 5, "held_bytes": 500 + n}]}
        )  # fmt: skip
    events.append({"t": T0 + 1.15, "source": "demo", "event": "kill"})
    events.append(
        {"t": T0 + 1.2, "source": "secondary", "event": "failover", "mode": "secondary",
         "reason": "error", "last_committed": 10}
    )  # fmt: skip
    return events


def test_a_recorded_log_becomes_a_timeline_png(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in reversed(recorded_run())) + "\n")
    events = load_events(str(log))
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    out = tmp_path / "timeline.png"
    drawn = render(events, str(out))
    assert drawn == {"checkpoints": 10, "applied": 10, "held_samples": 10, "failovers": 1}
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.parametrize(
    ("content", "fault"),
    [("", "holds no events"), ("{nope\n", ":1: not a JSON line"), ('{"a": 1}\n', "numeric 't'")],
)
def test_a_bad_log_names_the_fault(tmp_path, content, fault):
    log = tmp_path / "run.jsonl"
    log.write_text(content)
    with pytest.raises(UsageError, match=fault):
        load_events(str(log))


def test_filter_and_checkpoint_metrics_are_exposed():
    queue = QueueStats(
        open_epoch=4, last_sealed=3, last_released=2, held_packets=7, held_bytes=700,
        released_packets=90, released_bytes=9000, discarded_packets=2, discarded_bytes=20,
        tail_dropped_packets=1, tail_dropped_bytes=10, high_water_hits=3, epochs=(),
    )  # fmt: skip
    status = FilterSetStatus(
        open_epoch=4,
        last_sealed=3,
        last_released=2,
        oldest_epoch_age_s=0.042,
        netdevs=(NetdevStatus("tap0", "tap", "buffering", queue),),
        high_water_requests=3,
    )
    registry = CollectorRegistry()
    registry.register(FilterCollector(lambda: status))
    engine = EngineMetrics(registry)
    engine.checkpoint(pause_ms=1.5, transfer_ms=30.0, dirty=12, nbytes=4096)
    engine.failover("secondary", "heartbeat")
    text = generate_latest(registry).decode()
    for line in (
        'colonet_filter_held_packets{netdev="tap0"} 7.0',
        'colonet_filter_held_bytes{netdev="tap0"} 700.0',
        'colonet_filter_released_packets_total{netdev="tap0"} 90.0',
        'colonet_filter_tail_dropped_packets_total{netdev="tap0"} 1.0',
        "colonet_filter_oldest_epoch_age_seconds 0.042",
        "colonet_checkpoint_pause_seconds_count 1.0",
        'colonet_checkpoint_transfer_seconds_bucket{le="0.05"} 1.0',
        "colonet_checkpoint_dirty_pages_total 12.0",
        'colonet_failover_events_total{mode="secondary",reason="heartbeat"} 1.0',
        "colonet_filter_up 1.0",
    ):
        assert line in text, line


def test_metrics_endpoint_is_scraped_over_loopback():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry, engine = serve_metrics(("127.0.0.1", port), lambda: None)
    engine.checkpoint(pause_ms=2.0, transfer_ms=1.0, dirty=3, nbytes=100)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "colonet_checkpoint_pause_seconds_count 1.0" in body
    assert "colonet_filter_up 0.0" in body  # no filters answered
