"""What the checkpoint engine needs from a guest, whatever runs it.

Also the one piece of guest state the checkpoint format carries opaquely:
`DeviceSection`. It lives here, not in `colonet.checkpoint`, so that the
checkpoint layer depends on guests and never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_SECTION_NAME_BYTES = 64
_U32 = 2**32


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DeviceSection:
    """One named, versioned piece of device state, carried whole."""

    name: str
    version: int
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"device section name must be a non-empty str, got {self.name!r}")
        size = len(self.name.encode("utf-8"))
        if size > MAX_SECTION_NAME_BYTES:
            raise ValueError(
                f"device section name {self.name!r} is {size} bytes of utf-8, "
                f"at most {MAX_SECTION_NAME_BYTES} allowed"
            )
        if not _is_int(self.version) or not 0 <= self.version < _U32:
            raise ValueError(
                f"device section {self.name!r}: version must be an int in 0..2**32-1, "
                f"got {self.version!r}"
            )
        if not isinstance(self.data, bytes):
            if not isinstance(self.data, bytearray | memoryview):
                raise ValueError(
                    f"device section {self.name!r}: data must be bytes, "
                    f"got {type(self.data).__name__}"
                )
            object.__setattr__(self, "data", bytes(self.data))
        if len(self.data) >= _U32:
            raise ValueError(f"device section {self.name!r} holds 4 GiB or more")


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

    def restore(self, ram: memoryview, sections: Sequence[DeviceSection]) -> None:
        """Load a whole checkpoint (the secondary's takeover, before `activate`)."""

    def takeover_details(self) -> dict[str, Any]:
        """What a takeover event reports about the restored guest (may be {})."""

    def netdevs(self) -> list[str]:
        """Host-side network devices carrying the guest's traffic."""

    def activate(self) -> None:
        """Start running from the state loaded into it (failover)."""

    def shutdown(self) -> None: ...
