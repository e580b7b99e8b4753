"""A SIGKILLed primary's directory is swept; a live one's never is. No root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from colonet.node.workdir import PREFIX, Workdir, sweep_stale_workdirs

CHILD = """
import sys, time
from colonet.node.workdir import Workdir
w = Workdir(sys.argv[1])
open(w.join("filter.sock"), "w").close()
print(w.path, flush=True)
time.sleep(60)
"""


def test_the_directory_of_a_killed_primary_is_swept(tmp_path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    path = child.stdout.readline().strip()
    assert sweep_stale_workdirs(str(tmp_path)) == []  # alive: kept
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert sweep_stale_workdirs(str(tmp_path)) == [path]
    assert not os.path.exists(path)


def test_a_live_workdir_is_kept_and_removed_by_its_owner(tmp_path) -> None:
    w = Workdir(str(tmp_path))
    assert sweep_stale_workdirs(str(tmp_path)) == []
    w.remove()
    assert os.listdir(tmp_path) == []


def test_what_is_not_ours_is_left_alone(tmp_path) -> None:
    (tmp_path / f"{PREFIX}nolock").mkdir()  # no lock file: not ours, or being made
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / f"{PREFIX}link")
    (tmp_path / f"{PREFIX}file").write_text("")
    assert sweep_stale_workdirs(str(tmp_path)) == []
    assert len(os.listdir(tmp_path)) == 4
