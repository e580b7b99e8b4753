"""The checkpoint body: guest RAM pages and device state, as bytes.

One body carries checkpoint N (docs/DESIGN.md, "Checkpoint protocol"). The first
checkpoint is FULL: its runs cover every page of RAM. Later ones carry only
the pages dirtied in the epoch. Zero pages travel as a ZERO run, never as
page-size zero bytes. Pure: bytes in, bytes out, no I/O, no logging.

Layout (little endian)::

    header   magic b"CKPT", version u16, flags u16 (FULL, COMPRESSED),
             epoch u64, page_size u32, ram_pages u64,
             run_count u32, section_count u32
    runs     start_page u64, count u32, kind u8 (DATA or ZERO), then for DATA
             count * page_size bytes, or with COMPRESSED a blob length u32
             and a zlib stream that inflates to exactly count * page_size
    sections name length u8, version u32, data length u32, name (utf-8), data
    trailer  sha256 over everything before it

Runs are ascending and never overlap; consecutive pages of one kind form one
run (split only past MAX_RUN_PAGES). `decode_checkpoint` checks every rule
before it returns, so a caller never sees a half-valid checkpoint.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from colonet.errors import ColonetError
from colonet.guest.base import MAX_SECTION_NAME_BYTES, DeviceSection

__all__ = [
    "COMPRESSED",
    "FORMAT_VERSION",
    "FULL",
    "MAGIC",
    "MAX_RUN_PAGES",
    "MAX_SECTION_NAME_BYTES",
    "PAGE_SIZE",
    "RUN_DATA",
    "RUN_ZERO",
    "CheckpointFormatError",
    "DecodedCheckpoint",
    "DeviceSection",
    "PageRun",
    "checkpoint_stats",
    "decode_checkpoint",
    "encode_checkpoint",
]

PAGE_SIZE = 4096
MAGIC = b"CKPT"
FORMAT_VERSION = 1

FULL = 0x1
COMPRESSED = 0x2
_KNOWN_FLAGS = FULL | COMPRESSED

RUN_DATA = 1
RUN_ZERO = 2
_KIND_NAMES = {RUN_DATA: "DATA", RUN_ZERO: "ZERO"}

# A longer stretch of dirty pages is split, which keeps each compressed blob
# far below the u32 length limit (256 MiB of 4 KiB pages).
MAX_RUN_PAGES = 65_536
COMPRESS_LEVEL = 1  # checkpoint pause time matters more than ratio

HEADER = struct.Struct("<4sHHQIQII")
RUN_HEADER = struct.Struct("<QIB")
BLOB_LENGTH = struct.Struct("<I")
SECTION_HEADER = struct.Struct("<BII")
DIGEST_SIZE = hashlib.sha256().digest_size

_U32 = 2**32
_U64 = 2**64


class CheckpointFormatError(ColonetError):
    """A checkpoint body broke the format: the peer's fault, never ours.

    The message names what is wrong; the receiver discards the checkpoint
    and stays on the one it has (docs/DESIGN.md invariant 5).
    """


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PageRun(NamedTuple):
    """`count` pages from `start`; `data` is None for a run of zero pages."""

    start: int
    count: int
    data: bytes | memoryview | None


@dataclass(frozen=True)
class DecodedCheckpoint:
    """A body that passed every check of `decode_checkpoint`."""

    epoch: int
    full: bool
    compressed: bool
    page_size: int
    ram_pages: int
    runs: tuple[PageRun, ...]
    sections: Mapping[str, DeviceSection]
    body_bytes: int


# -- encoding ---------------------------------------------------------------


def _byte_view(ram: bytes | bytearray | memoryview | object) -> memoryview:
    view = memoryview(ram)  # type: ignore[arg-type]
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _sorted_pages(dirty_pages: Iterable[int], ram_pages: int) -> list[int]:
    pages = sorted(set(dirty_pages))
    if pages and (pages[0] < 0 or pages[-1] >= ram_pages):
        bad = pages[0] if pages[0] < 0 else pages[-1]
        raise ValueError(f"dirty page {bad} is outside RAM of {ram_pages} pages")
    return pages


def _plan_runs(
    view: memoryview, pages: Iterable[int], page_size: int
) -> list[tuple[int, int, int]]:
    """(start, count, kind) for `pages` (ascending): one run per stretch of a kind."""
    zero = bytes(page_size)
    runs: list[tuple[int, int, int]] = []
    start = prev = -2
    kind = 0
    for page in pages:
        offset = page * page_size
        # A non-zero first byte settles most data pages without a copy; else
        # bytes() + memcmp, several times faster than memoryview == bytes.
        if view[offset] or bytes(view[offset : offset + page_size]) != zero:
            this = RUN_DATA
        else:
            this = RUN_ZERO
        if page == prev + 1 and this == kind and page - start < MAX_RUN_PAGES:
            prev = page
            continue
        if kind:
            runs.append((start, prev - start + 1, kind))
        start = prev = page
        kind = this
    if kind:
        runs.append((start, prev - start + 1, kind))
    return runs


def _pack_section(section: DeviceSection) -> list[bytes]:
    name = section.name.encode("utf-8")
    return [SECTION_HEADER.pack(len(name), section.version, len(section.data)), name, section.data]


@dataclass(frozen=True)
class CheckpointSnapshot:
    """A checkpoint's pieces, copied out of RAM: no reference to guest memory.

    Taking it is the part that must happen while the guest is paused (read
    the pages, save the devices); `encode()` (hash and join, the slow part
    for a large body) can run after the guest resumed.
    """

    chunks: tuple[bytes, ...]

    def encode(self) -> bytes:
        digest = hashlib.sha256()
        for chunk in self.chunks:
            digest.update(chunk)
        return b"".join((*self.chunks, digest.digest()))


def snapshot_checkpoint(
    epoch: int,
    ram: bytes | bytearray | memoryview | object,
    dirty_pages: Iterable[int] | None,
    sections: Sequence[DeviceSection],
    compress: bool = False,
    *,
    page_size: int = PAGE_SIZE,
) -> CheckpointSnapshot:
    """Copy checkpoint `epoch` out of `ram` (all of it, or its dirty pages).

    `ram` is anything with the buffer protocol (bytes, bytearray, mmap,
    memoryview); call this while the guest is paused.
    """
    if not _is_int(epoch) or not 0 <= epoch < _U64:
        raise ValueError(f"epoch must be an int in 0..2**64-1, got {epoch!r}")
    if not _is_int(page_size) or page_size <= 0 or page_size >= _U32:
        raise ValueError(f"page size must be a positive u32, got {page_size!r}")
    view = _byte_view(ram)
    ram_pages, rest = divmod(len(view), page_size)
    if rest or not ram_pages:
        raise ValueError(
            f"RAM of {len(view)} bytes is not a whole number of {page_size}-byte pages"
        )
    names = [s.name for s in sections]
    if len(set(names)) != len(names):
        raise ValueError(f"device section names repeat: {names}")
    if dirty_pages is None:
        runs = _plan_runs(view, range(ram_pages), page_size)
    else:
        runs = _plan_runs(view, _sorted_pages(dirty_pages, ram_pages), page_size)
    flags = (FULL if dirty_pages is None else 0) | (COMPRESSED if compress else 0)
    chunks: list[bytes] = [
        HEADER.pack(
            MAGIC, FORMAT_VERSION, flags, epoch, page_size, ram_pages, len(runs), len(sections)
        )
    ]
    for start, count, kind in runs:
        chunks.append(RUN_HEADER.pack(start, count, kind))
        if kind == RUN_DATA:
            data = view[start * page_size : (start + count) * page_size]
            if compress:
                blob = zlib.compress(data, COMPRESS_LEVEL)
                chunks.append(BLOB_LENGTH.pack(len(blob)))
                chunks.append(blob)
            else:
                chunks.append(bytes(data))  # the copy: RAM may change once resumed
    for section in sections:
        chunks.extend(bytes(c) for c in _pack_section(section))
    return CheckpointSnapshot(tuple(chunks))


def encode_checkpoint(
    epoch: int,
    ram: bytes | bytearray | memoryview | object,
    dirty_pages: Iterable[int] | None,
    sections: Sequence[DeviceSection],
    compress: bool = False,
    *,
    page_size: int = PAGE_SIZE,
) -> bytes:
    """The body of checkpoint `epoch`: all of `ram` (dirty_pages None) or its dirty pages.

    Read `ram` while the guest is paused. The same as taking a snapshot and
    encoding it at once.
    """
    return snapshot_checkpoint(
        epoch, ram, dirty_pages, sections, compress, page_size=page_size
    ).encode()


# -- decoding ---------------------------------------------------------------


class _Reader:
    def __init__(self, view: memoryview, pos: int) -> None:
        self.view = view
        self.pos = pos

    def take(self, size: int, what: str) -> memoryview:
        end = self.pos + size
        if end > len(self.view):
            raise CheckpointFormatError(
                f"body ends inside {what}: needs {size} bytes at offset {self.pos}, "
                f"{len(self.view) - self.pos} left"
            )
        chunk = self.view[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, what))


def _check_header(view: memoryview, expect_page_size: int, expect_ram_pages: int) -> tuple:
    if len(view) < HEADER.size + DIGEST_SIZE:
        raise CheckpointFormatError(
            f"body of {len(view)} bytes is shorter than a header and digest "
            f"({HEADER.size + DIGEST_SIZE} bytes)"
        )
    fields = HEADER.unpack_from(view)
    magic, version, flags, _epoch, page_size, ram_pages, _runs, _sections = fields
    if magic != MAGIC:
        raise CheckpointFormatError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"unsupported format version {version}, this side speaks {FORMAT_VERSION}"
        )
    if flags & ~_KNOWN_FLAGS:
        raise CheckpointFormatError(f"unknown flags {flags & ~_KNOWN_FLAGS:#x}")
    if page_size != expect_page_size or ram_pages != expect_ram_pages:
        raise CheckpointFormatError(
            f"geometry mismatch: body has {ram_pages} pages of {page_size} bytes, "
            f"expected {expect_ram_pages} pages of {expect_page_size} bytes"
        )
    return fields


def _inflate(blob: memoryview, size: int, where: str) -> bytes:
    """Exactly `size` bytes from a zlib stream, never inflating more than size + 1."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(blob, size)
        # Output stops at `size`; what is left may be only the end of the
        # stream, so ask for one more byte: any byte is one too many.
        tail = inflater.unconsumed_tail
        if not inflater.eof and tail and inflater.decompress(tail, 1):
            raise CheckpointFormatError(f"{where}: compressed data inflates past {size} bytes")
    except zlib.error as exc:
        raise CheckpointFormatError(f"{where}: compressed data is corrupt ({exc})") from None
    if not inflater.eof:
        raise CheckpointFormatError(f"{where}: compressed stream is cut short")
    if inflater.unused_data:
        raise CheckpointFormatError(
            f"{where}: {len(inflater.unused_data)} stray bytes after the compressed stream"
        )
    if len(data) != size:
        raise CheckpointFormatError(
            f"{where}: compressed data inflates to {len(data)} of {size} bytes"
        )
    return data


