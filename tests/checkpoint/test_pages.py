"""Checkpoint body codec: round trips, run planning, and every malformed body."""

from __future__ import annotations

import hashlib
import random
import struct
import time
import zlib

import pytest

from colonet.checkpoint import pages
from colonet.checkpoint.pages import (
    COMPRESSED,
    FORMAT_VERSION,
    FULL,
    HEADER,
    MAGIC,
    PAGE_SIZE,
    RUN_DATA,
    RUN_HEADER,
    RUN_ZERO,
    SECTION_HEADER,
    CheckpointFormatError,
    DecodedCheckpoint,
    DeviceSection,
    PageRun,
    checkpoint_stats,
    decode_checkpoint,
    encode_checkpoint,
)

PS = PAGE_SIZE
SECTIONS = [DeviceSection("cpu", 3, b"\x01\x02regs"), DeviceSection("net0", 1, b"")]


def make_ram(n_pages: int, seed: int = 1, zero_pages: tuple[int, ...] = ()) -> bytearray:
    ram = bytearray(random.Random(seed).randbytes(n_pages * PS))
    for page in zero_pages:
        ram[page * PS : (page + 1) * PS] = bytes(PS)
    return ram


def decode(body: bytes, n_pages: int) -> DecodedCheckpoint:
    return decode_checkpoint(body, expect_page_size=PS, expect_ram_pages=n_pages)


def apply_to(image: bytearray, decoded: DecodedCheckpoint) -> bytearray:
    for start, count, data in decoded.runs:
        image[start * PS : (start + count) * PS] = bytes(count * PS) if data is None else data
    return image


def seal(without_digest: bytes) -> bytes:
    return without_digest + hashlib.sha256(without_digest).digest()


def header(
    n_pages: int,
    runs: int,
    sections: int = 0,
    *,
    flags: int = 0,
    epoch: int = 5,
    magic: bytes = MAGIC,
    version: int = FORMAT_VERSION,
) -> bytes:
    return HEADER.pack(magic, version, flags, epoch, PS, n_pages, runs, sections)


def run(start: int, count: int, kind: int = RUN_ZERO) -> bytes:
    data = b"\x07" * (count * PS) if kind == RUN_DATA else b""
    return RUN_HEADER.pack(start, count, kind) + data


def section(name: bytes, data: bytes = b"x", version: int = 1) -> bytes:
    return SECTION_HEADER.pack(len(name), version, len(data)) + name + data


def runs_of(decoded: DecodedCheckpoint) -> list[tuple[int, int, bool]]:
    return [(r.start, r.count, r.data is None) for r in decoded.runs]


# -- round trips --------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_full_checkpoint_round_trip(compress: bool) -> None:
    ram = make_ram(16, zero_pages=(0, 7, 8))
    body = encode_checkpoint(1, ram, None, SECTIONS, compress)
    decoded = decode(body, 16)
    assert (decoded.epoch, decoded.full, decoded.compressed) == (1, True, compress)
    assert apply_to(bytearray(16 * PS), decoded) == ram
    assert list(decoded.sections.values()) == SECTIONS
    assert decoded.body_bytes == len(body)


@pytest.mark.parametrize("compress", [False, True])
def test_dirty_checkpoint_round_trip(compress: bool) -> None:
    before = make_ram(32, seed=2)
    after = bytearray(before)
    dirty = [30, 3, 4, 17, 4]  # unsorted, repeated: the encoder sorts and dedupes
    for page in dirty:
        after[page * PS + 100 : page * PS + 120] = b"z" * 20
    body = encode_checkpoint(9, memoryview(after), dirty, [], compress)
    decoded = decode(body, 32)
    assert (decoded.epoch, decoded.full) == (9, False)
    assert runs_of(decoded) == [(3, 2, False), (17, 1, False), (30, 1, False)]
    assert apply_to(bytearray(before), decoded) == after
    assert decoded.sections == {}


