"""Kinds by name, for the backend and guest registries.

Built-in kinds are modules exposing `KIND` (a record with a `name`),
imported only when first asked for, so a host without one kind's
dependencies can still use the others; tests and plug-ins `register` more.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

from colonet.errors import UsageError


class Named(Protocol):
    @property
    def name(self) -> str: ...


K = TypeVar("K", bound=Named)


class Registry(Generic[K]):
    def __init__(self, what: str, builtin: dict[str, str], reserved: tuple[str, ...] = ()):
        self.what = what  # "backend", "guest kind": for messages
        self.builtin = builtin  # name -> module exposing KIND
        self.reserved = reserved  # names that are not kinds (e.g. "auto")
        self._kinds: dict[str, K] = {}

    def register(self, kind: K) -> None:
        if kind.name in self.reserved or not kind.name.replace("-", "_").isidentifier():
            raise ValueError(f"{kind.name!r} cannot name a {self.what}")
        self._kinds[kind.name] = kind

    def unregister(self, name: str) -> None:
        self._kinds.pop(name, None)

    @contextmanager
    def registered(self, kind: K) -> Iterator[K]:
        """Register `kind` for the duration of a `with` block (tests)."""
        self.register(kind)
        try:
            yield kind
        finally:
            self.unregister(kind.name)

    def names(self) -> tuple[str, ...]:
        """Every kind that can be asked for by name, built-in ones first."""
        return tuple(self.builtin) + tuple(n for n in self._kinds if n not in self.builtin)

    def get(self, name: str) -> K:
        if name in self._kinds:
            return self._kinds[name]
        module = self.builtin.get(name)
        if module is None:
            choices = ", ".join((*self.reserved, *self.names()))
            raise UsageError(f"unknown {self.what} {name!r} (choose from {choices})")
        kind: K = importlib.import_module(module).KIND
        self._kinds[name] = kind
        return kind
