"""tools/qemu_dirty/uffd_wp_shim.c, preloaded into a small Python process
that maps a file the way QEMU maps its RAM backend (no QEMU needed).

Needs gcc and Linux >= 6.7 with userfaultfd write-protect on shmem; skipped
without them outside CI, failed under CI (tools/bootstrap.sh installs gcc).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = 4096
SIZE = 16 << 20  # the stand-in's RAM: 4096 pages
EXIT_REGISTRATION_FAILED = 97

# The stand-in for QEMU: maps $RAM (MAP_SHARED, read-write unless told
# "ro"), prints the mapping's address, then writes one byte into each page
# listed on a line of stdin (or unmaps it on "unmap") and answers "ok".
CHILD = r"""
import ctypes, mmap, os, sys
path, size, mode = os.environ["RAM"], int(os.environ["SIZE"]), os.environ.get("MODE", "rw")
fd = os.open(path, os.O_RDWR if mode == "rw" else os.O_RDONLY)
prot = mmap.PROT_READ | (mmap.PROT_WRITE if mode == "rw" else 0)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m)) if mode == "rw" else 0
print(hex(addr), flush=True)
for line in sys.stdin:
    if line == "unmap\n":
        m.close()
        print("ok", flush=True)
        continue
    for page in map(int, line.split()):
        m[page * 4096] = (m[page * 4096] + 1) % 256
    print("ok", flush=True)