def _read_runs(
    reader: _Reader, count: int, ram_pages: int, page_size: int, full: bool, compressed: bool
) -> tuple[PageRun, ...]:
    runs: list[PageRun] = []
    prev_start, prev_end = -1, 0
    for index in range(count):
        start, pages, kind = reader.unpack(RUN_HEADER, f"page run {index} header")
        where = f"page run {index} (pages {start}..{start + pages - 1})"
        if kind not in _KIND_NAMES:
            raise CheckpointFormatError(f"page run {index} has unknown kind {kind}")
        if pages == 0:
            raise CheckpointFormatError(f"page run {index} at page {start} is empty")
        if start + pages > ram_pages:
            raise CheckpointFormatError(f"{where} ends past RAM of {ram_pages} pages")
        if start < prev_start:
            raise CheckpointFormatError(
                f"{where} is out of order: starts before page run {index - 1} at page {prev_start}"
            )
        if start < prev_end:
            raise CheckpointFormatError(
                f"{where} overlaps page run {index - 1} (pages {prev_start}..{prev_end - 1})"
            )
        if full and start != prev_end:
            raise CheckpointFormatError(
                f"full checkpoint leaves pages {prev_end}..{start - 1} out (before {where})"
            )
        data: bytes | memoryview | None = None
        if kind == RUN_DATA:
            size = pages * page_size
            if compressed:
                (blob_length,) = reader.unpack(BLOB_LENGTH, f"{where} blob length")
                data = _inflate(reader.take(blob_length, f"{where} compressed data"), size, where)
            else:
                data = reader.take(size, f"{where} data")
        runs.append(PageRun(start, pages, data))
        prev_start, prev_end = start, start + pages
    if full and prev_end != ram_pages:
        raise CheckpointFormatError(f"full checkpoint leaves pages {prev_end}..{ram_pages - 1} out")
    return tuple(runs)