def test_compression_shrinks_compressible_pages() -> None:
    ram = bytearray(b"abcd" * (8 * PS // 4))
    plain = encode_checkpoint(1, ram, None, [])
    packed = encode_checkpoint(1, ram, None, [], compress=True)
    assert len(packed) < len(plain) // 10
    assert apply_to(bytearray(8 * PS), decode(packed, 8)) == ram


def test_accepts_mmap_and_bytes() -> None:
    import mmap

    mem = mmap.mmap(-1, 4 * PS)
    mem[PS : PS + 3] = b"abc"
    decoded = decode(encode_checkpoint(1, mem, None, []), 4)
    assert runs_of(decoded) == [(0, 1, True), (1, 1, False), (2, 2, True)]
    assert bytes(decoded.runs[1].data[:3]) == b"abc"
    assert decode(encode_checkpoint(1, bytes(mem), None, []), 4).runs == decoded.runs
    mem.close()


# -- zero pages and run planning ------------------------------------------------


def test_zero_pages_travel_as_a_flag() -> None:
    ram = bytearray(64 * PS)
    ram[10 * PS] = 1
    body = encode_checkpoint(1, ram, None, [])
    assert len(body) < 2 * PS  # one data page, not 63 pages of zero bytes
    decoded = decode(body, 64)
    assert runs_of(decoded) == [(0, 10, True), (10, 1, False), (11, 53, True)]
    stats = checkpoint_stats(decoded)
    assert (stats["data_pages"], stats["zero_pages"], stats["bytes"]) == (1, 63, len(body))


def test_dirty_zero_page_is_a_zero_run() -> None:
    ram = make_ram(8, zero_pages=(5,))
    body = encode_checkpoint(2, ram, [5], [])
    assert len(body) < 200
    assert runs_of(decode(body, 8)) == [(5, 1, True)]


def test_consecutive_pages_merge_and_kind_changes_split() -> None:
    ram = make_ram(16, zero_pages=(10,))
    dirty = [3, 4, 5, 9, 10, 11, 12, 15]
    decoded = decode(encode_checkpoint(2, ram, dirty, []), 16)
    assert runs_of(decoded) == [
        (3, 3, False),
        (9, 1, False),
        (10, 1, True),
        (11, 2, False),
        (15, 1, False),
    ]


def test_long_stretch_splits_at_max_run_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "MAX_RUN_PAGES", 4)
    ram = make_ram(10)
    decoded = decode(encode_checkpoint(1, ram, None, []), 10)
    assert runs_of(decoded) == [(0, 4, False), (4, 4, False), (8, 2, False)]


def test_empty_dirty_set_carries_only_device_state() -> None:
    decoded = decode(encode_checkpoint(4, make_ram(4), [], SECTIONS), 4)
    assert decoded.runs == ()
    assert decoded.sections["cpu"] == SECTIONS[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dirty_pages": [4]}, "dirty page 4 is outside RAM of 4 pages"),
        ({"dirty_pages": [-1]}, "dirty page -1"),
        ({"epoch": -1}, "epoch"),
        ({"ram": bytes(PS + 1)}, "not a whole number"),
        ({"ram": b""}, "not a whole number"),
        ({"sections": [DeviceSection("a", 1, b""), DeviceSection("a", 2, b"")]}, "repeat"),
    ],
)
def test_encode_refuses_misuse(kwargs: dict, match: str) -> None:
    args = {"epoch": 1, "ram": bytes(4 * PS), "dirty_pages": None, "sections": []}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        encode_checkpoint(**args)


def test_device_section_validation() -> None:
    assert DeviceSection("é" * 32, 0, bytearray(b"ab")).data == b"ab"  # 64 utf-8 bytes
    with pytest.raises(ValueError, match="65 bytes"):
        DeviceSection("é" * 32 + "x", 0, b"")
    with pytest.raises(ValueError, match="non-empty"):
        DeviceSection("", 0, b"")
    with pytest.raises(ValueError, match="version"):
        DeviceSection("cpu", 2**32, b"")
    with pytest.raises(ValueError, match="data must be bytes"):
        DeviceSection("cpu", 1, "text")  # type: ignore[arg-type]


# -- malformed bodies -------------------------------------------------------------


def test_bad_magic() -> None:
    body = encode_checkpoint(1, make_ram(2), None, [])
    with pytest.raises(CheckpointFormatError, match="bad magic b'XKPT'"):
        decode(b"X" + body[1:], 2)


