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
from colonet.cli.main import main
from colonet.demo.report import render
from colonet.demo.run_log import load_events
from colonet.errors import UsageError
from colonet.node.metrics import EngineMetrics, FilterCollector, serve_metrics
from tests.demo.users import as_nobody

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


# -- `colonet report` on malformed input: exit 2 naming file and line --------

CHECKPOINT = {"source": "primary", "event": "checkpoint", "pause_ms": 1.2, "transfer_ms": 0.8,
              "total_ms": 3.0}  # fmt: skip


def _lines(*events: object) -> bytes:
    return b"".join((e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n" for e in events)


def _filters(netdevs: object) -> dict:
    return {"t": T0 + 1, "source": "filters", "event": "filters", "netdevs": netdevs}


MALFORMED = [
    (b"", " holds no events"),
    (b"\n   \n", " holds no events"),
    (b"{nope\n", ":1: not a JSON line"),
    (b"[" * 100_000, ":1: not a JSON line: nested too deep"),
    (_lines({"t": T0}, b"\xff\xfe"), ":2: not UTF-8 text"),
    (_lines({"t": T0}, [1, 2]), ":2: an event is a JSON object, got list"),
    (_lines({"a": 1}), ":1: an event needs a numeric 't'"),
    (_lines({"t": "soon"}), ":1: 't' must be a number, got \"soon\""),
    (_lines({"t": True}), ":1: 't' must be a number, got true"),
    (b'{"t": NaN}\n', ":1: 't' nan is out of range"),
    (_lines({"t": 1e308}), ":1: 't' 1e+308 is out of range"),
    (_lines({"t": T0}, {**CHECKPOINT, "t": T0}), None),  # well formed: control
    (_lines({"t": T0}, {"t": T0, "source": "primary", "event": "checkpoint"}),
     ":2: a primary checkpoint event needs 'pause_ms'"),
    (_lines({**CHECKPOINT, "t": T0, "total_ms": "3"}), ":1: 'total_ms' must be a number"),
    (_lines({**CHECKPOINT, "t": T0, "pause_ms": 1e300}), ":1: 'pause_ms' 1e+300 is out of range"),
    (_lines({**CHECKPOINT, "t": T0, "released_packets": "x"}),
     ":1: 'released_packets' must be a number"),
    (_lines(_filters({})), ":1: 'netdevs' must be a list, got dict"),
    (_lines(_filters([5])), ":1: netdevs[0] needs a 'netdev' name"),
    (_lines(_filters([{"held_bytes": 1}])), ":1: netdevs[0] needs a 'netdev' name"),
    (_lines(_filters([{"netdev": "gst0"}])), ":1: netdevs[0] needs 'held_bytes'"),
    (_lines(_filters([{"netdev": "gst0", "held_bytes": None}])),
     ":1: netdevs[0].held_bytes must be a number, got null"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "fault"), MALFORMED)
def test_report_names_the_file_and_line_of_a_malformed_log(tmp_path, capsys, content, fault):
    log = tmp_path / "run.jsonl"
    log.write_bytes(content)
    out = tmp_path / "timeline.png"
    code = main(["report", str(log), "--out", str(out)])
    err = capsys.readouterr().err
    if fault is None:
        assert (code, out.exists()) == (0, True), err
        return
    assert code == 2
    assert f"colonet: error: {log}{fault}" in err
    assert not out.exists()


def test_report_on_what_is_not_a_readable_file_names_it(tmp_path, capsys):
    out = str(tmp_path / "timeline.png")
    missing = tmp_path / "missing.jsonl"
    assert main(["report", str(missing), "--out", out]) == 2
    assert f"cannot read {missing}: No such file or directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", out]) == 2
    assert f"cannot read {tmp_path}: Is a directory" in capsys.readouterr().err
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"t": T0}) + "\n")
    secret.chmod(0)
    with as_nobody():
        assert main(["report", str(secret), "--out", "/nonexistent/x.png"]) == 2
    assert f"cannot read {secret}: Permission denied" in capsys.readouterr().err


def test_report_names_an_output_it_cannot_write(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps({"t": T0}) + "\n")
    out = tmp_path / "no" / "such" / "dir.png"
    assert main(["report", str(log), "--out", str(out)]) == 2
    assert f"cannot write {out}: No such file or directory" in capsys.readouterr().err


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
