"""How the engine tells the filters about checkpoints.

The engine only ever calls these three operations, so the same engine
drives filters in this process (`FilterSet` has them), in a `colonet filter
run` process (`ControlSocketHooks`), or none at all (`CountingHooks`).
"""

from __future__ import annotations

from typing import Protocol

from colonet.control.client import request


class FilterHooks(Protocol):
    def begin_checkpoint(self) -> int:
        """Seal the open epoch on every netdev (guest paused); its number."""

    def commit(self, upto: int | None = None) -> object:
        """The secondary has checkpoint `upto`: release epochs up to it."""

    def failover(self, role: str) -> object: ...


class ControlSocketHooks:
    """Hooks carried over a filter process's control socket."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def begin_checkpoint(self) -> int:
        return int(request(self.socket_path, {"op": "checkpoint"})["epoch"])

    def commit(self, upto: int | None = None) -> object:
        body: dict[str, object] = {"op": "commit"}
        if upto is not None:
            body["epoch"] = upto
        return request(self.socket_path, body)

    def failover(self, role: str) -> object:
        return request(self.socket_path, {"op": "failover", "role": role})


class CountingHooks:
    """No filters: epochs are only counted (a guest without netdevs)."""

    def __init__(self) -> None:
        self.sealed = 0
        self.committed = 0

    def begin_checkpoint(self) -> int:
        self.sealed += 1
        return self.sealed

    def commit(self, upto: int | None = None) -> object:
        self.committed = self.sealed if upto is None else upto
        return {"epoch": self.committed}

    def failover(self, role: str) -> object:
        return {"role": role}
