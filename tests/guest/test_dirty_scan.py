"""The pure half of QEMU dirty tracking: the PAGEMAP_SCAN codec and walk, the
helper's status lines, and the brute-force fallback."""

from __future__ import annotations

import mmap
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colonet.guest.dirty_scan import (
    PAGE_IS_FILE,
    PAGE_IS_WPALLOWED,
    PAGE_IS_WRITTEN,
    PAGE_REGION,
    PAGEMAP_SCAN,
    PM_SCAN_ARG,
    PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
    BruteForceDiffer,
    ShimRegistration,
    decode_walk_end,
    encode_probe_arg,
    encode_scan_arg,
    merge_runs,
    next_start,
    parse_shim_status,
    regions_to_runs,
    runs_to_pages,
    walk,
)

PAGE = 4096
BASE = 0x7F00_0000_0000


def test_the_ioctl_number_and_argument_match_linux_uapi():
    # include/uapi/linux/fs.h: _IOWR('f', 16, struct pm_scan_arg), 12 __u64.
    assert PM_SCAN_ARG.size == 96 and PAGE_REGION.size == 24
    assert PAGEMAP_SCAN == 0xC0606610
    arg = encode_scan_arg(BASE, BASE + 8 * PAGE, 0x1234, 16, rearm=True)
    fields = struct.unpack("=12Q", arg)
    assert fields == (
        96,
        PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        BASE,
        BASE + 8 * PAGE,
        0,
        0x1234,
        16,
        0,
        0,
        PAGE_IS_WRITTEN,
        0,
        PAGE_IS_WRITTEN,
    )
    peek = encode_scan_arg(BASE, BASE + PAGE, 0x1234, 16, rearm=False)
    assert struct.unpack_from("=Q", peek, 8)[0] == PM_SCAN_CHECK_WPASYNC
    struct.pack_into("=Q", arg, 32, BASE + 3 * PAGE)
    assert decode_walk_end(arg) == BASE + 3 * PAGE


def test_the_probe_asks_for_one_registered_page_and_changes_nothing():
    fields = struct.unpack("=12Q", encode_probe_arg(BASE, PAGE, 0x1234, 16))
    assert fields == (
        96,
        0,
        BASE,
        BASE + PAGE,
        0,
        0x1234,
        16,
        1,
        0,
        0,
        PAGE_IS_WPALLOWED,
        PAGE_IS_WPALLOWED,
    )
    with pytest.raises(ValueError):
        encode_probe_arg(BASE, PAGE, 0x1234, 0)


@pytest.mark.parametrize(
    ("start", "end", "vec_len"), [(BASE, BASE, 1), (BASE + PAGE, BASE, 1), (BASE, BASE + PAGE, 0)]
)
def test_a_scan_argument_needs_a_range_and_room(start, end, vec_len):
    with pytest.raises(ValueError):
        encode_scan_arg(start, end, 0x1000, vec_len, rearm=True)


def _regions(*spans: tuple[int, int], categories: int = PAGE_IS_WRITTEN) -> bytes:
    """Page regions for spans of (first page, end page) from BASE."""
    return b"".join(
        PAGE_REGION.pack(BASE + a * PAGE, BASE + b * PAGE, categories) for a, b in spans
    )


def test_regions_become_runs_relative_to_the_ram_start():
    data = _regions((0, 1), (5, 8), (100, 101))
    runs = regions_to_runs(data, 3, BASE, PAGE, BASE, BASE + 200 * PAGE)
    assert runs == [(0, 1), (5, 3), (100, 1)]
    assert runs_to_pages(runs) == [0, 5, 6, 7, 100]
    assert regions_to_runs(data + b"junk", 2, BASE, PAGE, BASE, BASE + 9 * PAGE) == [(0, 1), (5, 3)]


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (_regions((5, 8), (0, 1)), 2, "not ascending"),
        (_regions((0, 4), (3, 5)), 2, "not ascending"),
        (_regions((0, 300)), 1, "not ascending"),  # past the end
        (_regions((2, 2)), 1, "not ascending"),  # empty
        (PAGE_REGION.pack(BASE + 1, BASE + PAGE, PAGE_IS_WRITTEN), 1, "not page-aligned"),
        (_regions((0, 1), categories=PAGE_IS_FILE), 1, "not marked written"),
        (_regions((0, 1)), 2, "2 page regions claimed"),
    ],
)
def test_a_region_the_kernel_could_not_have_written_is_refused(data, count, message):
    with pytest.raises(ValueError, match=message):
        regions_to_runs(data, count, BASE, PAGE, BASE, BASE + 200 * PAGE)


