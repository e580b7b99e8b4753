"""`colonet demo` (the README's main job) fails over live, checks, and cleans up."""

from __future__ import annotations

import json
import signal
import subprocess

from tests.netns.harness import colonet_argv


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _demo(*args: str) -> tuple[int, dict, str]:
    """Run the demo; assert it left none of its namespaces (named after its pid)."""
    proc = subprocess.Popen(
        colonet_argv("demo", *args, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=180)
    assert not {ns for ns in _namespaces() if ns.startswith(run_prefix_of(proc.pid))}
    assert out.strip(), err
    return proc.returncode, json.loads(out.splitlines()[-1]), err


def run_prefix_of(pid: int) -> str:
    return f"cn{pid}x"


def test_demo_fails_over_live_with_a_passing_verdict_and_cleans_up(tmp_path):
    code, summary, progress = _demo(
        "--duration", "3", "--kill-after", "1.5", "--out-dir", str(tmp_path)
    )
    assert code == 0, (summary["violations"], progress)
    assert summary["verdict"] == "pass" and summary["violations"] == []
    assert summary["checkpoints"] >= 5
    # The kill may land after the secondary applied a checkpoint the primary
    # had not yet reported.
    assert 0 <= summary["applied_on_secondary"] - summary["checkpoints"] <= 1
    assert summary["packets_released"] > 0
    assert summary["answered_by_primary"] > 0 and summary["answered_by_secondary"] > 0
    assert summary["failover_reason"] in ("error", "heartbeat")
    assert summary["failover_gap_ms"] > 0
    # Replies through the buffered primary wait for a commit.
    assert summary["rtt_ms_median"] > 10
    assert "primary killed (SIGKILL)" in progress and "secondary took over" in progress
    # It leaves its event log and a timeline drawn from it.
    with open(summary["run_log"]) as log:
        events = [json.loads(line) for line in log]
    kinds = {(e["source"], e["event"]) for e in events}
    for kind in (
        ("primary", "checkpoint"),
        ("secondary", "applied"),
        ("filters", "filters"),
        ("demo", "kill"),
        ("secondary", "failover"),
        ("demo", "summary"),
    ):
        assert kind in kinds, kind
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    with open(summary["timeline"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    redrawn = subprocess.run(
        colonet_argv("report", summary["run_log"], "--out", str(tmp_path / "again.png")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert redrawn.returncode == 0, redrawn.stderr
    assert "failover event" in redrawn.stdout and (tmp_path / "again.png").stat().st_size > 0


def test_demo_negative_control_exits_1_and_cleans_up():
    results = [
        _demo("--duration", "2.5", "--kill-after", k, "--no-buffer", "--out-dir", "")
        for k in ("1", "1.4")
    ]
    assert any(code == 1 and s["verdict"] == "fail" for code, s, _ in results), results
    assert all(not s["buffered"] for _, s, _ in results)


def test_demo_refuses_a_kill_time_after_the_end():
    done = subprocess.run(
        colonet_argv("demo", "--duration", "2", "--kill-after", "3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--kill-after 3.0 must be between 0 and --duration 2.0" in done.stderr


def test_demo_interrupted_tears_everything_down():
    proc = subprocess.Popen(
        colonet_argv("demo", "--duration", "30", "--kill-after", "20", "--out-dir", ""),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until checkpoints are committing
        if line.split()[:1] == ["3"]:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted, tearing down" in out
    assert not {ns for ns in _namespaces() if ns.startswith(run_prefix_of(proc.pid))}


def test_demo_keeps_its_verdict_when_its_out_dir_goes_away_during_the_run(tmp_path):
    out_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        colonet_argv(
            "demo", "--duration", "3", "--kill-after", "1.5", "--out-dir", str(out_dir), "--json"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    progress = []
    for line in proc.stderr:  # with --json the progress goes to stderr
        progress.append(line)
        if "primary killed" in line:
            break
    out_dir.rmdir()  # checked writable at the start (and left empty), now gone
    out_dir.write_text("not a directory any more")
    out, err = proc.communicate(timeout=180)
    summary = json.loads(out.splitlines()[-1])
    # The verdict is printed and decides the exit code; the write error is said too.
    assert proc.returncode == 0, ("".join(progress), err)
    assert summary["verdict"] == "pass"
    assert summary["write_error"].startswith(f"could not write the run log in {out_dir}: ")
    assert f"colonet: error: could not write the run log in {out_dir}" in err
    assert out_dir.read_text() == "not a directory any more"
