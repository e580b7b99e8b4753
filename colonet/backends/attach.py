"""Attach one filter per netdev, all or none, with backends from the registry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from colonet.backends import registry
from colonet.buffer.backend import BackendOptions
from colonet.buffer.epoch_queue import BufferLimits
from colonet.buffer.filter import Filter
from colonet.buffer.filter_set import FilterSet
from colonet.errors import KernelSetupError, UsageError
from colonet.net.owner import NetdevClaims, claim_netdevs

log = logging.getLogger(__name__)


def attach_filters(
    netdevs: Sequence[str],
    *,
    backend: str = registry.AUTO,
    limits: BufferLimits | None = None,
    options: BackendOptions | None = None,
    on_high_water: Callable[[str], None] | None = None,
    claim: Callable[[Sequence[str]], NetdevClaims] | None = None,
) -> FilterSet:
    """Build and start one filter per netdev; all or none are attached.

    Every netdev is looked up (each backend's `open`) and claimed for this
    process (`colonet.net.owner`: a netdev another live colonet buffers is
    refused, whatever either backend) before anything is installed, so a
    typo in the last name, or a taken netdev, changes nothing on the host.
    The claims last while the filter set steers: until it stops or fails
    over as primary.
    `auto` tries the backends of `registry.AUTO_ORDER` in turn on each
    netdev (every frame where the kernel allows it, else IP packets only)
    and says so in the log; `status` names the one in use.
    """
    duplicates = sorted({n for n in netdevs if list(netdevs).count(n) > 1})
    if duplicates:
        raise UsageError(f"netdev named more than once: {', '.join(duplicates)}")
    if not netdevs:
        raise UsageError("a filter set needs at least one netdev")
    order = registry.preference(backend)
    limits = limits or BufferLimits()
    options = options or BackendOptions()
    first = registry.get(order[0])
    filters = [
        Filter(name, first.open(name, limits, options), limits, on_high_water) for name in netdevs
    ]
    claims = (claim or claim_netdevs)(netdevs)
    started: list[Filter] = []
    try:
        for f in filters:
            started.append(_start(f, order[1:], limits, options, on_high_water))
    except BaseException:
        try:
            for f in reversed(started):
                f.stop()
        finally:
            claims.release()
        raise
    return FilterSet(started, on_unsteered=claims.release)


def _start(
    f: Filter,
    fallbacks: Sequence[str],
    limits: BufferLimits,
    options: BackendOptions,
    on_high_water: Callable[[str], None] | None,
) -> Filter:
    """Start `f`, or else a filter on the next backend that the kernel allows."""
    for next_name in (*fallbacks, None):
        try:
            f.start()
            return f
        except KernelSetupError as exc:
            if next_name is None:
                raise
            log.warning(
                "%s: the %s backend is unavailable (%s); falling back to %s",
                f.netdev,
                f.backend.name,
                exc,
                next_name,
            )
            backend = registry.get(next_name).open(f.netdev, limits, options)
            f = Filter(f.netdev, backend, limits, on_high_water)
    raise AssertionError("unreachable: the last candidate re-raises")
