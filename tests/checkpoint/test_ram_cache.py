"""The secondary's RAM cache: stage, verify, apply whole, in order."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from colonet.checkpoint.pages import (
    PAGE_SIZE,
    CheckpointFormatError,
    DeviceSection,
    encode_checkpoint,
)
from colonet.checkpoint.ram_cache import CheckpointOrderError, RamCache

PS = PAGE_SIZE
N_PAGES = 16


@pytest.fixture
def cache() -> Iterator[RamCache]:
    with RamCache(PS, N_PAGES) as ram_cache:
        yield ram_cache


def primary_ram(seed: int = 1, n_pages: int = N_PAGES) -> bytearray:
    ram = bytearray(random.Random(seed).randbytes(n_pages * PS))
    ram[2 * PS : 4 * PS] = bytes(2 * PS)  # some zero pages
    return ram


def image(cache: RamCache) -> bytes:
    # Not inlined in asserts: pytest would keep the exported view alive and
    # the fixture could not unmap RAM after a failure.
    return bytes(cache.view())


def touch(ram: bytearray, page: int, value: int) -> None:
    ram[page * PS + 17 : page * PS + 40] = bytes([value]) * 23


def state(cache: RamCache) -> tuple[bytes, int | None, dict]:
    return image(cache), cache.applied_epoch, dict(cache.sections)


def test_full_then_dirty_matches_primary(cache: RamCache) -> None:
    ram = primary_ram()
    cache.apply(cache.stage(encode_checkpoint(1, ram, None, [DeviceSection("cpu", 1, b"a")])))
    assert cache.applied_epoch == 1
    assert cache.digest() == hashlib.sha256(ram).digest()
    assert cache.sections == {"cpu": DeviceSection("cpu", 1, b"a")}

    touch(ram, 5, 9)
    touch(ram, 6, 8)
    ram[12 * PS : 13 * PS] = bytes(PS)  # a page that becomes zero
    ram[2 * PS] = 1  # a zero page that becomes data
    staged = cache.stage(
        encode_checkpoint(2, ram, [2, 5, 6, 12], [DeviceSection("net0", 2, b"q")], True)
    )
    assert staged.stats()["zero_pages"] == 1
    cache.apply(staged)
    assert image(cache) == ram
    assert cache.read_page(12) == bytes(PS)
    assert cache.read_page(5) == ram[5 * PS : 6 * PS]
    assert cache.applied_epoch == 2
    assert cache.sections == {"net0": DeviceSection("net0", 2, b"q")}  # replaced whole


def test_staged_but_not_applied_changes_nothing(cache: RamCache) -> None:
    ram = primary_ram()
    cache.apply(cache.stage(encode_checkpoint(1, ram, None, [DeviceSection("cpu", 1, b"a")])))
    before = state(cache)
    touch(ram, 7, 1)
    staged = cache.stage(encode_checkpoint(2, ram, [7], []))
    assert state(cache) == before
    cache.discard(staged)
    assert state(cache) == before
    cache.apply(cache.stage(encode_checkpoint(2, ram, [7], [])))  # the resend still applies
    assert image(cache) == ram


@pytest.mark.parametrize("compress", [False, True])
def test_cut_or_corrupt_body_leaves_previous_checkpoint(cache: RamCache, compress: bool) -> None:
    ram = primary_ram()
    cache.apply(cache.stage(encode_checkpoint(1, ram, None, [])))
    before = state(cache)
    touch(ram, 1, 3)
    ram[9 * PS : 10 * PS] = bytes(PS)
    body = encode_checkpoint(2, ram, [1, 9], [DeviceSection("cpu", 1, b"regs")], compress)
    for cut in range(len(body)):
        with pytest.raises(CheckpointFormatError):
            cache.stage(body[:cut])
        assert cache.applied_epoch == 1
    corrupt = bytearray(body)
    corrupt[len(body) // 2] ^= 1
    with pytest.raises(CheckpointFormatError, match="digest mismatch"):
        cache.stage(bytes(corrupt))
    assert state(cache) == before
    cache.apply(cache.stage(body))
    assert image(cache) == ram


def test_first_checkpoint_must_be_full(cache: RamCache) -> None:
    with pytest.raises(CheckpointOrderError, match="first checkpoint must be FULL"):
        cache.stage(encode_checkpoint(1, primary_ram(), [0, 1], []))
    assert cache.applied_epoch is None


def test_epochs_must_follow_one_another(cache: RamCache) -> None:
    ram = primary_ram()
    first = cache.stage(encode_checkpoint(4, ram, None, []))  # the first may be any epoch
    cache.apply(first)
    with pytest.raises(CheckpointOrderError, match="checkpoint 4 does not follow .* 4"):
        cache.apply(first)  # applied twice
    with pytest.raises(CheckpointOrderError, match=r"checkpoint 6 .* \(expected 5\)"):
        cache.stage(encode_checkpoint(6, ram, [1], []))
    with pytest.raises(CheckpointOrderError, match="checkpoint 3"):
        cache.stage(encode_checkpoint(3, ram, None, []))  # even a FULL one
    one = cache.stage(encode_checkpoint(5, ram, [1], []))
    other = cache.stage(encode_checkpoint(5, ram, [2], []))
    cache.apply(one)
    with pytest.raises(CheckpointOrderError, match="checkpoint 5 does not follow"):
        cache.apply(other)
    touch(ram, 0, 5)
    cache.apply(cache.stage(encode_checkpoint(6, ram, None, [])))  # a later FULL in order
    assert image(cache) == ram


def test_apply_refuses_checkpoint_staged_elsewhere(cache: RamCache) -> None:
    with RamCache(PS, N_PAGES) as other:
        staged = other.stage(encode_checkpoint(1, primary_ram(), None, []))
    with pytest.raises(CheckpointOrderError, match="another RAM cache"):
        cache.apply(staged)
    assert cache.applied_epoch is None


def test_geometry_mismatch_is_refused_at_stage(cache: RamCache) -> None:
    with pytest.raises(CheckpointFormatError, match="geometry mismatch"):
        cache.stage(encode_checkpoint(1, primary_ram(n_pages=N_PAGES + 1), None, []))


def test_large_zero_run_is_written_in_blocks() -> None:
    n_pages = 300  # 1.17 MiB: one full zero block and a partial one
    ram = bytearray(b"\xaa" * (n_pages * PS))
    with RamCache(PS, n_pages) as cache:
        cache.apply(cache.stage(encode_checkpoint(1, ram, None, [])))
        ram[:] = bytes(n_pages * PS)
        cache.apply(cache.stage(encode_checkpoint(2, ram, range(n_pages), [])))
        assert cache.digest() == hashlib.sha256(ram).digest()


def test_argument_checks(cache: RamCache) -> None:
    with pytest.raises(ValueError, match="ram_pages"):
        RamCache(PS, 0)
    with pytest.raises(IndexError, match="page 16 is outside RAM of 16 pages"):
        cache.read_page(N_PAGES)


# -- property: the cache follows the primary through any sequence --------------

PROP_PAGES = 64
write_op = st.tuples(st.integers(0, PROP_PAGES * PS - 1), st.binary(min_size=1, max_size=300)).map(
    lambda op: ("write", *op)
)
zero_op = st.integers(0, PROP_PAGES - 1).map(lambda page: ("zero", page, b""))
step = st.tuples(
    st.lists(st.one_of(write_op, zero_op), max_size=12),
    st.sets(st.integers(0, PROP_PAGES - 1), max_size=4),  # over-reported dirty pages
    st.booleans(),
    st.binary(max_size=16),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), steps=st.lists(step, max_size=6), compress=st.booleans())
def test_cache_equals_primary_after_every_apply(seed: int, steps: list, compress: bool) -> None:
    rng = random.Random(seed)
    ram = bytearray(rng.randbytes(PROP_PAGES * PS))
    for page in rng.sample(range(PROP_PAGES), 8):
        ram[page * PS : (page + 1) * PS] = bytes(PS)
    with RamCache(PS, PROP_PAGES) as cache:
        cache.apply(cache.stage(encode_checkpoint(1, ram, None, [], compress)))
        assert image(cache) == ram
        for epoch, (ops, extra_dirty, step_compress, device) in enumerate(steps, start=2):
            dirty = set(extra_dirty)
            for kind, where, data in ops:
                if kind == "zero":
                    ram[where * PS : (where + 1) * PS] = bytes(PS)
                    dirty.add(where)
                    continue
                data = data[: len(ram) - where]
                ram[where : where + len(data)] = data
                dirty.update(range(where // PS, (where + len(data) - 1) // PS + 1))
            sections = [DeviceSection("dev", epoch, device)]
            body = encode_checkpoint(epoch, ram, dirty, sections, step_compress)
            cache.apply(cache.stage(body))
            assert image(cache) == ram
            assert cache.applied_epoch == epoch
            assert cache.sections["dev"].data == device
