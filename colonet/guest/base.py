"""What the checkpoint engine needs from a guest, whatever runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from colonet.checkpoint.pages import DeviceSection


class Guest(Protocol):
    page_size: int
    ram_pages: int

    def pause(self) -> None:
        """Stop the guest; returns once nothing in it is running."""

    def resume(self) -> None: ...

    def ram_view(self) -> memoryview:
        """All of RAM, read-only; consistent only while paused."""

    def collect_dirty(self) -> list[int]:
        """Pages dirtied since the last call (read-and-clear, while paused)."""

    def save_devices(self) -> list[DeviceSection]: ...

    def load_devices(self, sections: Sequence[DeviceSection]) -> None: ...

    def netdevs(self) -> list[str]:
        """Host-side network devices carrying the guest's traffic."""

    def activate(self) -> None:
        """Start running from the state loaded into it (failover)."""

    def shutdown(self) -> None: ...
