"""Filter backends by name.

Each kernel backend is one package under `colonet.backends` that exposes a
`KIND: BackendKind`; `BUILTIN` below names it, one line per backend. The
packages are imported only when a backend is asked for by name, so a host
without netfilterqueue can still run the tap backend (and the pure buffer
code imports none of this). A test registers a double with `register()`.

    BackendKind.open(netdev, limits, options) -> Backend  (looks the netdev
        up, installs nothing: `Backend.start` does)
    BackendKind.cleanup(force) -> [what was removed]  (`colonet cleanup`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from colonet.buffer.backend import Backend, BackendOptions
from colonet.buffer.epoch_queue import BufferLimits
from colonet.net.owner import remove_stale_locks
from colonet.registry import Registry

AUTO = "auto"

# name -> module exposing KIND. Adding a backend: one module, one line here.
BUILTIN: dict[str, str] = {
    "tap": "colonet.backends.tap",
    "nfqueue": "colonet.backends.nfqueue",
}

# What `auto` tries, in order: every Ethernet frame first, IP-only last.
AUTO_ORDER: tuple[str, ...] = ("tap", "nfqueue")


@dataclass(frozen=True)
class BackendKind:
    name: str
    summary: str  # one line for --help
    open: Callable[[str, BufferLimits, BackendOptions], Backend]
    cleanup: Callable[[bool], list[str]]


KINDS: Registry[BackendKind] = Registry("backend", BUILTIN, reserved=(AUTO,))
register = KINDS.register
unregister = KINDS.unregister
registered = KINDS.registered
names = KINDS.names
get = KINDS.get


def choices() -> tuple[str, ...]:
    return (AUTO, *names())


def preference(name: str) -> tuple[str, ...]:
    """The backends to try, in order, for `--backend name`."""
    if name == AUTO:
        return AUTO_ORDER
    get(name)  # an unknown name fails here, before anything is installed
    return (name,)


def cleanup_all(force: bool = False) -> list[str]:
    """Remove what crashed filters of every backend left (`colonet cleanup`),
    then the lock files no live filter holds (never a live one's, even
    with `force`: it still runs, and still owns its netdev)."""
    removed: list[str] = []
    for name in names():
        removed += get(name).cleanup(force)
    return removed + remove_stale_locks()