def test_touching_runs_merge():
    assert merge_runs([(0, 2), (2, 3), (6, 1), (7, 1), (9, 1)]) == [(0, 5), (6, 2), (9, 1)]
    assert merge_runs([]) == []


class FakeKernel:
    """PAGEMAP_SCAN over a set of written pages, as Linux 6.18 does it
    (fs/proc/task_mmu.c, do_pagemap_scan): regions go through a bounce
    buffer of `bounce` entries (512 in the kernel) flushed to the caller's
    array of `vec_len`; walk_end is set only when the bounce buffer or the
    array fills, and left as it was when the walk then finishes the range.
    Only pages that made it into a region are re-armed."""

    def __init__(self, written: set[int], vec_len: int, bounce: int = 512) -> None:
        self.written = set(written)
        self.vec_len = vec_len
        self.bounce = bounce
        self.calls = 0

    def call(self, start: int, end: int) -> tuple[bytes, int]:
        self.calls += 1
        first, last = (start - BASE) // PAGE, (end - BASE) // PAGE
        out: list[tuple[int, int]] = []
        walk_end = 0  # 0: not set
        room = self.vec_len
        buf_len = min(self.bounce, room)
        walk_start = first
        while walk_start < last:
            buf: list[list[int]] = []
            full = False
            for page in range(walk_start, last):
                if page not in self.written:
                    continue
                if buf and buf[-1][1] == page:
                    buf[-1][1] = page + 1
                elif len(buf) < buf_len:
                    buf.append([page, page + 1])
                else:
                    full, walk_end = True, page
                    break
                self.written.discard(page)  # re-armed
            out += [(a, b) for a, b in buf]
            room -= len(buf)
            buf_len = min(buf_len, room)
            if not full or room == 0:
                break
            walk_start = walk_end
        if not walk_end:
            walk_end = last
        return _regions(*out), BASE + walk_end * PAGE


@settings(max_examples=300, deadline=None)
@given(
    written=st.sets(st.integers(0, 511), max_size=300),
    vec_len=st.integers(1, 40),
    bounce=st.integers(1, 8),
)
def test_the_walk_reports_every_written_page_once_in_as_many_calls_as_needed(
    written, vec_len, bounce
):
    kernel = FakeKernel(written, vec_len, bounce)
    runs = walk(kernel.call, BASE, 512 * PAGE, PAGE, vec_len)
    assert runs_to_pages(runs) == sorted(written)
    assert runs == merge_runs(runs)  # no two runs touch
    assert kernel.written == set()  # all re-armed
    assert walk(kernel.call, BASE, 512 * PAGE, PAGE, vec_len) == []


def test_a_full_output_array_continues_where_the_kernel_stopped():
    kernel = FakeKernel(set(range(0, 64, 2)), vec_len=4)
    assert runs_to_pages(walk(kernel.call, BASE, 64 * PAGE, PAGE, 4)) == list(range(0, 64, 2))
    assert kernel.calls == 8


def test_a_stale_walk_end_is_recognised():
    # 600 separate runs, as measured on Linux 6.18: one call returns all 600
    # regions with walk_end at the start of region 512 (the last refill of
    # the kernel's 512-region bounce buffer), not at the end of the range.
    kernel = FakeKernel(set(range(0, 1200, 2)), vec_len=4096)
    regions, walk_end = kernel.call(BASE, BASE + 4096 * PAGE)
    assert len(regions) // PAGE_REGION.size == 600 and walk_end == BASE + 1024 * PAGE
    kernel = FakeKernel(set(range(0, 1200, 2)), vec_len=4096)
    assert runs_to_pages(walk(kernel.call, BASE, 4096 * PAGE, PAGE, 4096)) == list(
        range(0, 1200, 2)
    )
    assert kernel.calls == 1


