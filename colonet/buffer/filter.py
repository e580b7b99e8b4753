"""A filter: one netdev's epochs (EpochQueue) bound to one kernel backend.

The filter is where the hook operations meet the kernel: `seal` drains the
backend first (the epoch barrier), `commit` hands released packets back to
the backend in order, `failover` decides the fate of everything held, and
`check_steering` notices kernel steering removed from outside colonet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from colonet.buffer.backend import Backend
from colonet.buffer.epoch_queue import BufferLimits, EpochQueue
from colonet.buffer.hooks import FailoverRole
from colonet.buffer.status import NetdevStatus
from colonet.errors import SteeringLostError, UsageError

log = logging.getLogger(__name__)


class FilterState(StrEnum):
    BUFFERING = "buffering"
    PASSTHROUGH = "passthrough"  # failed over as primary: packets flow
    DISCARDING = "discarding"  # failed over as secondary: new packets die
    # Steering removed from outside colonet: nothing more is released, new
    # packets die, the steering is put back to keep the netdev closed.
    STEERING_LOST = "steering-lost"
    STOPPED = "stopped"


# States in which colonet's steering must be in the kernel.
STEERED = (FilterState.BUFFERING, FilterState.DISCARDING, FilterState.STEERING_LOST)


class NotBufferingError(UsageError):
    """A checkpoint or commit reached a filter that no longer buffers."""


@dataclass(frozen=True, slots=True)
class SteeringLoss:
    """Kernel steering of one netdev found missing (docs/DESIGN.md invariant 7)."""

    netdev: str
    backend: str
    missing: tuple[str, ...]
    reinstall_error: str | None  # None: put back, the netdev is closed again
    held_packets: int  # still held, never to be released

    @property
    def detail(self) -> str:
        return f"vanished: {'; '.join(self.missing)}"

    @property
    def action(self) -> str:
        if self.reinstall_error is None:
            return (
                "steering re-installed so the netdev stays closed; "
                "nothing more is released, new output is dropped"
            )
        return (
            f"re-installing the steering failed ({self.reinstall_error}): the netdev "
            "may pass output unbuffered; nothing more is released"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "steering-lost",
            "netdev": self.netdev,
            "backend": self.backend,
            "detail": self.detail,
            "action": self.action,
            "held_packets": self.held_packets,
        }


class Filter:
    def __init__(
        self,
        netdev: str,
        backend: Backend,
        limits: BufferLimits,
        on_high_water: Callable[[str], None] | None = None,
    ) -> None:
        self.netdev = netdev
        self.backend = backend
        self.state = FilterState.STOPPED
        self.passed_through = 0
        self.dropped_after_failover = 0
        self.dropped_after_steering_lost = 0
        self.steering_losses = 0
        self.reason: str | None = None  # why the filter no longer buffers
        self._missing: tuple[str, ...] = ()  # what the last check found gone
        self.queue: EpochQueue[object] = EpochQueue(
            limits, on_high_water=(lambda: on_high_water(netdev)) if on_high_water else None
        )

    def start(self) -> None:
        self.state = FilterState.BUFFERING
        try:
            self.backend.start(self._deliver)
        except BaseException:
            self.state = FilterState.STOPPED
            raise

    def _deliver(self, packet: object, size: int) -> None:
        if self.state is FilterState.BUFFERING:
            if not self.queue.append(packet, size):
                self.backend.drop([packet])
        elif self.state is FilterState.PASSTHROUGH:
            self.passed_through += 1
            self.backend.release([packet])
        else:
            if self.state is FilterState.DISCARDING:
                self.dropped_after_failover += 1
            elif self.state is FilterState.STEERING_LOST:
                self.dropped_after_steering_lost += 1
            self.backend.drop([packet])

    @property
    def open_epoch(self) -> int:
        return self.queue.open_epoch

    @property
    def last_sealed(self) -> int:
        return self.queue.last_sealed

    def require_buffering(self, action: str) -> None:
        if self.state is FilterState.STEERING_LOST:
            raise SteeringLostError(
                f"cannot {action}: colonet's {self.backend.name} steering of {self.netdev} "
                f"was removed from outside colonet ({self.reason}); this filter releases "
                "nothing more: stop it (what it holds is dropped, never released) and "
                "start a new one"
            )
        if self.state is not FilterState.BUFFERING:
            raise NotBufferingError(
                f"cannot {action}: the filter on {self.netdev} is {self.state.value}, not buffering"
            )

    def drain(self) -> None:
        """The epoch barrier (docs/DESIGN.md invariant 4): everything the
        guest emitted so far is in the open epoch when this returns."""
        self.require_buffering("drain")
        self.backend.drain()

    def seal(self, *, drain: bool = True) -> int:
        """Seal the open epoch; `drain=False` when the caller just drained
        (a filter set drains every netdev before sealing any)."""
        self.require_buffering("seal an epoch")
        if drain:
            self.backend.drain()
        return self.queue.seal()

    def held(self) -> list[tuple[int, list[object]]]:
        """(epoch, packets) of every epoch still held, oldest first."""
        return self.queue.held()

    def commit(self, upto: int) -> int:
        self.require_buffering("commit")
        packets = self.queue.release(upto)
        self.backend.release(packets)
        return len(packets)

    def failover(self, role: FailoverRole) -> int:
        """Settle everything held per `role`, then stop buffering."""
        self.require_buffering(f"fail over as {role.value}")
        self.backend.drain()
        if role is FailoverRole.PRIMARY:
            packets = self.queue.release_all()
            self.backend.release(packets)
            self.state = FilterState.PASSTHROUGH
            self.backend.stop()
        else:
            # The peer's copy of the guest now speaks for it: anything this
            # host's guest still emits would contradict it, so the steering
            # stays and every new packet is dropped until the filter stops.
            packets = self.queue.discard()
            self.backend.drop(packets)
            self.state = FilterState.DISCARDING
        return len(packets)

    def check_steering(self) -> SteeringLoss | None:
        """Is the backend's kernel steering still in place? (invariant 7)

        Something outside colonet (a firewall reload, `tc qdisc del`, a
        `colonet cleanup --force`) may remove it while the guest runs; its
        output would then leave unbuffered. A filter that finds a piece
        missing stops for good: it releases nothing more (commits are
        refused), drops what arrives, and puts the steering back so the
        netdev stays closed. Returns a loss when something newly vanished
        (the caller reports it), None otherwise.
        """
        if self.state not in STEERED:
            return None
        try:
            missing = tuple(self.backend.check())
        except Exception as exc:  # cannot verify: as bad as gone
            missing = (f"colonet's steering of {self.netdev} (cannot check it: {exc})",)
        if not missing:
            self._missing = ()
            return None
        new = any(m not in self._missing for m in missing)
        self._missing = missing
        self.state = FilterState.STEERING_LOST
        error = None
        try:
            self.backend.reinstall_steering()
        except Exception as exc:  # reported; retried at the next check
            error = str(exc) or type(exc).__name__
        if not new:
            if error is not None:
                log.debug("%s: re-installing the steering failed again: %s", self.netdev, error)
            return None
        self.steering_losses += 1
        loss = SteeringLoss(self.netdev, self.backend.name, missing, error, self.queue.held_packets)
        self.reason = loss.detail
        return loss

    def stop(self) -> None:
        """Detach. Uncommitted packets are dropped, never released: their
        checkpoint was not acknowledged, so releasing them could show the
        world a state a secondary never had."""
        if self.state in STEERED:
            self.state = FilterState.STOPPED
            self.backend.drain()
            self.backend.drop(self.queue.discard())
            self.backend.stop()
        self.state = FilterState.STOPPED

    def status(self) -> NetdevStatus:
        describe = getattr(self.backend, "describe", None)
        return NetdevStatus(
            netdev=self.netdev,
            backend=self.backend.name,
            state=self.state.value,
            queue=self.queue.stats(),
            passed_through_packets=self.passed_through,
            dropped_after_failover_packets=self.dropped_after_failover,
            dropped_after_steering_lost_packets=self.dropped_after_steering_lost,
            steering_losses=self.steering_losses,
            reason=self.reason,
            backend_details=describe() if describe is not None else {},
        )
