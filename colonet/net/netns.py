"""Run code inside a named network namespace without moving the process.

`setns(2)` changes the namespace of the calling *thread* only, so work that
must happen inside another namespace (opening a socket, writing a per-netns
sysctl, binding an NFQUEUE) runs in a short-lived thread that enters the
namespace first. A socket keeps the namespace it was created in, so the
caller can use it from any thread afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from colonet.errors import UsageError

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def enter_netns(name: str) -> None:
    """Move the calling thread into netns `name` (see module docstring)."""
    try:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"no network namespace named {name!r}") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """Call `fn` in a thread inside netns `name` and return its result.

    `None` means the caller's own namespace, so call sites need no branch.
    """
    if name is None:
        return fn()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            enter_netns(name)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"netns-{name}")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def socket_in_netns(name: str | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    return run_in_netns(name, lambda: socket.socket(family, type_, proto))


def write_sysctl(name: str | None, key: str, value: str) -> str:
    """Set a per-netns sysctl (dotted key) and return its previous value.

    /proc/sys/net shows the namespace of the thread that opens the file, so
    opening it inside the netns thread is enough.
    """
    path = "/proc/sys/" + key.replace(".", "/")

    def swap() -> str:
        with open(path) as f:
            old = f.read().strip()
        with open(path, "w") as f:
            f.write(value)
        return old

    return run_in_netns(name, swap)


def read_proc_net(relpath: str) -> str:
    """Read a /proc/net file of the calling thread's namespace.

    `/proc/thread-self`, not `/proc/net` (= `/proc/self/net`): the latter
    follows the process leader, which may be in another namespace.
    """
    with open("/proc/thread-self/net/" + relpath) as f:
        return f.read()