@pytest.mark.parametrize(
    ("walk_end", "last_region_end", "count", "expected"),
    [
        (64, 30, 4, None),  # reached the end
        (40, 30, 4, 40),  # array full: go on where the kernel stopped
        (40, None, 0, 40),  # stopped with nothing to report (its own reasons)
        (20, 30, 3, None),  # stale, room left: the kernel finished
        (20, 30, 4, 30),  # stale, array full: go on after the last region
    ],
)
def test_where_the_next_call_starts(walk_end, last_region_end, count, expected):
    def at(page):
        return None if page is None else BASE + page * PAGE

    got = next_start(BASE, at(64), at(walk_end), at(last_region_end), count, 4)
    assert got == at(expected)


def test_a_scan_that_makes_no_progress_is_an_error():
    with pytest.raises(ValueError, match="no progress"):
        walk(lambda start, end: (b"", start), BASE, 4 * PAGE, PAGE, 4)
    with pytest.raises(ValueError, match="stopped at"):
        walk(lambda start, end: (b"", end + PAGE), BASE, 4 * PAGE, PAGE, 4)
    with pytest.raises(ValueError, match="array holds 1"):
        walk(lambda start, end: (_regions((0, 1), (2, 3)), end), BASE, 4 * PAGE, PAGE, 1)
    with pytest.raises(ValueError, match="not whole pages"):
        walk(lambda start, end: (b"", end), BASE + 1, 4 * PAGE, PAGE, 4)


def test_the_helper_status_lines_parse():
    text = (
        "registered 0x7f0000000000 0x7f0008000000 /dev/shm/colonet ram.ram "
        "features=0x1ffff mode=all\n"
    )
    registrations, errors = parse_shim_status(text)
    assert registrations == [
        ShimRegistration(0x7F0000000000, 0x7F0008000000, "/dev/shm/colonet ram.ram", 0x1FFFF, "all")
    ]
    assert errors == []
    text += (
        "error UFFDIO_REGISTER (write-protect mode) of the RAM mapping: Operation not permitted\n"
    )
    assert parse_shim_status(text)[1] == [
        "UFFDIO_REGISTER (write-protect mode) of the RAM mapping: Operation not permitted"
    ]
    assert parse_shim_status("") == ([], [])


@pytest.mark.parametrize(
    "line",
    [
        "hello",
        "registered 0x10 0x20",
        "registered 0x10 0x20 /p features=zz mode=all",
        "registered 0x20 0x10 /p features=0x1 mode=all",
        "registered 0x10 0x20 /p mode=all features=0x1",
    ],
)
def test_a_malformed_status_line_is_named(line):
    with pytest.raises(ValueError, match="line 1"):
        parse_shim_status(line + "\n")


def _ram(pages: int) -> tuple[mmap.mmap, memoryview]:
    m = mmap.mmap(-1, pages * PAGE)
    return m, memoryview(m)


def test_the_brute_force_differ_finds_exactly_the_changed_pages():
    m, view = _ram(64)
    differ = BruteForceDiffer(view.toreadonly())
    assert differ.collect() == []
    rng = random.Random(7)
    for _ in range(20):
        pages = sorted(rng.sample(range(64), rng.randrange(0, 10)))
        for p in pages:
            view[p * PAGE + rng.randrange(PAGE)] ^= 1 + rng.randrange(255)
        assert differ.collect() == pages
    # Written back with the same bytes: no change, nothing to send.
    view[5 * PAGE] = view[5 * PAGE]
    assert differ.collect() == []
    differ.close()
    view.release()
    m.close()


def test_the_brute_force_differ_needs_whole_pages():
    m, view = _ram(1)
    with pytest.raises(ValueError, match="whole pages"):
        BruteForceDiffer(view[:100])
    with pytest.raises(ValueError, match="does not divide"):
        BruteForceDiffer(view, page_size=3000)
    view.release()
    m.close()
