"""Who owns a netdev's buffering, and is that process still running?

`colonet cleanup` removes only what a dead process left, unless forced, so
it never pulls the buffering out from under a live filter; and a second
colonet must not steer a netdev a live one holds (docs/DESIGN.md
invariant 7).

A pid alone cannot answer either question: from another PID namespace a
live owner's pid names nobody (or somebody else). So every filter holds,
while it steers a netdev, an exclusive flock(2) on one lock file per
netdev under `/run/colonet/` (`COLONET_RUN_DIR` overrides it), named by
the netdev's network namespace and ifindex. A lock is released by the kernel when its
holder dies, whatever namespace looks at it, so "the lock can be taken" is
the test of death. The file's content (pid, netdev) is for people and error
messages; the kernel tags name the file and keep the pid for humans.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from colonet.errors import NetdevBusyError, UnknownNetdevError

RUN_DIR_ENV = "COLONET_RUN_DIR"
DEFAULT_RUN_DIR = "/run/colonet"
LOCK_SUFFIX = ".lock"
# A probe (`colonet cleanup`) holds a free lock for an instant; a claim that
# meets one retries this long before it calls the netdev taken.
CLAIM_RETRY_S = 0.25


def run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


def this_netns() -> int:
    """The calling thread's network namespace (its nsfs inode number)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def netdev_lock_name(ifindex: int, netns: int | None = None) -> str:
    """The lock file of netdev `ifindex` (unique per namespace, unlike names)."""
    return f"net{this_netns() if netns is None else netns}-if{ifindex}{LOCK_SUFFIX}"


def lock_path(name: str) -> str:
    if os.sep in name or not name.endswith(LOCK_SUFFIX):
        raise ValueError(f"{name!r} is not a colonet lock file name")
    return os.path.join(run_dir(), name)


@dataclass
class NetdevClaim:
    """This process's exclusive hold on one netdev, until `release()`."""

    netdev: str
    path: str
    fd: int

    def release(self) -> None:
        """Remove the lock file, then let go of the lock.

        Unlinking while still holding it: nobody can take a file that is
        about to vanish (a claimer checks the path still names its file).
        """
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def claim_netdev(netdev: str) -> NetdevClaim:
    """Hold `netdev` for this process, or say which colonet holds it.

    Raises NetdevBusyError (exit code 2) naming the netdev and the owner's
    pid when another live colonet holds it, whatever its backend.
    """
    try:
        ifindex = socket.if_nametoindex(netdev)
    except OSError:
        raise UnknownNetdevError(
            f"unknown netdev {netdev!r}: no such network device in this network namespace"
        ) from None
    directory = run_dir()
    os.makedirs(directory, mode=0o755, exist_ok=True)
    path = os.path.join(directory, netdev_lock_name(ifindex))
    deadline = time.monotonic() + CLAIM_RETRY_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.02)  # perhaps only a cleanup probing it
                continue
            pid = holder.get("pid", "unknown")
            raise NetdevBusyError(
                f"netdev {netdev} is already buffered by another colonet (pid {pid}, "
                f"lock {path}): stop that one first; two filters on one netdev would "
                "each hold, or each release, the other's packets"
            ) from None
        if not _same_file(fd, path):
            os.close(fd)  # a cleanup removed the file we locked: take the new one
            continue
        holder_info = {"pid": os.getpid(), "netdev": netdev, "ifindex": ifindex}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info) + "\n").encode(), 0)
        return NetdevClaim(netdev, path, fd)


@dataclass
class NetdevClaims:
    """The claims on every netdev of one filter set, let go together."""

    claims: list[NetdevClaim]

    def release(self) -> None:
        for claim in reversed(self.claims):
            claim.release()


def claim_netdevs(netdevs: Sequence[str]) -> NetdevClaims:
    """Claim every netdev, or none: a refusal lets go of those already taken."""
    taken: list[NetdevClaim] = []
    try:
        for netdev in netdevs:
            taken.append(claim_netdev(netdev))
    except BaseException:
        NetdevClaims(taken).release()
        raise
    return NetdevClaims(taken)


def lock_held(name: str) -> bool | None:
    """Does a live process hold lock file `name`? None: there is no such file."""
    probe = _probe(lock_path(name))
    return None if probe is None else probe[0]


def holder_alive(lock: str | None, pid: int | None) -> bool:
    """Is the owner named by a kernel tag (its lock file, its pid) alive?

    The lock answers across PID namespaces; the pid the holder wrote in it
    must be the tag's, else the lock is a newer filter's on the same netdev
    and the tag's owner is dead. Without a lock file (a tag written before
    locks, or a file removed by hand), fall back to the pid, which is right
    only within one PID namespace.
    """
    if lock:
        try:
            probe = _probe(lock_path(lock))
        except ValueError:
            probe = None
        if probe is not None:
            held, holder = probe
            return held and (pid is None or holder.get("pid") in (None, pid))
    return pid is not None and owner_alive(pid)


def _probe(path: str) -> tuple[bool, dict[str, Any]] | None:
    """(held, what the holder wrote) of a lock file; None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True, _read_holder(fd)
    finally:
        os.close(fd)  # lets go of the probe's lock, if it got one
    return False, {}


def remove_stale_locks(netns: int | None = None) -> list[str]:
    """Delete the lock files no live process holds (`colonet cleanup`); with
    `netns`, only that namespace's (a test topology going away)."""
    prefix = "" if netns is None else f"net{netns}-"
    try:
        names = sorted(os.listdir(run_dir()))
    except FileNotFoundError:
        return []
    removed: list[str] = []
    for name in names:
        if name.startswith(prefix) and name.endswith(LOCK_SUFFIX):
            removed += _remove_if_stale(os.path.join(run_dir(), name))
    return removed


def _remove_if_stale(path: str) -> list[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return []  # held: its owner lives
    try:
        if not _same_file(fd, path):
            return []
        holder = _read_holder(fd)
        os.unlink(path)  # while holding it, as NetdevClaim.release does
        return [
            f"stale lock file {path} (netdev {holder.get('netdev', '?')}, "
            f"pid {holder.get('pid', '?')}, no longer running)"
        ]
    finally:
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child about to exec: be SIGKILLed when the parent dies.

    A filter process outliving a killed engine would hold the guest's
    packets with nobody to commit them; dying instead closes its netdev
    (fail-closed) until `colonet cleanup` or a new engine takes it.
    """
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def only_in_this_process(handler: Callable[[int, FrameType | None], Any]) -> Callable:
    """Wrap a signal handler so that only this process runs it.

    pyroute2 forks short-lived helpers (to enter a namespace) and stops them
    with SIGTERM. A forked child inherits our handlers; one that raises
    (KeyboardInterrupt, SystemExit) would unwind the parent's stack *in the
    child* and run its cleanups there: unlink the control socket, delete the
    namespaces. A child just exits instead.
    """
    owner = os.getpid()

    def guarded(signum: int, frame: FrameType | None) -> Any:
        if os.getpid() != owner:
            os._exit(128 + signum)
        return handler(signum, frame)

    return guarded
