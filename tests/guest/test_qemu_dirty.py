"""Dirty pages of a real QEMU guest's RAM, tracked from outside (issue 12).

The tiny guest boots under QEMU (TCG) with its RAM in a shared /dev/shm file
and tools/qemu_dirty/uffd_wp_shim.c preloaded (colonet/guest/qemu_tracked.py).
At each pause, the pages PAGEMAP_SCAN reports must include every page whose
bytes changed since the previous pause: a copy of RAM updated with only the
reported pages stays equal to RAM. Select alone with `-m qemu`.

The failure paths (QEMU exits at start, the helper fails, no room for RAM)
use a stand-in for QEMU and run without it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import sys
import time

import pytest

from colonet.guest.pagemap import PAGE_SIZE
from colonet.guest.qemu_tracked import TrackedQemu, TrackedQemuError
from colonet.guest.uffd_shim import ShimError, build_shim

RAM_MIB = 128


def tiny_guest_argv() -> list[str]:
    from colonet.guest.qemu import build_guest

    kernel, initrd = build_guest()
    return [
        "qemu-system-x86_64",
        "-machine",
        "q35,accel=tcg",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        "console=ttyS0 quiet colonet.ip=10.201.0.2/24",
    ]


@pytest.fixture
def qemu_available() -> None:
    if shutil.which("qemu-system-x86_64"):
        return
    if os.environ.get("CI"):
        pytest.fail("QEMU tests must run in CI: tools/bootstrap.sh installs qemu-system-x86")
    pytest.skip("qemu-system-x86_64 is not installed (tools/bootstrap.sh installs it)")


@pytest.mark.qemu
def test_every_page_the_guest_changes_is_reported(qemu_available, request):
    vm = TrackedQemu(tiny_guest_argv(), RAM_MIB, build_shim())
    request.addfinalizer(vm.close)
    vm.start()
    pid, workdir = vm.pid, vm.workdir
    assert vm.ram_path and not os.path.exists(vm.ram_path), "unlinked once mapped"
    pages = vm.ram_pages
    time.sleep(0.5)  # the kernel is booting: many writes

    vm.pause()
    vm.collect_dirty()  # first scan after arming: from here on, a copy is the base
    cache = bytearray(vm.ram_view())
    vm.resume()

    scan_ms: list[float] = []
    changed_total = extra_total = extra_zero = 0
    zero_page = bytes(PAGE_SIZE)
    for _ in range(8):
        time.sleep(0.25)
        vm.pause()
        started = time.perf_counter()
        reported = vm.collect_dirty()
        scan_ms.append((time.perf_counter() - started) * 1000)
        ram = vm.ram_view()
        changed = {
            p
            for p in range(pages)
            if ram[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
            != cache[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
        }
        missing = changed - set(reported)
        assert not missing, (
            f"{len(missing)} changed pages not reported, e.g. {sorted(missing)[:10]}"
        )
        assert reported == sorted(set(reported)) and all(0 <= p < pages for p in reported)
        extra = set(reported) - changed
        extra_total += len(extra)
        extra_zero += sum(ram[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] == zero_page for p in extra)
        changed_total += len(changed)
        for p in reported:  # what a secondary's RAM cache would get
            cache[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = ram[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
        assert hashlib.sha256(cache).digest() == hashlib.sha256(ram).digest()
        # Paused, nothing writes guest RAM, and the scan re-armed every page.
        assert vm.collect_dirty() == []
        vm.resume()

    assert changed_total > 100, "the guest hardly wrote: the test proves nothing"
    print(
        f"\n{RAM_MIB} MiB guest, 8 epochs of 250 ms: {changed_total} pages changed, "
        f"{extra_total} more reported unchanged (written with the same bytes; "
        f"{extra_zero} of them zero pages); "
        f"scan median {statistics.median(scan_ms):.2f} ms, max {max(scan_ms):.2f} ms"
    )
    assert statistics.median(scan_ms) < 50

    vm.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(workdir)


# -- failure paths, with a stand-in for QEMU ---------------------------------

# Maps $COLONET_UFFD_RAM_PATH read-only (which the helper cannot register),
# as QEMU would map its RAM backend, then waits.
READ_ONLY_MAPPER = r"""
import mmap, os, sys, time
fd = os.open(os.environ["COLONET_UFFD_RAM_PATH"], os.O_RDONLY)
m = mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED, mmap.PROT_READ)
time.sleep(30)
"""


def _shim_or_skip() -> str:
    try:
        return build_shim()
    except ShimError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def _ours() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("colonet-ram-")}


def test_a_qemu_that_exits_at_start_is_an_error_and_leaves_nothing():
    before = _ours()
    vm = TrackedQemu([sys.executable, "-c", "import sys; sys.exit('no such option')"], 32, "x")
    with pytest.raises(TrackedQemuError, match=r"exited with 1: (?s:.*)no such option"):
        vm.start()
    assert vm.ram_path and not os.path.exists(vm.ram_path)
    assert _ours() == before and not os.path.exists(vm.workdir) and vm.proc is None


def test_a_helper_that_fails_to_register_is_named_and_leaves_nothing():
    before = _ours()
    vm = TrackedQemu([sys.executable, "-c", READ_ONLY_MAPPER], 32, _shim_or_skip())
    with pytest.raises(ShimError, match="helper failed: UFFDIO_REGISTER"):
        vm.start()
    assert vm.ram_path and not os.path.exists(vm.ram_path)
    assert _ours() == before and not os.path.exists(vm.workdir) and vm.proc is None


def test_no_room_for_the_ram_file_is_a_clear_error():
    fs = os.statvfs("/dev/shm")
    too_big = (fs.f_blocks * fs.f_frsize * 2) >> 20  # twice all of /dev/shm
    before = _ours()
    vm = TrackedQemu([sys.executable, "-c", "pass"], too_big, "x")
    with pytest.raises(TrackedQemuError, match=r"cannot reserve \d+ MiB for guest RAM"):
        vm.start()
    assert _ours() == before and not os.path.exists(vm.workdir)
    with pytest.raises(TrackedQemuError, match="cannot create a guest RAM file in /nonexistent"):
        TrackedQemu([sys.executable], 32, "x", ram_dir="/nonexistent").start()


def test_a_scan_of_a_stopped_tracker_is_refused():
    vm = TrackedQemu([sys.executable], 32, "x")
    with pytest.raises(TrackedQemuError, match="not running"):
        vm.collect_dirty()
    vm.close()
