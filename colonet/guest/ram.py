"""Guest RAM: 4 KiB pages in an anonymous mapping, with dirty tracking.

Every write goes through `write`, which marks the pages it touches dirty;
`collect_dirty` hands the set to a checkpoint and starts a new one in the
same step, under the same lock as writes, so no write is ever lost between
"read the bitmap" and "clear the bitmap".
"""

from __future__ import annotations

import mmap
import threading

PAGE_SIZE = 4096


class GuestRam:
    def __init__(self, pages: int, page_size: int = PAGE_SIZE) -> None:
        if pages <= 0:
            raise ValueError(f"guest RAM needs at least one page, got {pages}")
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size} is not a power of two")
        self.pages = pages
        self.page_size = page_size
        self._mem = mmap.mmap(-1, pages * page_size)
        self._view = memoryview(self._mem)
        self._dirty: set[int] = set(range(pages))  # nothing synced yet
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.pages * self.page_size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"access of {length} bytes at {offset} is outside guest RAM of {self.size} bytes"
            )

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        if not data:
            return
        first, last = offset // self.page_size, (offset + len(data) - 1) // self.page_size
        with self._lock:
            self._view[offset : offset + len(data)] = data
            self._dirty.update(range(first, last + 1))

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self._view[offset : offset + length])

    def view(self) -> memoryview:
        """Read-only view of all of RAM (read it while the guest is paused)."""
        return self._view.toreadonly()

    def collect_dirty(self) -> list[int]:
        """Pages written since the last call, ascending; clears the set."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return sorted(dirty)

    def load(self, image: bytes | memoryview) -> None:
        """Replace all of RAM (activation on the secondary); marks it all dirty."""
        if len(image) != self.size:
            raise ValueError(f"RAM image of {len(image)} bytes, guest RAM is {self.size}")
        with self._lock:
            self._view[:] = image
            self._dirty = set(range(self.pages))

    def close(self) -> None:
        self._view.release()
        self._mem.close()
