"""The output-commit check a client can make from outside (pure).

The guest's counter service answers every INC with the counter after the
increment, and the counter lives in guest RAM. If the network only ever
shows state that a checkpoint committed, then across a failover:

- every value the client received is strictly greater than the ones before
  it (no rollback, no value handed out twice), and
- the guest the secondary starts holds a counter at least as high as the
  last value the client received from the primary (nothing seen is lost).

Without buffering both fail: the client sees values from an epoch whose
checkpoint never reached the secondary, and the secondary hands them out
again. `check()` returns what it found, as sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    at: float  # monotonic seconds when the client received it
    request_id: int
    value: int


@dataclass(frozen=True)
class Verdict:
    violations: tuple[str, ...]
    last_before_kill: Reply | None
    first_after_kill: Reply | None

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def failover_gap_ms(self) -> float | None:
        """Last reply from the primary -> first reply from the secondary."""
        if self.last_before_kill is None or self.first_after_kill is None:
            return None
        return (self.first_after_kill.at - self.last_before_kill.at) * 1000


def check(
    replies: Sequence[Reply],
    killed_at: float,
    takeover_counter: int | None,
    *,
    took_over: bool | None = None,
) -> Verdict:
    """Judge a run: `replies` in arrival order, the primary killed at `killed_at`.

    `takeover_counter` is the counter of the guest the secondary started, if
    the secondary can read it (the embedded guest; a VM's memory is opaque,
    and then the replies alone are judged). `took_over` defaults to whether
    a counter was given; a run without a takeover fails.
    """
    if took_over is None:
        took_over = takeover_counter is not None
    violations: list[str] = []
    before = [r for r in replies if r.at < killed_at]
    after = [r for r in replies if r.at >= killed_at]
    highest: Reply | None = None
    for reply in replies:
        if highest is not None and reply.value <= highest.value:
            violations.append(
                f"rollback: request {reply.request_id} got {reply.value} after request "
                f"{highest.request_id} had already got {highest.value}"
            )
        if highest is None or reply.value > highest.value:
            highest = reply
    seen = max((r.value for r in before), default=0)
    if not took_over:
        violations.append("the secondary never took the guest over")
    elif takeover_counter is not None and takeover_counter < seen:
        violations.append(
            f"lost state: the client saw counter {seen} from the primary, the secondary "
            f"resumed at {takeover_counter} ({seen - takeover_counter} increment(s) lost)"
        )
    if not before:
        violations.append("no reply from the primary before the kill: nothing was checked")
    if took_over and not after:
        violations.append("no reply from the secondary after the takeover")
    return Verdict(
        violations=tuple(violations),
        last_before_kill=before[-1] if before else None,
        first_after_kill=after[0] if after else None,
    )
