"""The pages another process wrote in one of its mappings: PAGEMAP_SCAN.

The I/O half of colonet/guest/dirty_scan.py: opens /proc/<pid>/pagemap and
makes the ioctl. The mapping must have been registered with userfaultfd
write-protection in WP_ASYNC mode by the process itself (QEMU does it
through tools/qemu_dirty/uffd_wp_shim.c); otherwise the scan refuses with
EPERM rather than calling untracked pages clean.

    with PagemapScanner(pid, start, length) as scanner:
        scanner.collect()        # written since the last collect, re-armed
        scanner.collect_runs()   # the same as (first page, count) runs
        scanner.peek_runs()      # written so far, without re-arming

Opening another process's pagemap needs ptrace-read access to it (same
user, or root).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from colonet.errors import ColonetError
from colonet.guest.dirty_scan import (
    PAGE_REGION,
    PAGEMAP_SCAN,
    Run,
    decode_walk_end,
    encode_probe_arg,
    encode_scan_arg,
    runs_to_pages,
    walk,
)

PAGE_SIZE = 4096


class DirtyTrackingError(ColonetError):
    """The kernel would not say which pages were written."""


_WHY = {
    errno.ENOTTY: "this kernel has no PAGEMAP_SCAN (needs Linux >= 6.7)",
    errno.EPERM: (
        "the range is not registered for asynchronous write-protection in that process "
        "(the uffd_wp_shim helper did not load, or registered another range)"
    ),
    errno.EINVAL: "the kernel refused the scan's arguments",
    errno.ESRCH: "the process is gone",
}


def find_mappings(pid: int, path: str) -> list[tuple[int, int]]:
    """[start, end) of each mapping of the file `path` in process `pid`
    (matched by device and inode, so an unlinked file still matches)."""
    st = os.stat(path)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    found = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 5:
                continue
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            if (major, minor, int(fields[4])) == want:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                found.append((start, end))
    return found


class PagemapScanner:
    """Written pages of [start, start + length) in process `pid`, as indices
    of `page_size` pages counted from `start`."""

    def __init__(
        self, pid: int, start: int, length: int, page_size: int = PAGE_SIZE, vec_len: int = 4096
    ) -> None:
        if start % page_size or length <= 0 or length % page_size:
            raise ValueError(f"range {start:#x}+{length} is not whole pages of {page_size}")
        self.pid = pid
        self.start = start
        self.length = length
        self.page_size = page_size
        self.vec_len = vec_len
        # The kernel writes page regions here; ctypes keeps its address fixed.
        self._vec = (ctypes.c_uint64 * (vec_len * PAGE_REGION.size // 8))()
        self._vec_addr = ctypes.addressof(self._vec)
        try:
            self._fd: int | None = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DirtyTrackingError(f"cannot open /proc/{pid}/pagemap: {exc.strerror}") from None

    @property
    def pages(self) -> int:
        return self.length // self.page_size

    def collect(self) -> list[int]:
        """Pages written since the last collect (ascending), write-protected again."""
        return runs_to_pages(self.collect_runs())

    def collect_runs(self) -> list[Run]:
        return self._scan(rearm=True)

    def peek_runs(self) -> list[Run]:
        """Pages written since the last collect, leaving them marked written."""
        return self._scan(rearm=False)

    def _scan(self, *, rearm: bool) -> list[Run]:
        if self._fd is None:
            raise DirtyTrackingError("the pagemap scanner is closed")
        fd = self._fd

        def call(start: int, end: int) -> tuple[bytes, int]:
            arg = encode_scan_arg(start, end, self._vec_addr, self.vec_len, rearm=rearm)
            try:
                count = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
            except OSError as exc:
                why = _WHY.get(exc.errno, exc.strerror)
                raise DirtyTrackingError(
                    f"PAGEMAP_SCAN of pid {self.pid} [{start:#x}, {end:#x}): {why} "
                    f"({errno.errorcode.get(exc.errno, exc.errno)})"
                ) from None
            return ctypes.string_at(self._vec_addr, count * PAGE_REGION.size), decode_walk_end(arg)

        try:
            runs = walk(call, self.start, self.length, self.page_size, self.vec_len)
        except ValueError as exc:
            raise DirtyTrackingError(f"PAGEMAP_SCAN of pid {self.pid}: {exc}") from None
        # A range without a mapping reads as "nothing written" (an exiting
        # process has torn its mappings down): after the scan, the mapping
        # must still be there for its answer to count.
        probe = encode_probe_arg(self.start, self.page_size, self._vec_addr, self.vec_len)
        try:
            found = fcntl.ioctl(fd, PAGEMAP_SCAN, probe)
        except OSError as exc:
            raise DirtyTrackingError(
                f"PAGEMAP_SCAN of pid {self.pid}: {_WHY.get(exc.errno, exc.strerror)}"
            ) from None
        if found != 1:
            raise DirtyTrackingError(
                f"the tracked mapping at {self.start:#x} is gone from pid {self.pid} "
                "(the process is exiting or unmapped it)"
            )
        return runs

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PagemapScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
