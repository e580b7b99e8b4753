"""The narrow interface every buffer backend implements.

A backend owns the kernel side of one filter: it steers a netdev's guest
output to colonet, hands each packet to `deliver` as it arrives, and later
lets packets go on (`release`) or destroys them (`drop`). The epoch
bookkeeping is not here; it lives in `EpochQueue`, shared by all backends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# deliver(packet handle, size in bytes)
Deliver = Callable[[object, int], None]


class Backend(Protocol):
    name: str

    def start(self, deliver: Deliver) -> None:
        """Install kernel state; from now on guest output goes to `deliver`."""

    def fileno(self) -> int:
        """An fd that becomes readable when packets are waiting."""

    def poll(self) -> None:
        """Deliver whatever is ready now, without blocking."""

    def drain(self) -> None:
        """Deliver every packet the kernel already holds for this netdev.

        This is the epoch barrier (docs/DESIGN.md invariant 4): after it returns,
        nothing emitted before the call is still on its way to `deliver`.
        """

    def release(self, packets: Sequence[object]) -> None:
        """Let `packets` go on, in the given (arrival) order."""

    def drop(self, packets: Sequence[object]) -> None:
        """Destroy `packets`; they never leave the host."""

    def stop(self) -> None:
        """Remove everything `start` installed; packets still held are dropped.

        Tolerates pieces already gone (removed from outside, see `check`)."""

    def check(self) -> list[str]:
        """What of the kernel state `start` installed is missing now, one
        phrase per piece ("the clsact qdisc on tap0"); empty when all is in
        place. Called every ~200 ms from the filter's loop, so it must be
        cheap and must not block. A piece it cannot verify counts as missing.
        """

    def reinstall_steering(self) -> None:
        """After `check` found pieces missing: install them again, so that
        the netdev's output comes to colonet (and is dropped there) instead
        of leaving unbuffered. Raises if the kernel refuses."""


@dataclass(frozen=True)
class BackendOptions:
    """Settings every backend understands; each applies them its own way."""

    # Release an epoch in one batch (a TX ring, one batch verdict) rather
    # than packet by packet.
    batch_release: bool = True
    # Keep each held packet's bytes even where the kernel holds the packet
    # (nfqueue), so `filter dump` and --capture-released can write them.
    retain_payloads: bool = False
