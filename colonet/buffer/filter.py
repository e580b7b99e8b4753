"""A filter: one netdev's epochs (EpochQueue) bound to one kernel backend.

The filter is where the hook operations meet the kernel: `seal` drains the
backend first (the epoch barrier), `commit` hands released packets back to
the backend in order, `failover` decides the fate of everything held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum

from colonet.buffer.backend import Backend
from colonet.buffer.epoch_queue import BufferLimits, EpochQueue
from colonet.buffer.hooks import FailoverRole
from colonet.buffer.status import NetdevStatus
from colonet.errors import UsageError

log = logging.getLogger(__name__)


class FilterState(StrEnum):
    BUFFERING = "buffering"
    PASSTHROUGH = "passthrough"  # failed over as primary: packets flow
    DISCARDING = "discarding"  # failed over as secondary: new packets die
    STOPPED = "stopped"


class NotBufferingError(UsageError):
    """A checkpoint or commit reached a filter that no longer buffers."""


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
            self.backend.drop([packet])

    @property
    def open_epoch(self) -> int:
        return self.queue.open_epoch

    @property
    def last_sealed(self) -> int:
        return self.queue.last_sealed

    def require_buffering(self, action: str) -> None:
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

    def stop(self) -> None:
        """Detach. Uncommitted packets are dropped, never released: their
        checkpoint was not acknowledged, so releasing them could show the
        world a state a secondary never had."""
        if self.state in (FilterState.BUFFERING, FilterState.DISCARDING):
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
            backend_details=describe() if describe is not None else {},
        )
