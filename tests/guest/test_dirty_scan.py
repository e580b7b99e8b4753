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
        (_regions((0, 300)), 1, "not ascending"),  # past walk_end
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
    """PAGEMAP_SCAN over a set of written pages: at most `vec_len` regions
    per call, regions of at most `max_region` pages, re-arming if asked."""

    def __init__(self, written: set[int], pages: int, vec_len: int, max_region: int) -> None:
        self.written = set(written)
        self.pages = pages
        self.vec_len = vec_len
        self.max_region = max_region
        self.calls = 0

    def call(self, start: int, end: int) -> tuple[bytes, int]:
        self.calls += 1
        page, last = (start - BASE) // PAGE, (end - BASE) // PAGE
        regions: list[tuple[int, int]] = []
        while page < last:
            if page not in self.written:
                page += 1
                continue
            if len(regions) == self.vec_len:
                break  # the output is full: stop before this page
            first = page
            while page < last and page in self.written and page - first < self.max_region:
                page += 1
            regions.append((first, page))
        for a, b in regions:
            self.written.difference_update(range(a, b))  # re-armed
        return _regions(*regions), BASE + page * PAGE


@settings(max_examples=200, deadline=None)
@given(
    written=st.sets(st.integers(0, 511), max_size=300),
    vec_len=st.integers(1, 8),
    max_region=st.integers(1, 600),
)
def test_the_walk_reports_every_written_page_once_in_as_many_calls_as_needed(
    written, vec_len, max_region
):
    kernel = FakeKernel(written, 512, vec_len, max_region)
    runs = walk(kernel.call, BASE, 512 * PAGE, PAGE)
    assert runs_to_pages(runs) == sorted(written)
    assert runs == merge_runs(runs)  # no two runs touch
    assert kernel.written == set()  # all re-armed
    assert walk(kernel.call, BASE, 512 * PAGE, PAGE) == []


def test_a_full_output_array_continues_from_walk_end():
    kernel = FakeKernel(set(range(0, 64, 2)), 64, vec_len=4, max_region=64)
    assert runs_to_pages(walk(kernel.call, BASE, 64 * PAGE, PAGE)) == list(range(0, 64, 2))
    assert kernel.calls == 8


def test_a_scan_that_makes_no_progress_is_an_error():
    with pytest.raises(ValueError, match="no progress"):
        walk(lambda start, end: (b"", start), BASE, 4 * PAGE, PAGE)
    with pytest.raises(ValueError, match="no progress"):
        walk(lambda start, end: (b"", end + PAGE), BASE, 4 * PAGE, PAGE)
    with pytest.raises(ValueError, match="not whole pages"):
        walk(lambda start, end: (b"", end), BASE + 1, 4 * PAGE, PAGE)


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
