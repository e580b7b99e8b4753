"""A filter: one netdev's epochs (EpochQueue) bound to one kernel backend.

The filter is where the hook operations meet the kernel: `seal` drains the
backend first (the epoch barrier), `commit` hands released packets back to
the backend in order, `failover` decides the fate of everything held.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from colonet.buffer.backend import Backend
from colonet.buffer.epoch_queue import BufferLimits, EpochQueue
from colonet.errors import UsageError

log = logging.getLogger(__name__)


class FailoverRole(StrEnum):
    PRIMARY = "primary"  # this host goes on alone: release, stop buffering
    SECONDARY = "secondary"  # the peer took over: discard, stop buffering


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

    def _require_buffering(self, action: str) -> None:
        if self.state is not FilterState.BUFFERING:
            raise NotBufferingError(
                f"cannot {action}: the filter on {self.netdev} is {self.state.value}, not buffering"
            )

    def seal(self) -> int:
        self._require_buffering("seal an epoch")
        self.backend.drain()
        return self.queue.seal()

    def commit(self, upto: int) -> int:
        self._require_buffering("commit")
        packets = self.queue.release(upto)
        self.backend.release(packets)
        return len(packets)

    def failover(self, role: FailoverRole) -> int:
        """Settle everything held per `role`, then stop buffering."""
        self._require_buffering(f"fail over as {role.value}")
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

    def status(self) -> dict[str, Any]:
        stats = dataclasses.asdict(self.queue.stats())
        stats.update(
            netdev=self.netdev,
            backend=self.backend.name,
            state=self.state.value,
            passed_through_packets=self.passed_through,
            dropped_after_failover_packets=self.dropped_after_failover,
        )
        extra = getattr(self.backend, "describe", None)
        if extra is not None:
            stats.update(extra())
        return stats
