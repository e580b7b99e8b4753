"""One filter per netdev of a guest, driven together through the hooks.

The checkpoint engine, the CLI and the control socket all use exactly these
operations: `begin_checkpoint()`, `commit(n)` and `failover(role)`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from colonet.buffer.backend import Backend
from colonet.buffer.epoch_queue import BufferLimits, EpochError
from colonet.buffer.filter import FailoverRole, Filter, FilterState
from colonet.buffer.nfqueue import NfqueueBackend, NfqueueConfig
from colonet.buffer.tap_backend import TapBackend, TapBackendConfig
from colonet.errors import KernelSetupError, UsageError
from colonet.net.links import NetdevInfo, describe_netdev

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tap", "nfqueue")


@dataclass(frozen=True)
class BackendOptions:
    """Per-backend settings; `batch_release` applies to whichever is used."""

    batch_release: bool = True
    nfqueue: NfqueueConfig = field(default_factory=NfqueueConfig)
    tap: TapBackendConfig = field(default_factory=TapBackendConfig)


def make_backend(
    kind: str, info: NetdevInfo, limits: BufferLimits, options: BackendOptions
) -> Backend:
    if kind == "tap":
        return TapBackend(
            info,
            replace(options.tap, batch_release=options.batch_release),
            limits.max_held_packets,
        )
    nfq = replace(options.nfqueue, batch_verdicts=options.batch_release)
    return NfqueueBackend(info, limits.max_held_packets, nfq)


class FilterSet:
    def __init__(
        self, filters: Sequence[Filter], clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not filters:
            raise UsageError("a filter set needs at least one netdev")
        self.filters = list(filters)
        self.clock = clock
        # When each epoch opened: the age of the oldest unreleased epoch is
        # how long its first packet may have waited.
        self._opened_at: dict[int, float] = {self.open_epoch: clock()}
        self.on_release: Callable[[str, int, list[object]], None] | None = None

    @classmethod
    def attach(
        cls,
        netdevs: Sequence[str],
        *,
        backend: str = "auto",
        limits: BufferLimits | None = None,
        options: BackendOptions | None = None,
        on_high_water: Callable[[str], None] | None = None,
    ) -> FilterSet:
        """Build and start one filter per netdev; all or none are attached.

        Every netdev is looked up before anything is installed, so a typo
        in the last name changes nothing on the host. `auto` holds every
        frame (tap backend) where the kernel allows it, else IP packets
        only (nfqueue), and says so in the log and in `status`.
        """
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        duplicates = {n for n in netdevs if list(netdevs).count(n) > 1}
        if duplicates:
            raise UsageError(f"netdev named more than once: {', '.join(sorted(duplicates))}")
        limits = limits or BufferLimits()
        options = options or BackendOptions()
        infos = [describe_netdev(name) for name in netdevs]
        first_choice = "tap" if backend == "auto" else backend
        started: list[Filter] = []
        try:
            for info in infos:
                f = Filter(
                    info.name,
                    make_backend(first_choice, info, limits, options),
                    limits,
                    on_high_water,
                )
                try:
                    f.start()
                except KernelSetupError as exc:
                    if backend != "auto":
                        raise
                    log.warning(
                        "%s: the tap backend is unavailable (%s); falling back to nfqueue, "
                        "which holds IP packets only",
                        info.name,
                        exc,
                    )
                    f = Filter(
                        info.name,
                        make_backend("nfqueue", info, limits, options),
                        limits,
                        on_high_water,
                    )
                    f.start()
                started.append(f)
        except BaseException:
            for f in reversed(started):
                f.stop()
            raise
        return cls(started)

    # -- the hooks --------------------------------------------------------

    @property
    def open_epoch(self) -> int:
        return self.filters[0].queue.open_epoch

    @property
    def last_sealed(self) -> int:
        return self.filters[0].queue.last_sealed

    def begin_checkpoint(self) -> int:
        """Drain every netdev, then seal the open epoch on all of them.

        All drains come before any seal so that no netdev's epoch N closes
        while another still has epoch-N packets in flight.
        """
        for f in self.filters:
            f._require_buffering("seal an epoch")
        for f in self.filters:
            f.backend.drain()
        sealed = {f.queue.seal() for f in self.filters}
        if len(sealed) != 1:
            raise RuntimeError(f"filters sealed different epochs: {sorted(sealed)}")
        epoch = sealed.pop()
        self._opened_at[epoch + 1] = self.clock()
        log.info("sealed epoch %d on %d netdev(s)", epoch, len(self.filters))
        return epoch

    def commit(self, upto: int | None = None) -> tuple[int, int]:
        """Release sealed epochs up to `upto` (default: all sealed).

        Returns (epoch committed up to, packets released). The epoch is
        checked against every filter before any packet moves.
        """
        for f in self.filters:
            f._require_buffering("commit")
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
                for epoch, packets in f.queue.held():
                    if epoch <= upto:
                        self.on_release(f.netdev, epoch, packets)
        released = sum(f.commit(upto) for f in self.filters) if upto else 0
        for epoch in [e for e in self._opened_at if e <= upto]:
            del self._opened_at[epoch]
        log.info("committed epoch %d: released %d packet(s)", upto, released)
        return upto, released

    def oldest_epoch_age_s(self) -> float:
        """Seconds since the oldest epoch still held opened."""
        return self.clock() - min(self._opened_at.values())

    def failover(self, role: FailoverRole | str) -> int:
        role = FailoverRole(role)
        for f in self.filters:
            f._require_buffering(f"fail over as {role.value}")
        settled = sum(f.failover(role) for f in self.filters)
        verb = "released" if role is FailoverRole.PRIMARY else "discarded"
        log.warning(
            "failover as %s: %s %d held packet(s), buffering stopped", role.value, verb, settled
        )
        return settled

    def stop(self) -> None:
        errors = []
        for f in self.filters:
            try:
                f.stop()
            except Exception as exc:  # keep removing the others
                errors.append(f"{f.netdev}: {exc}")
        if errors:
            raise UsageError("stopping filters: " + "; ".join(errors))

    # -- event loop glue --------------------------------------------------

    def fds(self) -> dict[int, Filter]:
        steering = (FilterState.BUFFERING, FilterState.DISCARDING)
        return {f.backend.fileno(): f for f in self.filters if f.state in steering}

    def status(self) -> dict[str, Any]:
        netdevs = [f.status() for f in self.filters]
        return {
            "open_epoch": self.open_epoch,
            "last_sealed": self.last_sealed,
            "last_released": min(n["last_released"] for n in netdevs),
            "oldest_epoch_age_s": round(self.oldest_epoch_age_s(), 6),
            "netdevs": netdevs,
        }