"""


@pytest.fixture(scope="module")
def shim() -> str:
    try:
        done = subprocess.run(
            ["bash", str(REPO / "tools/qemu_dirty/build.sh")],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the shim must build under CI: {exc}")
        pytest.skip(f"cannot build the shim: {exc}")
    return done.stdout.strip().splitlines()[-1]


class Child:
    """The stand-in process, with the shim preloaded for `ram`."""

    def __init__(
        self,
        shim: str,
        ram: Path,
        size: int,
        status: Path,
        mode: str = "rw",
        track: Path | None = None,
    ):
        self.status = status
        env = dict(
            os.environ,
            LD_PRELOAD=shim,
            COLONET_UFFD_RAM_PATH=str(track or ram),
            COLONET_UFFD_STATUS=str(self.status),
            RAM=str(ram),
            SIZE=str(size),
            MODE=mode,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        self.addr = int(line, 16) if line else None

    def write(self, pages: list[int] | str) -> None:
        assert self.proc.stdin and self.proc.stdout
        line = pages if isinstance(pages, str) else " ".join(map(str, pages))
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def status_text(self) -> str:
        return self.status.read_text() if self.status.exists() else ""

    def stop(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err


@pytest.fixture
def ram(request) -> Path:
    """A 16 MiB RAM file in /dev/shm (tmpfs, as QEMU's), removed afterwards."""
    path = Path("/dev/shm") / f"colonet-test-{os.getpid()}-{request.node.name[:40]}.ram"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    request.addfinalizer(lambda: path.unlink(missing_ok=True))
    return path


@pytest.fixture
def child(shim, ram, tmp_path, request):
    made: list[Child] = []

    def start(**kw) -> Child:
        c = Child(shim, ram, SIZE, tmp_path / f"status{len(made)}", **kw)
        made.append(c)
        return c

    def stop_all() -> None:
        for c in made:
            if c.proc.poll() is None:
                c.proc.kill()
            c.proc.wait()

    request.addfinalizer(stop_all)
    return start


def test_the_shared_mapping_of_the_ram_file_is_registered(child, ram):
    c = child()
    assert c.proc.poll() is None
    line = c.status_text()
    fields = line.split()
    assert fields[0] == "registered", line
    start, end = int(fields[1], 16), int(fields[2], 16)
    assert (start, end - start) == (c.addr, SIZE)
    assert fields[3] == str(ram) and fields[5] in ("mode=all", "mode=user")
    code, err = c.stop()
    assert code == 0
    assert "colonet uffd_wp_shim: registered" in err


def test_other_files_pass_through_untouched(child, ram, tmp_path):
    c = child(track=tmp_path / "another.ram")
    (tmp_path / "another.ram").write_bytes(b"")
    c.write([0, 1])
    assert c.stop() == (0, "")
    assert c.status_text() == ""


def test_a_mapping_that_cannot_be_registered_stops_the_process_loudly(child):
    # A read-only shared mapping cannot be write-protected (no VM_MAYWRITE).
    c = child(mode="ro")
    code, err = c.stop()
    assert code == EXIT_REGISTRATION_FAILED
    status = c.status_text()
    assert status.startswith("error UFFDIO_REGISTER"), status
    assert "colonet uffd_wp_shim: error UFFDIO_REGISTER" in err


# -- scanned from outside: colonet/guest/pagemap.py --------------------------


def test_the_scan_reports_exactly_the_written_pages_and_rearms(child):
    from colonet.guest.pagemap import PagemapScanner

    c = child()
    pages = (SIZE) // PAGE
    with PagemapScanner(c.proc.pid, c.addr, SIZE) as scanner:
        assert scanner.pages == pages
        assert scanner.collect() == []  # the shim write-protected everything
        c.write([0, 5, 6, 7, 100, pages - 1])
        assert scanner.peek_runs() == [(0, 1), (5, 3), (100, 1), (pages - 1, 1)]
        assert scanner.collect() == [0, 5, 6, 7, 100, pages - 1]
        assert scanner.collect() == []  # re-armed
        c.write([3, 3, 4])
        assert scanner.collect() == [3, 4]


@pytest.mark.parametrize(
    ("runs", "vec_len"),
    [
        (512, 7),  # many calls, each stopped by a full array
        (600, 4096),  # past the kernel's 512-region bounce buffer: walk_end goes stale
        (1024, 1024),  # the array exactly full as the range ends: stale too
        (1100, 1024),  # full before the end
        (2048, 4096),
    ],
)
def test_more_runs_than_fit_at_once_are_all_reported_once(child, runs, vec_len):
    from colonet.guest.pagemap import PagemapScanner

    c = child()
    every_other = list(range(0, 2 * runs, 2))  # separate runs of one page
    with PagemapScanner(c.proc.pid, c.addr, SIZE, vec_len=vec_len) as scanner:
        c.write(every_other)
        assert scanner.collect() == every_other
        assert scanner.collect() == []


def test_a_range_nobody_registered_is_refused_not_called_clean(shim, ram, tmp_path):
    from colonet.guest.pagemap import DirtyTrackingError, PagemapScanner

    c = Child(shim, ram, SIZE, tmp_path / "status", track=tmp_path / "not-this-one")
    try:
        with (
            PagemapScanner(c.proc.pid, c.addr, SIZE) as scanner,
            pytest.raises(DirtyTrackingError, match="not registered.*EPERM"),
        ):
            scanner.collect()
    finally:
        c.proc.kill()
        c.proc.wait()


def test_a_mapping_that_went_away_is_an_error_not_a_clean_scan(child):
    from colonet.guest.pagemap import DirtyTrackingError, PagemapScanner

    c = child()
    with PagemapScanner(c.proc.pid, c.addr, SIZE) as scanner:
        c.write([1])
        c.write("unmap")
        with pytest.raises(DirtyTrackingError, match="mapping at .* is gone from pid"):
            scanner.collect()


def test_a_process_that_is_gone_is_named(child):
    from colonet.guest.pagemap import DirtyTrackingError, PagemapScanner

    c = child()
    scanner = PagemapScanner(c.proc.pid, c.addr, SIZE)
    c.proc.kill()
    c.proc.wait()
    with pytest.raises(DirtyTrackingError, match="process is gone"):
        scanner.collect()
    scanner.close()
    with pytest.raises(DirtyTrackingError, match=f"/proc/{c.proc.pid}/pagemap"):
        PagemapScanner(c.proc.pid, c.addr, SIZE)


def test_the_mapping_is_found_by_inode_and_the_status_read(child, ram):
    from colonet.guest.pagemap import find_mappings
    from colonet.guest.uffd_shim import read_status

    c = child()
    assert find_mappings(c.proc.pid, str(ram)) == [(c.addr, c.addr + (SIZE))]
    [reg] = read_status(str(c.status))
    assert (reg.start, reg.end, reg.path) == (c.addr, c.addr + (SIZE), str(ram))


def test_a_failed_registration_is_a_shim_error(child):
    from colonet.guest.uffd_shim import ShimError, read_status

    c = child(mode="ro")
    c.stop()
    with pytest.raises(ShimError, match="helper failed: UFFDIO_REGISTER"):
        read_status(str(c.status))
