"""A killed colonet's private directories are swept; a live one's never are.
No root."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from colonet.workdir import (
    LEGACY_AGE_S,
    PREFIXES,
    PRIMARY_PREFIX,
    QEMU_PREFIX,
    Workdir,
    sweep_stale_workdirs,
)

CHILD = """
import sys, time
from colonet.workdir import Workdir
w = Workdir(sys.argv[2], sys.argv[1])
open(w.join("qmp.sock"), "w").close()
print(w.path, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_directory_of_a_killed_process_is_swept(tmp_path, prefix) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), prefix], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    path = child.stdout.readline().strip()
    assert os.path.basename(path).startswith(prefix)
    assert sweep_stale_workdirs(str(tmp_path)) == []  # alive: kept
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert sweep_stale_workdirs(str(tmp_path)) == [path]
    assert not os.path.exists(path)


def test_a_live_workdir_is_kept_and_removed_by_its_owner(tmp_path) -> None:
    w = Workdir(QEMU_PREFIX, str(tmp_path))
    assert sweep_stale_workdirs(str(tmp_path)) == []
    w.remove()
    assert os.listdir(tmp_path) == []


def test_an_unknown_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="not a workdir prefix"):
        Workdir("colonet-other-")


def test_what_is_not_ours_is_left_alone(tmp_path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / f"{PRIMARY_PREFIX}link")
    (tmp_path / f"{PRIMARY_PREFIX}file").write_text("")
    (tmp_path / "colonet-demo-x").mkdir()
    assert sweep_stale_workdirs(str(tmp_path), now=time.time() + 3600) == []
    assert len(os.listdir(tmp_path)) == 4


def test_a_lockless_directory_of_an_older_colonet_goes_once_old_and_silent(tmp_path) -> None:
    """Older versions kept no lock: such a dir is removed once it is a minute
    old and none of its sockets answers (never while one does)."""
    dead = tmp_path / f"{PRIMARY_PREFIX}old"
    dead.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(dead / "filter.sock"))
    stale.close()  # a socket file nobody listens on
    live = tmp_path / f"{QEMU_PREFIX}old"
    live.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(live / "qmp.sock"))
    listener.listen()
    young = tmp_path / f"{QEMU_PREFIX}young"
    young.mkdir()  # could be one being made right now
    try:
        now = time.time()
        assert sweep_stale_workdirs(str(tmp_path), now=now) == []
        later = now + LEGACY_AGE_S + 1
        os.utime(young, (later - 10, later - 10))  # made ten seconds before the sweep
        assert sweep_stale_workdirs(str(tmp_path), now=later) == [str(dead)]
        assert live.exists() and young.exists()
    finally:
        listener.close()
