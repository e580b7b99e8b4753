"""`colonet demo --out-dir`: a bad dir fails before the run (exit 2, named);
a write that fails after the run keeps the verdict and its exit code
(issue 15 item 10a). In process, no namespaces: the run itself is replaced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest

import colonet.cli.demo
import colonet.demo.run
from colonet.cli.main import main
from colonet.demo.output import prepare_out_dir, save_run
from tests.demo.test_report_and_metrics import recorded_run
from tests.demo.users import as_nobody


class RunStarted(AssertionError):
    """The demo began building its namespaces: the out dir check came too late."""


@pytest.fixture
def no_run(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(colonet.cli.demo, "require_net_admin", lambda _: None)

    def started(*_: object, **__: object) -> None:
        raise RunStarted("the run started before the out dir was checked")

    monkeypatch.setattr(colonet.demo.run, "Topology", started)


def _demo(out_dir: str, capsys) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    code = main(["demo", "--duration", "2", "--kill-after", "1", "--out-dir", out_dir])
    return code, capsys.readouterr().err


def test_a_file_as_out_dir_fails_before_the_run(tmp_path, capsys, no_run):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert _demo(str(taken), capsys) == (
        2,
        f"colonet: error: --out-dir {taken} exists and is not a directory\n",
    )
    assert taken.read_text() == "mine"


def test_an_out_dir_under_a_file_fails_before_the_run(tmp_path, capsys, no_run):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "demo"
    code, err = _demo(str(out), capsys)
    assert code == 2
    assert f"--out-dir {out} cannot be created: Not a directory" in err


def test_an_unwritable_out_dir_fails_before_the_run(capsys, no_run):
    # Not under tmp_path: its parents are private to root, and the check
    # must fail on the dir itself, as a user without write access sees it.
    folder = tempfile.mkdtemp(prefix="cnout")
    try:
        os.chmod(folder, 0o755)
        readonly = os.path.join(folder, "ro")
        os.mkdir(readonly, 0o555)
        with as_nobody():
            code, err = _demo(readonly, capsys)
        assert code == 2
        assert f"--out-dir {readonly} is not writable: Permission denied" in err
        assert os.listdir(readonly) == []
    finally:
        shutil.rmtree(folder)


FULL_DISK = """
import sys
import colonet.cli.demo, colonet.demo.run
from colonet.cli.main import main

def started(*_, **__):
    raise SystemExit("the run started before the out dir was checked")

colonet.cli.demo.require_net_admin = lambda _: None
colonet.demo.run.Topology = started
sys.exit(main(["demo", "--duration", "2", "--kill-after", "1", "--out-dir", sys.argv[1]]))
"""


def test_a_full_out_dir_fails_before_the_run(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root (a tmpfs), and under CI it must run")
        pytest.skip("needs root to mount a small tmpfs")
    # A 64 KiB tmpfs, filled, in a private mount namespace: nothing to undo.
    script = (
        'mount -t tmpfs -o size=64k colonet-full "$1" && '
        '(head -c 1M /dev/zero > "$1/filler" 2>/dev/null; true) && '
        'exec "$2" -c "$3" "$1/demo"'
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(tmp_path), sys.executable, FULL_DISK],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--out-dir {tmp_path}/demo cannot take a run's files: No space left" in done.stderr


def test_the_check_leaves_the_dir_as_it_found_it(tmp_path):
    out = tmp_path / "new" / "demo"
    prepare_out_dir(str(out))
    assert out.is_dir() and list(out.iterdir()) == []
    prepare_out_dir(str(out))  # an existing dir is fine too


# -- after the run ------------------------------------------------------------


def test_a_write_that_fails_after_the_run_is_reported_not_raised(tmp_path):
    gone = tmp_path / "gone"
    gone.write_text("")  # the dir was replaced by a file during the run
    saved = save_run(str(gone), recorded_run(), {"verdict": "pass"})
    assert set(saved) == {"write_error"}
    assert f"could not write the run log in {gone}: " in saved["write_error"]
    ok = save_run(str(tmp_path / "ok"), recorded_run(), {"verdict": "pass"})
    assert ok == {
        "run_log": str(tmp_path / "ok/run.jsonl"),
        "timeline": str(tmp_path / "ok/timeline.png"),
    }


def test_the_run_files_replace_a_planted_symlink_never_write_through_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o644)
    for name in ("run.jsonl", "timeline.png"):
        (out / name).symlink_to(victim)
    saved = save_run(str(out), recorded_run(), {"verdict": "pass"})
    assert "write_error" not in saved
    assert victim.read_text() == "precious"
    for name in ("run.jsonl", "timeline.png"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["run.jsonl", "timeline.png"]


def summary(verdict: str, **more: Any) -> dict[str, Any]:
    """A run's summary as run_once returns it (every key print_summary reads)."""
    keys = [
        "requests_sent",
        "answered",
        "answered_by_primary",
        "answered_by_secondary",
        "checkpoints",
        "applied_on_secondary",
        "period_ms",
        "pause_ms_median",
        "pause_ms_p99",
        "transfer_ms_median",
        "packets_released",
        "packets_held_at_kill",
        "kill_after_s",
        "failover_reason",
        "failover_detail",
        "last_committed",
        "takeover_ms",
        "failover_gap_ms",
        "last_value_from_primary",
        "takeover_counter",
        "rtt_ms_median",
        "rtt_ms_p99",
    ]
    return {k: 1 for k in keys} | {
        "guest": "embedded", "buffered": True, "verdict": verdict,
        "violations": [] if verdict == "pass" else ["a rollback"], **more,
    }  # fmt: skip


@pytest.mark.parametrize(("verdict", "code"), [("pass", 0), ("fail", 1)])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_verdict_and_its_code_survive_a_failed_write(
    monkeypatch, capsys, verdict, code, as_json
):
    error = "could not write the run log in /full: No space left on device"
    monkeypatch.setattr(colonet.cli.demo, "require_net_admin", lambda _: None)
    monkeypatch.setattr(
        colonet.cli.demo, "run_once", lambda config, out: summary(verdict, write_error=error)
    )
    argv = ["demo", "--out-dir", "/full", *(["--json"] if as_json else [])]
    assert main(argv) == code
    out, err = capsys.readouterr()
    if as_json:
        printed = json.loads(out.splitlines()[-1])
        assert (printed["verdict"], printed["write_error"]) == (verdict, error)
    else:
        row = next(line for line in out.splitlines() if "consistency check" in line)
        assert row.split()[-1] == ("PASS" if verdict == "pass" else "FAIL")
    assert f"colonet: error: {error}" in err
