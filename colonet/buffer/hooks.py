"""The hook interface: the only way a checkpointing system drives filters.

    begin_checkpoint(n) -> n      the guest is paused: drain, seal epoch n
    commit(n)           -> CommitResult     checkpoint n is safe: release <= n
    failover(role)      -> FailoverResult   settle what is held, stop buffering

The same three calls reach filters in this process (`FilterSet`), in a
`colonet filter run` process (`colonet.control.filter_hooks`), or none at
all (`CountingHooks`). The engine's checkpoint number and the filters'
epoch number are one number (docs/DESIGN.md, "The checkpoint transaction"):
the engine says which epoch it seals, and filters whose open epoch is
another refuse with `EpochMismatchError` before anything is sealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from colonet.buffer.epoch_queue import EpochError


class FailoverRole(StrEnum):
    PRIMARY = "primary"  # this host goes on alone: release, stop buffering
    SECONDARY = "secondary"  # the peer took over: discard, stop buffering


class EpochMismatchError(EpochError):
    """The checkpointing system and the filters disagree on the epoch number.

    Nothing was sealed or released: whoever drives the filters must stop
    releasing (fail closed) rather than guess which number is right.
    """


@dataclass(frozen=True, slots=True)
class CommitResult:
    epoch: int  # committed up to this epoch (0: nothing sealed yet)
    released_packets: int

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "released_packets": self.released_packets}


@dataclass(frozen=True, slots=True)
class FailoverResult:
    role: FailoverRole
    settled_packets: int  # released (primary) or discarded (secondary)

    @property
    def verb(self) -> str:
        return "released" if self.role is FailoverRole.PRIMARY else "discarded"

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role.value, f"{self.verb}_packets": self.settled_packets}


class FilterHooks(Protocol):
    def begin_checkpoint(self, epoch: int | None = None) -> int:
        """Drain and seal the open epoch on every netdev (guest paused).

        With `epoch`, the open epoch must be that one (else
        EpochMismatchError, nothing sealed). Returns the sealed epoch."""

    def commit(self, upto: int | None = None) -> CommitResult:
        """The secondary has checkpoint `upto`: release epochs up to it."""

    def failover(self, role: FailoverRole) -> FailoverResult: ...


class CountingHooks:
    """No filters: epochs are only counted (a guest without netdevs)."""

    def __init__(self) -> None:
        self.sealed = 0
        self.committed = 0

    def begin_checkpoint(self, epoch: int | None = None) -> int:
        if epoch is not None and epoch != self.sealed + 1:
            raise EpochMismatchError(
                f"asked to seal epoch {epoch}, but the open epoch is {self.sealed + 1}"
            )
        self.sealed += 1
        return self.sealed

    def commit(self, upto: int | None = None) -> CommitResult:
        self.committed = self.sealed if upto is None else upto
        return CommitResult(self.committed, 0)

    def failover(self, role: FailoverRole) -> FailoverResult:
        return FailoverResult(FailoverRole(role), 0)
