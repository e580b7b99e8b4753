"""Failover bookkeeping: NONE -> REQUIRED -> ACTIVE -> COMPLETED (pure).

A trigger (heartbeat loss, a broken connection, an operator's request)
makes failover REQUIRED; the first trigger wins and later ones are only
kept (`ignored`). It becomes ACTIVE only when no checkpoint is being
applied, so a takeover always starts from a whole checkpoint
(docs/DESIGN.md invariant 5), and COMPLETED once the guest runs on (secondary) or the
filters are settled (primary). The record of a finished failover is the
`FailoverEvent` every exit reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from colonet.errors import UsageError

MODES = ("secondary", "primary", "fenced")
REASONS = ("request", "heartbeat", "error")


class FailoverState(Enum):
    NONE = "none"
    REQUIRED = "required"
    ACTIVE = "active"
    COMPLETED = "completed"


class FailoverError(UsageError):
    """A failover step asked for in the wrong state."""


def reason_of_peer_loss(peer_lost_reason: str) -> str:
    """Map the transport's loss reason onto the reasons failover reports."""
    return peer_lost_reason if peer_lost_reason in ("heartbeat", "request") else "error"


@dataclass(frozen=True)
class FailoverEvent:
    """What one side did when replication ended, as reported to operators.

    mode: "secondary" took over, "primary" went on alone, or "fenced" (the
    primary stood down because the secondary took over). last_committed is
    the epoch the surviving guest carries on from (secondary) or the last
    one the secondary acknowledged (primary).
    """

    mode: str
    reason: str
    detail: str
    last_committed: int | None
    state: str = FailoverState.COMPLETED.value
    failover_ms: float | None = None  # trigger -> completed

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"failover mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.reason not in REASONS:
            raise ValueError(f"failover reason {self.reason!r} is not one of {', '.join(REASONS)}")

    def to_json(self) -> dict[str, object]:
        return {
            "event": "failover",
            "mode": self.mode,
            "reason": self.reason,
            "detail": self.detail,
            "last_committed": self.last_committed,
            "state": self.state,
            "failover_ms": None if self.failover_ms is None else round(self.failover_ms, 2),
        }


class Failover:
    """One side's failover state; fed triggers and times, never does I/O."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"failover mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.state = FailoverState.NONE
        self.reason: str | None = None
        self.detail = ""
        self.required_at: float | None = None
        self.ignored: list[tuple[str, str]] = []  # triggers after the first

    def require(self, reason: str, detail: str, now: float) -> bool:
        """Record a trigger; True when it is the one that starts failover."""
        if reason not in REASONS:
            raise ValueError(f"failover reason {reason!r} is not one of {', '.join(REASONS)}")
        if self.state is not FailoverState.NONE:
            self.ignored.append((reason, detail))
            return False
        self.state, self.reason, self.detail, self.required_at = (
            FailoverState.REQUIRED,
            reason,
            detail,
            now,
        )
        return True

    @property
    def required(self) -> bool:
        return self.state is FailoverState.REQUIRED

    def start(self, *, applying: bool) -> bool:
        """REQUIRED -> ACTIVE, unless a checkpoint is being applied (then wait)."""
        if self.state is not FailoverState.REQUIRED:
            raise FailoverError(f"failover cannot start from state {self.state.value}")
        if applying:
            return False
        self.state = FailoverState.ACTIVE
        return True

    def complete(self, last_committed: int | None, now: float) -> FailoverEvent:
        if self.state is not FailoverState.ACTIVE:
            raise FailoverError(f"failover cannot complete from state {self.state.value}")
        assert self.reason is not None and self.required_at is not None
        self.state = FailoverState.COMPLETED
        return FailoverEvent(
            mode=self.mode,
            reason=self.reason,
            detail=self.detail,
            last_committed=last_committed,
            failover_ms=(now - self.required_at) * 1000,
        )

    def status(self) -> dict[str, object]:
        return {"mode": self.mode, "state": self.state.value, "reason": self.reason}