def _read_sections(reader: _Reader, count: int) -> dict[str, DeviceSection]:
    sections: dict[str, DeviceSection] = {}
    for index in range(count):
        name_size, version, data_size = reader.unpack(
            SECTION_HEADER, f"device section {index} header"
        )
        if not 0 < name_size <= MAX_SECTION_NAME_BYTES:
            raise CheckpointFormatError(
                f"device section {index} has a name of {name_size} bytes "
                f"(1..{MAX_SECTION_NAME_BYTES} allowed)"
            )
        raw_name = reader.take(name_size, f"device section {index} name")
        try:
            name = str(raw_name, "utf-8")
        except UnicodeDecodeError:
            raise CheckpointFormatError(
                f"device section {index} name {bytes(raw_name)!r} is not utf-8"
            ) from None
        if name in sections:
            raise CheckpointFormatError(f"device section {index} repeats the name {name!r}")
        data = bytes(reader.take(data_size, f"device section {index} ({name!r}) data"))
        sections[name] = DeviceSection(name, version, data)
    return sections


def decode_checkpoint(
    body: bytes | bytearray | memoryview, *, expect_page_size: int, expect_ram_pages: int
) -> DecodedCheckpoint:
    """Parse and verify a checkpoint body; CheckpointFormatError names any fault.

    Checks, in order: size, magic, version, flags, geometry, trailer digest,
    then every run (bounds, order, overlap, full coverage, sizes, exact
    inflation) and section. Uncompressed page data are views into `body`.
    """
    view = _byte_view(body)
    fields = _check_header(view, expect_page_size, expect_ram_pages)
    _magic, _version, flags, epoch, page_size, ram_pages, run_count, section_count = fields
    end = len(view) - DIGEST_SIZE
    if hashlib.sha256(view[:end]).digest() != view[end:]:
        raise CheckpointFormatError("digest mismatch: body is corrupt or truncated")
    reader = _Reader(view[:end], HEADER.size)
    full = bool(flags & FULL)
    compressed = bool(flags & COMPRESSED)
    runs = _read_runs(reader, run_count, ram_pages, page_size, full, compressed)
    sections = _read_sections(reader, section_count)
    if reader.pos != end:
        raise CheckpointFormatError(
            f"{end - reader.pos} unexpected bytes after the last device section"
        )
    return DecodedCheckpoint(
        epoch=epoch,
        full=full,
        compressed=compressed,
        page_size=page_size,
        ram_pages=ram_pages,
        runs=runs,
        sections=sections,
        body_bytes=len(view),
    )


def checkpoint_stats(decoded: DecodedCheckpoint) -> dict[str, int]:
    """Page and byte counts of a decoded checkpoint, for per-checkpoint statistics."""
    data_pages = sum(run.count for run in decoded.runs if run.data is not None)
    zero_pages = sum(run.count for run in decoded.runs if run.data is None)
    return {
        "data_pages": data_pages,
        "zero_pages": zero_pages,
        "runs": len(decoded.runs),
        "sections": len(decoded.sections),
        "section_bytes": sum(len(s.data) for s in decoded.sections.values()),
        "bytes": decoded.body_bytes,
    }