def test_wrong_version() -> None:
    body = seal(header(2, 1, flags=FULL, version=FORMAT_VERSION + 1) + run(0, 2))
    with pytest.raises(CheckpointFormatError, match="unsupported format version 2"):
        decode(body, 2)


def test_unknown_flags() -> None:
    body = seal(header(2, 0, flags=0x80))
    with pytest.raises(CheckpointFormatError, match="unknown flags 0x80"):
        decode(body, 2)


def test_geometry_mismatch() -> None:
    body = encode_checkpoint(1, make_ram(4), None, [])
    with pytest.raises(CheckpointFormatError, match="geometry mismatch: body has 4 pages of 4096"):
        decode(body, 8)
    with pytest.raises(CheckpointFormatError, match="expected 4 pages of 512 bytes"):
        decode_checkpoint(body, expect_page_size=512, expect_ram_pages=4)


def test_too_short_for_header() -> None:
    with pytest.raises(CheckpointFormatError, match="shorter than a header and digest"):
        decode(b"CKPT", 2)


@pytest.mark.parametrize(
    ("n_pages", "parts", "match"),
    [
        (512, [run(1000, 64)], r"page run 0 \(pages 1000..1063\) ends past RAM of 512 pages"),
        (8, [run(0, 2), run(6, 4, RUN_DATA)], r"page run 1 \(pages 6..9\) ends past RAM of 8"),
        (8, [run(0, 4), run(2, 2)], r"run 1 \(pages 2..3\) overlaps page run 0 \(pages 0..3\)"),
        (8, [run(4, 2), run(0, 2)], r"page run 1 \(pages 0..1\) is out of order"),
        (8, [run(3, 1), run(3, 1)], r"page run 1 \(pages 3..3\) overlaps"),
        (8, [run(1, 0)], "page run 0 at page 1 is empty"),
        (8, [run(1, 1, kind=9)], "page run 0 has unknown kind 9"),
        (8, [run(0, 1), run(1, 1, RUN_DATA)[:-1]], r"ends inside page run 1 \(pages 1..1\) data"),
    ],
)
def test_bad_runs(n_pages: int, parts: list[bytes], match: str) -> None:
    body = seal(header(n_pages, len(parts)) + b"".join(parts))
    with pytest.raises(CheckpointFormatError, match=match):
        decode(body, n_pages)


def test_full_checkpoint_must_cover_all_ram() -> None:
    gap = seal(header(8, 2, flags=FULL) + run(0, 2) + run(3, 5))
    with pytest.raises(CheckpointFormatError, match="full checkpoint leaves pages 2..2 out"):
        decode(gap, 8)
    short = seal(header(8, 1, flags=FULL) + run(0, 6))
    with pytest.raises(CheckpointFormatError, match="full checkpoint leaves pages 6..7 out"):
        decode(short, 8)
    assert decode(seal(header(8, 1, flags=FULL) + run(0, 8)), 8).full


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([section(b"")], "device section 0 has a name of 0 bytes"),
        ([section(b"a" * 65)], "device section 0 has a name of 65 bytes"),
        ([section(b"\xff\xfe")], "device section 0 name .* is not utf-8"),
        ([section(b"cpu"), section(b"cpu")], "device section 1 repeats the name 'cpu'"),
        ([section(b"cpu", b"abc")[:-1]], r"body ends inside device section 0 \('cpu'\) data"),
    ],
)
def test_bad_sections(parts: list[bytes], match: str) -> None:
    body = seal(header(2, 0, len(parts)) + b"".join(parts))
    with pytest.raises(CheckpointFormatError, match=match):
        decode(body, 2)


def test_trailing_bytes_before_digest() -> None:
    body = seal(header(2, 1) + run(0, 1) + b"junk")
    with pytest.raises(CheckpointFormatError, match="4 unexpected bytes after the last device"):
        decode(body, 2)


def test_digest_mismatch() -> None:
    body = bytearray(encode_checkpoint(1, make_ram(2), None, SECTIONS))
    for where in (HEADER.size + RUN_HEADER.size + 5, len(body) - 1):
        bad = bytearray(body)
        bad[where] ^= 0x40
        with pytest.raises(CheckpointFormatError, match="digest mismatch"):
            decode(bytes(bad), 2)


