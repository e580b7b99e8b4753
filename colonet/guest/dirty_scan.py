"""Which pages of a guest's RAM changed: the pure half of QEMU dirty tracking.

A QEMU guest's RAM lives in a shared file that QEMU maps. Two ways to learn
which of its pages changed between two checkpoints:

- **PAGEMAP_SCAN** (Linux >= 6.7), the normal way. A helper preloaded into
  QEMU (tools/qemu_dirty/uffd_wp_shim.c) registers QEMU's RAM mapping with
  userfaultfd in asynchronous write-protect mode; a write clears a page's
  write-protect bit and nothing else. The PAGEMAP_SCAN ioctl on
  /proc/<pid>/pagemap lists the pages whose bit is clear and sets it again,
  under the page-table lock, so a write lands either in this scan or in the
  next one, never in neither. This module encodes the ioctl's argument
  (`struct pm_scan_arg`, include/uapi/linux/fs.h), decodes the `struct
  page_region` array it fills into runs of page indices relative to the
  start of RAM, and walks a range in as many calls as the output array
  needs (`walk`, the call itself injected; colonet/guest/pagemap.py makes
  the system call).
- **BruteForceDiffer**, the named fallback: compare RAM with a copy of it.
  It costs a second copy of RAM and a full pass over it per checkpoint
  (about 25 ms per 128 MiB here, growing with RAM): for small guests only,
  where the kernel cannot track writes.

No I/O here: every rule is a unit test without root.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# PAGE_IS_* categories (include/uapi/linux/fs.h, Linux 6.7+).
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7

# pm_scan_arg.flags
PM_SCAN_WP_MATCHING = 1 << 0  # write-protect the pages reported (re-arm)
PM_SCAN_CHECK_WPASYNC = 1 << 1  # EPERM on a mapping not registered with WP_ASYNC

# struct pm_scan_arg: size, flags, start, end, walk_end, vec, vec_len,
# max_pages, category_inverted, category_mask, category_anyof_mask,
# return_mask; all __u64.
PM_SCAN_ARG = struct.Struct("=12Q")
WALK_END_OFFSET = 4 * 8
# struct page_region: start, end (exclusive), categories; all __u64.
PAGE_REGION = struct.Struct("=3Q")


def _iowr(kind: str, number: int, size: int) -> int:
    """_IOWR(kind, number, size) of asm-generic/ioctl.h (x86, arm64, riscv)."""
    read_write = 3
    return (read_write << 30) | (size << 16) | (ord(kind) << 8) | number


PAGEMAP_SCAN = _iowr("f", 16, PM_SCAN_ARG.size)

Run = tuple[int, int]  # (first page, page count)


def encode_scan_arg(start: int, end: int, vec: int, vec_len: int, *, rearm: bool) -> bytearray:
    """The ioctl's argument: report written pages of [start, end) into the
    `vec_len` page regions at address `vec`; `rearm` write-protects them
    again in the same step. Every page of the range must belong to a
    mapping registered with WP_ASYNC (PM_SCAN_CHECK_WPASYNC), or the call
    fails with EPERM instead of calling an untracked page clean."""
    if not 0 <= start < end < 2**64:
        raise ValueError(f"scan range [{start:#x}, {end:#x}) is empty or out of range")
    if vec_len <= 0:
        raise ValueError(f"vec_len {vec_len} must be positive")
    flags = PM_SCAN_CHECK_WPASYNC | (PM_SCAN_WP_MATCHING if rearm else 0)
    return bytearray(
        PM_SCAN_ARG.pack(
            PM_SCAN_ARG.size,
            flags,
            start,
            end,
            0,  # walk_end: written by the kernel
            vec,
            vec_len,
            0,  # max_pages: no limit
            0,  # category_inverted
            PAGE_IS_WRITTEN,  # category_mask: written pages only
            0,  # category_anyof_mask
            PAGE_IS_WRITTEN,  # return_mask
        )
    )


def encode_probe_arg(start: int, page_size: int, vec: int, vec_len: int) -> bytearray:
    """An argument that asks whether the page at `start` is still in a
    mapping registered for write-protection (one region, PAGE_IS_WPALLOWED)
    and changes nothing. A scan over a range with no mapping at all (the
    process exiting) reports nothing written: this tells the two apart."""
    if vec_len <= 0:
        raise ValueError(f"vec_len {vec_len} must be positive")
    return bytearray(
        PM_SCAN_ARG.pack(
            PM_SCAN_ARG.size,
            0,
            start,
            start + page_size,
            0,
            vec,
            vec_len,
            1,  # max_pages
            0,
            0,
            PAGE_IS_WPALLOWED,  # category_anyof_mask
            PAGE_IS_WPALLOWED,  # return_mask
        )
    )


def decode_walk_end(arg: bytes | bytearray) -> int:
    """Where the kernel says it stopped (see `next_start` for when to believe it)."""
    return struct.unpack_from("=Q", arg, WALK_END_OFFSET)[0]


def regions_to_runs(
    regions: bytes | bytearray | memoryview,
    count: int,
    base: int,
    page_size: int,
    start: int,
    end: int,
) -> list[Run]:
    """Page regions as filled by one call over [start, end), as runs of page
    indices relative to `base`. Each region must be page-aligned, ascending,
    non-overlapping, inside [start, end) and marked written."""
    if count < 0 or count * PAGE_REGION.size > len(regions):
        raise ValueError(f"{count} page regions claimed, the buffer holds {len(regions)} bytes")
    runs: list[Run] = []
    previous_end = start
    for i in range(count):
        first, stop, categories = PAGE_REGION.unpack_from(regions, i * PAGE_REGION.size)
        if not previous_end <= first < stop <= end:
            raise ValueError(
                f"page region {i} [{first:#x}, {stop:#x}) is not ascending inside "
                f"[{previous_end:#x}, {end:#x})"
            )
        if (first - base) % page_size or (stop - base) % page_size:
            raise ValueError(f"page region {i} [{first:#x}, {stop:#x}) is not page-aligned")
        if not categories & PAGE_IS_WRITTEN:
            raise ValueError(f"page region {i} is not marked written ({categories:#x})")
        runs.append(((first - base) // page_size, (stop - first) // page_size))
        previous_end = stop
    return runs


def merge_runs(runs: Sequence[Run]) -> list[Run]:
    """Ascending runs with touching ones joined (a run split across two calls)."""
    merged: list[Run] = []
    for first, count in runs:
        if merged and merged[-1][0] + merged[-1][1] == first:
            merged[-1] = (merged[-1][0], merged[-1][1] + count)
        else:
            merged.append((first, count))
    return merged


def runs_to_pages(runs: Sequence[Run]) -> list[int]:
    pages: list[int] = []
    for first, count in runs:
        pages.extend(range(first, first + count))
    return pages


# One PAGEMAP_SCAN over [start, end): (the page regions it filled, as bytes;
# the walk_end it wrote back).
ScanCall = Callable[[int, int], tuple[bytes, int]]


def next_start(
    start: int, end: int, walk_end: int, last_region_end: int | None, count: int, vec_len: int
) -> int | None:
    """Where the next call must start, or None once [start, end) is done.

    walk_end is where the kernel stopped when the output array filled. But
    (seen on Linux 6.18) the kernel fills its output through a bounce buffer
    of 512 regions and sets walk_end only when one of those fills: a scan
    that reports more than 512 regions and then finishes the range leaves
    walk_end at the last refill, before regions it did report. So:
    - walk_end at `end`: done;
    - walk_end at or past the last region: a true stop there, go on from it;
    - walk_end before the last region: stale. With room left in the array
      the kernel finished the range; with the array full, go on after the
      last region (already re-armed, nothing is reported twice).
    """
    if not start <= walk_end <= end:
        raise ValueError(f"the scan of [{start:#x}, {end:#x}) stopped at {walk_end:#x}")
    if walk_end == end:
        return None
    if last_region_end is None or walk_end >= last_region_end:
        if walk_end == start:
            raise ValueError(f"the scan of [{start:#x}, {end:#x}) made no progress")
        return walk_end
    if count < vec_len:
        return None
    return last_region_end


def walk(call: ScanCall, base: int, length: int, page_size: int, vec_len: int) -> list[Run]:
    """All written pages of [base, base + length) as merged runs, in as many
    calls as it takes (each call's output array holds `vec_len` regions)."""
    if base % page_size or length <= 0 or length % page_size:
        raise ValueError(f"range {base:#x}+{length} is not whole pages of {page_size}")
    start: int | None = base
    end = base + length
    runs: list[Run] = []
    while start is not None:
        regions, walk_end = call(start, end)
        count = len(regions) // PAGE_REGION.size
        if count > vec_len:
            raise ValueError(f"{count} page regions returned, the array holds {vec_len}")
        new = regions_to_runs(regions, count, base, page_size, start, end)
        runs.extend(new)
        last = base + (new[-1][0] + new[-1][1]) * page_size if new else None
        start = next_start(start, end, walk_end, last, count, vec_len)
    return merge_runs(runs)


@dataclass(frozen=True)
class ShimRegistration:
    """A mapping the helper registered: [start, end) of `path` in its process."""

    start: int
    end: int
    path: str
    features: int  # UFFD_FEATURE_* the kernel offered
    mode: str  # "all" faults or "user" mode only (an unprivileged QEMU)


def parse_shim_status(text: str) -> tuple[list[ShimRegistration], list[str]]:
    """The helper's status file: its registrations, and its errors (text).

    Lines, as tools/qemu_dirty/uffd_wp_shim.c writes them:
        registered <start hex> <end hex> <path> features=<hex> mode=<all|user>
        error <what failed>: <errno text>
    """
    registrations: list[ShimRegistration] = []
    errors: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("error "):
            errors.append(line[len("error ") :])
            continue
        head = line.split(" ", 3)
        tail = head[3].rsplit(" ", 2) if len(head) == 4 else []
        if (
            head[0] != "registered"
            or len(tail) != 3
            or not tail[1].startswith("features=")
            or not tail[2].startswith("mode=")
        ):
            raise ValueError(f"helper status line {number} is malformed: {line!r}")
        try:
            start, end = int(head[1], 16), int(head[2], 16)
            features = int(tail[1][len("features=") :], 16)
        except ValueError:
            raise ValueError(f"helper status line {number} is malformed: {line!r}") from None
        if not start < end:
            raise ValueError(f"helper status line {number}: empty range {line!r}")
        registrations.append(
            ShimRegistration(start, end, tail[0], features, tail[2][len("mode=") :])
        )
    return registrations, errors


class BruteForceDiffer:
    """The fallback: finds changed pages by comparing RAM with a copy of it.

    `collect()` reports the pages whose bytes differ from the last call (or
    from construction) and updates the copy. It sees changes, not writes (a
    page written with its own content is not reported, which a checkpoint
    does not need). It holds a second copy of RAM and reads all of RAM each
    time: use it only where write tracking is not available, and only for
    small guests. RAM must not change during a call (the guest is paused).
    """

    CHUNK = 64 * 1024  # compared as bytes: the fastest Python comparison here

    def __init__(self, ram: memoryview, page_size: int = 4096) -> None:
        if page_size <= 0 or self.CHUNK % page_size:
            raise ValueError(f"page size {page_size} does not divide {self.CHUNK}")
        if len(ram) % page_size:
            raise ValueError(f"RAM of {len(ram)} bytes is not whole pages of {page_size}")
        self.page_size = page_size
        self._ram = ram.cast("B")  # a view of our own, released by close()
        self._copy = [
            self._ram[a : a + self.CHUNK].tobytes() for a in range(0, len(ram), self.CHUNK)
        ]

    def collect(self) -> list[int]:
        ram, page, pages = self._ram, self.page_size, []
        for i, old in enumerate(self._copy):
            at = i * self.CHUNK
            new = ram[at : at + self.CHUNK].tobytes()
            if new == old:
                continue
            for offset in range(0, len(new), page):
                if new[offset : offset + page] != old[offset : offset + page]:
                    pages.append((at + offset) // page)
            self._copy[i] = new
        return pages

    def close(self) -> None:
        """Let go of RAM (its mapping can be closed then) and of the copy."""
        self._ram.release()
        self._copy = []
