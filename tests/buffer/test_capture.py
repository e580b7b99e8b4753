"""Capture files are created new, mode 0600, and never clobber anything
(issue 15 item 8): not an existing file, not what a symlink points at."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from colonet.buffer.capture import ReleasedCapture, dump_held, open_private
from colonet.buffer.epoch_queue import BufferLimits
from colonet.buffer.filter import Filter
from colonet.buffer.filter_set import FilterSet
from colonet.errors import UsageError
from tests.buffer.test_filter import FakeBackend

NEVER = "exists; colonet never overwrites a capture"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def sticky(tmp_path: Path) -> Path:
    """A /tmp-like directory holding a root-owned file someone links to."""
    folder = tmp_path / "sticky"
    folder.mkdir()
    folder.chmod(0o1777)
    victim = folder / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    return folder


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), stat.S_IMODE(os.lstat(path).st_mode)


def _open_private(path: str) -> None:
    open_private(path).close()


def _released_capture(path: str) -> None:
    ReleasedCapture(path).close()


def _dump_held(path: str) -> None:
    dump_held(FilterSet([_started_filter()[0]]), path)


def _started_filter() -> tuple[Filter, FakeBackend]:
    backend = FakeBackend("fake0")
    f = Filter("tap0", backend, BufferLimits())
    f.start()
    return f, backend


OPENERS = pytest.mark.parametrize(
    "create", [_open_private, _released_capture, _dump_held], ids=["open", "released", "dump"]
)


@OPENERS
def test_a_new_file_is_mode_0600_under_a_permissive_umask(create, tmp_path, permissive_umask):
    path = tmp_path / "new.pcapng"
    create(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@OPENERS
def test_an_existing_file_is_refused_untouched(create, tmp_path):
    path = tmp_path / "old.pcapng"
    path.write_bytes(b"an earlier capture")
    path.chmod(0o644)
    with pytest.raises(UsageError, match=f"{path} {NEVER}"):
        create(str(path))
    assert _snapshot(path) == (b"an earlier capture", 0o644)


@OPENERS
def test_a_symlink_to_an_existing_file_is_refused_and_the_target_untouched(create, sticky):
    link = sticky / "capture.pcapng"
    link.symlink_to(sticky / "victim")
    with pytest.raises(UsageError, match=f"{link} {NEVER}.*symlink"):
        create(str(link))
    assert _snapshot(sticky / "victim") == (b"precious\n", 0o644)
    assert link.is_symlink()


@OPENERS
def test_a_symlink_to_nothing_is_refused_and_nothing_is_created(create, sticky):
    link = sticky / "capture.pcapng"
    link.symlink_to(sticky / "planted")
    with pytest.raises(UsageError, match=f"{link} {NEVER}.*symlink"):
        create(str(link))
    assert not (sticky / "planted").exists()
    assert sorted(p.name for p in sticky.iterdir()) == ["capture.pcapng", "victim"]


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(UsageError, match=f"{tmp_path} {NEVER}.*directory"):
        open_private(str(tmp_path))


def test_a_relative_path_is_refused():
    with pytest.raises(UsageError, match="must be absolute"):
        open_private("held.pcapng")


def test_a_dump_that_fails_midway_leaves_no_partial_file(tmp_path):
    class KernelHeld:
        """An nfqueue packet whose bytes were not retained."""

        def get_payload(self) -> bytes:
            raise RuntimeError("payload not retained")

    f, backend = _started_filter()
    backend.emit(KernelHeld(), 60)
    path = tmp_path / "held.pcapng"
    with pytest.raises(UsageError, match="--retain-payloads"):
        dump_held(FilterSet([f]), str(path))
    assert not path.exists()