def small_body(compress: bool) -> bytes:
    ram = make_ram(3, zero_pages=(1,))
    if compress:
        ram[: 3 * PS] = b"ab" * (3 * PS // 2)
        ram[PS : 2 * PS] = bytes(PS)
    return encode_checkpoint(7, ram, None, [DeviceSection("cpu", 1, b"regs")], compress)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_at_every_offset(compress: bool) -> None:
    body = small_body(compress)
    decode(body, 3)
    for cut in range(len(body)):
        with pytest.raises(CheckpointFormatError):
            decode(body[:cut], 3)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_and_resealed_at_every_offset(compress: bool) -> None:
    """A sender that seals a short body is caught by the structure checks alone."""
    content = small_body(compress)[: -pages.DIGEST_SIZE]
    for cut in range(HEADER.size, len(content)):
        with pytest.raises(CheckpointFormatError, match="body ends inside|unexpected|compressed"):
            decode(seal(content[:cut]), 3)


def compressed_run(blob: bytes, count: int = 1) -> bytes:
    return RUN_HEADER.pack(0, count, RUN_DATA) + struct.pack("<I", len(blob)) + blob


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (zlib.compress(bytes(PS + 1)), "inflates past 4096 bytes"),
        (zlib.compress(bytes(64 * 1024 * 1024)), "inflates past 4096 bytes"),  # a zip bomb
        (zlib.compress(bytes(PS - 1)), "inflates to 4095 of 4096 bytes"),
        (zlib.compress(bytes(PS))[:-3], "cut short"),
        (zlib.compress(bytes(PS)) + b"xx", "2 stray bytes after the compressed stream"),
        (b"not zlib at all", "compressed data is corrupt"),
    ],
)
def test_bad_compressed_blob(blob: bytes, match: str) -> None:
    body = seal(header(2, 1, flags=COMPRESSED) + compressed_run(blob))
    with pytest.raises(CheckpointFormatError, match=match):
        decode(body, 2)


def test_compressed_blob_of_exact_size_is_accepted() -> None:
    page = bytes(range(256)) * (PS // 256)
    body = seal(header(2, 1, flags=COMPRESSED) + compressed_run(zlib.compress(page)))
    assert decode(body, 2).runs == (PageRun(0, 1, page),)


def test_encode_timing_64mib_10_percent_dirty() -> None:
    """Sanity figure, printed rather than asserted (run with -s to see it)."""
    n_pages = 64 * 1024 * 1024 // PS
    ram = bytearray(n_pages * PS)
    rng = random.Random(3)
    dirty = rng.sample(range(n_pages), n_pages // 10)
    filler = rng.randbytes(PS)
    for page in dirty[: len(dirty) * 9 // 10]:  # 10% of the dirty pages stay zero
        ram[page * PS : (page + 1) * PS] = filler
    started = time.perf_counter()
    body = encode_checkpoint(2, ram, dirty, SECTIONS)
    encoded = time.perf_counter() - started
    started = time.perf_counter()
    decoded = decode(body, n_pages)
    decoded_s = time.perf_counter() - started
    stats = checkpoint_stats(decoded)
    print(
        f"\nencode 64 MiB RAM, {len(dirty)} dirty pages: {encoded * 1000:.1f} ms, "
        f"decode {decoded_s * 1000:.1f} ms, {stats['runs']} runs, {len(body)} bytes"
    )
    assert stats["data_pages"] + stats["zero_pages"] == len(dirty)


def test_a_snapshot_does_not_see_ram_change_after_it_was_taken() -> None:
    """The engine resumes the guest between snapshot and encode."""
    from colonet.checkpoint.pages import snapshot_checkpoint

    ram = bytearray(4096 * 8)
    ram[4096 * 2 : 4096 * 2 + 5] = b"state"
    expected = encode_checkpoint(4, bytes(ram), [2, 5], [DeviceSection("dev", 1, b"x")])
    snapshot = snapshot_checkpoint(4, ram, [2, 5], [DeviceSection("dev", 1, b"x")])
    ram[4096 * 2 : 4096 * 2 + 5] = b"LATER"  # the guest runs on
    assert snapshot.encode() == expected
