"""Private directories that live as long as their process, and the sweep
that removes those whose process died without cleaning up.

A SIGKILLed primary (and the QEMU guest in it) cannot remove its
directories: a filter's control socket, QEMU's QMP and migration sockets.
Each directory holds an exclusive flock on `owner.lock` for as long as its
process lives; the kernel drops the lock when the process dies, however it
dies. The sweep removes only directories whose lock it can take, which is
right across PID namespaces too (a pid number would not be). Directories
from colonet versions that kept no lock are removed once they are a minute
old and no socket in them answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import stat
import tempfile
import time

PRIMARY_PREFIX = "colonet-primary-"  # a primary's filter socket
QEMU_PREFIX = "colonet-qemu-"  # a QEMU guest's QMP and migration sockets, console log
TRACKED_QEMU_PREFIX = "colonet-tracked-"  # a QEMU with tracked RAM
PREFIXES = (PRIMARY_PREFIX, QEMU_PREFIX, TRACKED_QEMU_PREFIX)
LOCK_NAME = "owner.lock"
LEGACY_AGE_S = 60.0


class Workdir:
    def __init__(self, prefix: str = PRIMARY_PREFIX, parent: str | None = None) -> None:
        if prefix not in PREFIXES:
            raise ValueError(f"{prefix!r} is not a workdir prefix the sweep knows")
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        self._lock_fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def sweep_stale_workdirs(parent: str | None = None, now: float | None = None) -> list[str]:
    """Remove the directories of colonet processes that died; the paths removed."""
    parent = parent or tempfile.gettempdir()
    now = time.time() if now is None else now
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not name.startswith(PREFIXES) or not os.path.isdir(path) or os.path.islink(path):
            continue
        if os.path.exists(os.path.join(path, LOCK_NAME)):
            stale = _lock_is_free(path)
        else:
            stale = _legacy_is_stale(path, now)
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _lock_is_free(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False  # not one of ours after all: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its process lives
    finally:
        os.close(fd)
    return True


def _legacy_is_stale(path: str, now: float) -> bool:
    """A lockless directory (an older colonet's, or one being made right now):
    stale once it is a minute old and none of its sockets answers."""
    try:
        if now - os.lstat(path).st_mtime < LEGACY_AGE_S:
            return False
        entries = [os.path.join(path, n) for n in os.listdir(path)]
    except OSError:
        return False
    return not any(_answers(entry) for entry in entries)


def _answers(path: str) -> bool:
    with contextlib.suppress(OSError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
            return True
    return False
