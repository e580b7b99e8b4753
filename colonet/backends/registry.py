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

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from colonet.buffer.backend import Backend, BackendOptions
from colonet.buffer.epoch_queue import BufferLimits
from colonet.errors import UsageError

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


_registered: dict[str, BackendKind] = {}


def register(kind: BackendKind) -> None:
    if kind.name == AUTO or not kind.name.isidentifier():
        raise ValueError(f"{kind.name!r} cannot name a backend")
    _registered[kind.name] = kind


def unregister(name: str) -> None:
    _registered.pop(name, None)


@contextmanager
def registered(kind: BackendKind) -> Iterator[BackendKind]:
    """Register `kind` for the duration of a `with` block (tests)."""
    register(kind)
    try:
        yield kind
    finally:
        unregister(kind.name)


def names() -> tuple[str, ...]:
    """Every backend that can be asked for by name, built-in ones first."""
    return tuple(BUILTIN) + tuple(n for n in _registered if n not in BUILTIN)


def choices() -> tuple[str, ...]:
    return (AUTO, *names())


def get(name: str) -> BackendKind:
    if name in _registered:
        return _registered[name]
    module = BUILTIN.get(name)
    if module is None:
        raise UsageError(f"unknown backend {name!r} (choose from {', '.join(choices())})")
    kind: BackendKind = importlib.import_module(module).KIND
    _registered[name] = kind
    return kind


def preference(name: str) -> tuple[str, ...]:
    """The backends to try, in order, for `--backend name`."""
    if name == AUTO:
        return AUTO_ORDER
    get(name)  # an unknown name fails here, before anything is installed
    return (name,)


def cleanup_all(force: bool = False) -> list[str]:
    """Remove what crashed filters of every backend left (`colonet cleanup`)."""
    removed: list[str] = []
    for name in names():
        removed += get(name).cleanup(force)
    return removed
