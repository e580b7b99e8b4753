"""The secondary's copy of guest RAM and device state, changed only whole.

An incoming checkpoint is first staged: decoded and verified in full, with
RAM untouched. Only a staged checkpoint can be applied, and applying it
cannot fail half-way (every bound was checked at staging), so the cache is
always exactly checkpoint N or N+1, never a mix (docs/DESIGN.md invariant 5).
Pure: RAM is an anonymous mapping (memory, not I/O); no sockets, no files.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from colonet.checkpoint.pages import (
    DecodedCheckpoint,
    DeviceSection,
    checkpoint_stats,
    decode_checkpoint,
)
from colonet.errors import UsageError

__all__ = ["CheckpointOrderError", "RamCache", "StagedCheckpoint"]

# Zero runs are written from this block, so a huge zero run needs no huge buffer.
_ZERO_FILL_BYTES = 1 << 20


class CheckpointOrderError(UsageError, ValueError):
    """A checkpoint does not follow the one the cache holds (or the first is not FULL)."""


@dataclass(frozen=True)
class StagedCheckpoint:
    """A verified checkpoint waiting to be applied (or discarded)."""

    decoded: DecodedCheckpoint
    owner: RamCache = field(repr=False, compare=False)

    @property
    def epoch(self) -> int:
        return self.decoded.epoch

    @property
    def full(self) -> bool:
        return self.decoded.full

    def stats(self) -> dict[str, int]:
        return checkpoint_stats(self.decoded)


class RamCache:
    """Guest RAM of `ram_pages` pages of `page_size` bytes, plus device sections.

    `applied_epoch` is None until the first (FULL) checkpoint is applied;
    after that every checkpoint must be exactly `applied_epoch + 1`.
    """

    def __init__(self, page_size: int, ram_pages: int) -> None:
        for name, value in (("page_size", page_size), ("ram_pages", ram_pages)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.page_size = page_size
        self.ram_pages = ram_pages
        self._mem = mmap.mmap(-1, page_size * ram_pages)  # lazily zero, unlike bytearray
        self._view = memoryview(self._mem)
        self._sections: dict[str, DeviceSection] = {}
        self._applied_epoch: int | None = None

    @property
    def size(self) -> int:
        return self.page_size * self.ram_pages

    @property
    def applied_epoch(self) -> int | None:
        return self._applied_epoch

    @property
    def sections(self) -> Mapping[str, DeviceSection]:
        """Device state of the applied checkpoint (read-only)."""
        return MappingProxyType(self._sections)

    def _check_order(self, epoch: int, full: bool) -> None:
        if self._applied_epoch is None:
            if not full:
                raise CheckpointOrderError(
                    f"checkpoint {epoch} carries only dirty pages, but nothing is applied "
                    "yet: the first checkpoint must be FULL"
                )
        elif epoch != self._applied_epoch + 1:
            raise CheckpointOrderError(
                f"checkpoint {epoch} does not follow the applied checkpoint "
                f"{self._applied_epoch} (expected {self._applied_epoch + 1})"
            )

    def stage(self, body: bytes | bytearray | memoryview) -> StagedCheckpoint:
        """Decode and verify `body` without touching RAM.

        CheckpointFormatError for a malformed body; CheckpointOrderError when
        it could not be applied next, so the secondary never acknowledges
        (VMSTATE_RECEIVED) a checkpoint it cannot load. A bytearray body must
        not change until the staged checkpoint is applied or discarded.
        """
        decoded = decode_checkpoint(
            body, expect_page_size=self.page_size, expect_ram_pages=self.ram_pages
        )
        self._check_order(decoded.epoch, decoded.full)
        return StagedCheckpoint(decoded, self)

    def apply(self, staged: StagedCheckpoint) -> None:
        """Write all of `staged` into RAM, replace device state, advance the epoch.

        All checks come before the first write; the writes themselves cannot
        fail on bounds, so RAM moves from N to N+1 in one step.
        """
        if staged.owner is not self:
            raise CheckpointOrderError(f"checkpoint {staged.epoch} was staged by another RAM cache")
        self._check_order(staged.epoch, staged.full)
        page_size, view = self.page_size, self._view
        zero_block = memoryview(b"")
        for start, count, data in staged.decoded.runs:
            begin, end = start * page_size, (start + count) * page_size
            if data is not None:
                view[begin:end] = data
                continue
            if not zero_block:
                zero_block = memoryview(bytes(min(_ZERO_FILL_BYTES, self.size)))
            for offset in range(begin, end, len(zero_block)):
                step = min(len(zero_block), end - offset)
                view[offset : offset + step] = zero_block[:step]
        self._sections = dict(staged.decoded.sections)
        self._applied_epoch = staged.epoch

    def discard(self, staged: StagedCheckpoint) -> None:
        """Drop a staged checkpoint (cut transfer, failover): RAM stays as it is.

        Nothing to undo, since staging never touches RAM; this call exists so
        the caller's intent reads in the code.
        """
        del staged

    def read_page(self, index: int) -> bytes:
        if not isinstance(index, int) or not 0 <= index < self.ram_pages:
            raise IndexError(f"page {index!r} is outside RAM of {self.ram_pages} pages")
        return bytes(self._view[index * self.page_size : (index + 1) * self.page_size])

    def view(self) -> memoryview:
        """Read-only view of RAM, e.g. to load it into the guest at failover."""
        return self._view.toreadonly()

    def digest(self) -> bytes:
        """sha256 of all of RAM (end-to-end checks against the primary)."""
        return hashlib.sha256(self._view).digest()

    def close(self) -> None:
        """Unmap RAM. Views handed out by `view()` must be released first."""
        self._view.release()
        self._mem.close()

    def __enter__(self) -> RamCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
