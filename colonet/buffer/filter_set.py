"""One filter per netdev of a guest, driven together through the hooks.

`FilterSet` is the in-process implementation of `colonet.buffer.hooks.
FilterHooks`: the checkpoint engine, the filter process's control socket
and the CLI all use exactly `begin_checkpoint(n)`, `commit(n)` and
`failover(role)`. The filters come built (`colonet.backends.attach` puts
kernel backends behind them; tests use doubles), so this module is pure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from colonet.buffer.epoch_queue import EpochError
from colonet.buffer.filter import STEERED, Filter, SteeringLoss
from colonet.buffer.hooks import CommitResult, EpochMismatchError, FailoverResult, FailoverRole
from colonet.buffer.status import FilterSetStatus
from colonet.errors import UsageError

log = logging.getLogger(__name__)


class FilterSet:
    def __init__(
        self,
        filters: Sequence[Filter],
        clock: Callable[[], float] = time.monotonic,
        on_unsteered: Callable[[], None] | None = None,
    ) -> None:
        if not filters:
            raise UsageError("a filter set needs at least one netdev")
        self.filters = list(filters)
        self.clock = clock
        # Run once no filter steers its netdev any more (all stopped, or
        # failed over as primary): lets go of the claims on the netdevs
        # (`colonet.backends.attach`), only after the steering went.
        self._on_unsteered = on_unsteered
        # When each epoch opened: the age of the oldest unreleased epoch is
        # how long its first packet may have waited.
        self._opened_at: dict[int, float] = {self.open_epoch: clock()}
        self.on_release: Callable[[str, int, list[object]], None] | None = None

    # -- the hooks --------------------------------------------------------

    @property
    def open_epoch(self) -> int:
        return self.filters[0].open_epoch

    @property
    def last_sealed(self) -> int:
        return self.filters[0].last_sealed

    def begin_checkpoint(self, epoch: int | None = None) -> int:
        """Drain every netdev, then seal the open epoch on all of them.

        All drains come before any seal so that no netdev's epoch N closes
        while another still has epoch-N packets in flight. With `epoch`,
        the open epoch must be that number on every filter, or nothing is
        sealed (EpochMismatchError): engine and filters count one epoch.
        """
        for f in self.filters:
            f.require_buffering("seal an epoch")
        open_epochs = sorted({f.open_epoch for f in self.filters})
        if len(open_epochs) != 1:
            raise EpochMismatchError(f"the filters' open epochs differ: {open_epochs}")
        if epoch is not None and epoch != open_epochs[0]:
            raise EpochMismatchError(
                f"asked to seal epoch {epoch}, but the filters' open epoch is {open_epochs[0]}: "
                "refusing to seal or release anything"
            )
        for f in self.filters:
            f.drain()
        sealed = {f.seal(drain=False) for f in self.filters}
        (epoch,) = sealed
        self._opened_at[epoch + 1] = self.clock()
        log.info("sealed epoch %d on %d netdev(s)", epoch, len(self.filters))
        return epoch

    def commit(self, upto: int | None = None) -> CommitResult:
        """Release sealed epochs up to `upto` (default: all sealed).

        The epoch is checked against every filter before any packet moves.
        """
        for f in self.filters:
            f.require_buffering("commit")
        last = self.last_sealed
        if upto is None:
            upto = last
        elif upto < 1:
            raise EpochError(f"epoch {upto} does not exist: epochs are numbered from 1")
        if upto > last:
            sealed = f"sealed epochs go up to {last}" if last else "no epoch is sealed yet"
            raise EpochError(f"epoch {upto} does not exist or is not sealed: {sealed}")
        if upto and self.on_release is not None:
            for f in self.filters:
                for epoch, packets in f.held():
                    if epoch <= upto:
                        self.on_release(f.netdev, epoch, packets)
        released = sum(f.commit(upto) for f in self.filters) if upto else 0
        for epoch in [e for e in self._opened_at if e <= upto]:
            del self._opened_at[epoch]
        log.info("committed epoch %d: released %d packet(s)", upto, released)
        return CommitResult(upto, released)

    def oldest_epoch_age_s(self) -> float:
        """Seconds since the oldest epoch still held opened."""
        return self.clock() - min(self._opened_at.values())

    def failover(self, role: FailoverRole | str) -> FailoverResult:
        role = FailoverRole(role)
        for f in self.filters:
            f.require_buffering(f"fail over as {role.value}")
        result = FailoverResult(role, sum(f.failover(role) for f in self.filters))
        if role is FailoverRole.PRIMARY:
            self._unsteered()  # passthrough: the netdevs are free for another colonet
        log.warning(
            "failover as %s: %s %d held packet(s), buffering stopped",
            role.value,
            result.verb,
            result.settled_packets,
        )
        return result

    def check_steering(self) -> list[SteeringLoss]:
        """Check every filter's kernel steering (docs/DESIGN.md invariant 7);
        the losses found since the last check, for the caller to report. A
        filter that lost its steering refuses every later commit, and a
        commit checks all filters first, so the whole set stops releasing."""
        return [loss for f in self.filters if (loss := f.check_steering()) is not None]

    def stop(self) -> None:
        errors = []
        for f in self.filters:
            try:
                f.stop()
            except Exception as exc:  # keep removing the others
                errors.append(f"{f.netdev}: {exc}")
        self._unsteered()
        if errors:
            raise UsageError("stopping filters: " + "; ".join(errors))

    def _unsteered(self) -> None:
        on_unsteered, self._on_unsteered = self._on_unsteered, None
        if on_unsteered is not None:
            on_unsteered()

    # -- event loop glue --------------------------------------------------

    def fds(self) -> dict[int, Filter]:
        """The fds to read, of filters whose steering brings them packets
        (a backend whose fd died answers -1)."""
        fds = {f.backend.fileno(): f for f in self.filters if f.state in STEERED}
        fds.pop(-1, None)
        return fds

    def status(self, high_water_requests: int = 0) -> FilterSetStatus:
        netdevs = tuple(f.status() for f in self.filters)
        return FilterSetStatus(
            open_epoch=self.open_epoch,
            last_sealed=self.last_sealed,
            last_released=min(n.queue.last_released for n in netdevs),
            oldest_epoch_age_s=round(self.oldest_epoch_age_s(), 6),
            netdevs=netdevs,
            high_water_requests=high_water_requests,
        )
