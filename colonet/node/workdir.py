"""A primary's private directory (its filter process's control socket),
and the sweep that removes those whose owner died without cleaning up.

A SIGKILLed primary cannot remove its directory. Each holds an exclusive
flock on `owner.lock` for as long as its primary lives; the kernel drops
the lock when the process dies, however it dies. The sweep removes only
directories whose lock it can take, which is right across PID namespaces
too (a pid number would not be).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile

PREFIX = "colonet-primary-"
LOCK_NAME = "owner.lock"


class Workdir:
    def __init__(self, parent: str | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
        self._lock_fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def sweep_stale_workdirs(parent: str | None = None) -> list[str]:
    """Remove the directories of primaries that died; the paths removed."""
    parent = parent or tempfile.gettempdir()
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not name.startswith(PREFIX) or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # being created, or not one of ours: leave it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its primary lives
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
