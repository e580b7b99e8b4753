"""`colonet demo` runs end to end and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess

from tests.netns.harness import colonet_argv


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_demo_replicates_commits_and_cleans_up():
    before = _namespaces()
    done = subprocess.run(
        colonet_argv("demo", "--duration", "2", "--json"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["verdict"] == "pass"
    assert summary["checkpoints"] >= 5
    assert summary["applied_on_secondary"] == summary["checkpoints"]
    assert summary["packets_released"] > 0
    assert summary["answered"] > 0 and summary["rollbacks"] == 0
    # Replies wait for a commit: a round trip takes most of a period.
    assert summary["rtt_ms_median"] > 10
    assert _namespaces() == before
