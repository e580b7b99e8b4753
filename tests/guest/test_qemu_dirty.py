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

import contextlib
import hashlib
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from colonet.guest.counter_store import REPLY, REQUEST
from colonet.guest.pagemap import PAGE_SIZE
from colonet.guest.qemu_tracked import TrackedQemu, TrackedQemuError, shared_ram_args
from colonet.guest.qmp_io import wait_for_console, wait_migration
from colonet.guest.uffd_shim import ShimError, build_shim

RAM_MIB = 128


def tiny_guest_argv(*extra: str, ip: str = "10.201.0.2/24") -> list[str]:
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
        f"console=ttyS0 quiet colonet.ip={ip}",
        *extra,
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


# -- the whole path: full copy, dirty pages, device state, restore ----------

IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counter:
    """The tiny guest's counter service, through QEMU's user-mode NIC."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)
        self.request_id = 0

    def ask(self, op: bytes) -> int:
        for _ in range(40):
            self.request_id += 1
            self.sock.sendto(REQUEST.pack(op, self.request_id), ("127.0.0.1", self.port))
            with contextlib.suppress(TimeoutError):
                while True:
                    request_id, value = REPLY.unpack(self.sock.recv(64))
                    if request_id == self.request_id:
                        return value
        raise AssertionError(f"no answer to {op!r} on port {self.port}")


def _wait_for(path: str, marker: str, timeout_s: float = 180) -> None:
    wait_for_console(path, marker, timeout_s, TrackedQemuError)


@pytest.mark.qemu
def test_dirty_pages_and_device_state_restore_the_guest_exactly(qemu_available, tmp_path, request):
    """Checkpoint 1 a full copy of RAM, checkpoint 2 only the pages reported
    dirty plus the device state; a fresh QEMU started on the copy with
    -incoming resumes at checkpoint 2's counter, not at the primary's later one."""
    port = _free_udp_port()
    slirp_ip = "10.0.2.15/24"  # where QEMU's user-mode network forwards to
    net = [
        "-netdev",
        f"user,id=n0,hostfwd=udp:127.0.0.1:{port}-:7070",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:c0:10:01",
    ]
    serial = tmp_path / "primary.log"
    vm = TrackedQemu(
        tiny_guest_argv("-serial", f"file:{serial}", *net, ip=slirp_ip), RAM_MIB, build_shim()
    )
    request.addfinalizer(vm.close)
    vm.start()
    vm.cmd("migrate-set-capabilities", capabilities=IGNORE_SHARED)
    vm.cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 30})
    _wait_for(str(serial), "counter_service: listening")
    counter = Counter(port)
    request.addfinalizer(counter.sock.close)
    for _ in range(5):
        counter.ask(b"INC ")

    cache_path = f"/dev/shm/colonet-test-cache-{os.getpid()}.ram"

    def remove_cache() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cache_path)

    request.addfinalizer(remove_cache)
    vm.pause()  # checkpoint 1: all of RAM
    vm.collect_dirty()
    with open(cache_path, "wb") as f:
        f.write(vm.ram_view())
    vm.save_devices()
    vm.resume()

    for _ in range(7):
        at_checkpoint = counter.ask(b"INC ")
    vm.pause()  # checkpoint 2: the dirty pages and the devices
    dirty = vm.collect_dirty()
    ram = vm.ram_view()
    with open(cache_path, "r+b") as f, mmap.mmap(f.fileno(), vm.ram_bytes) as cache:
        for p in dirty:
            cache[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = ram[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
        assert hashlib.sha256(cache).digest() == hashlib.sha256(ram).digest()
    del ram
    devices = vm.save_devices()
    assert len(devices) < 4 << 20, "RAM stayed out of the device state"
    assert 0 < len(dirty) < 4096, "a few requests dirty a few pages, not all of RAM"
    vm.resume()
    assert counter.ask(b"INC ") == at_checkpoint + 1  # never committed
    vm.close()  # the primary is lost

    (tmp_path / "devices.bin").write_bytes(devices)
    qmp_path = str(tmp_path / "qmp.sock")
    secondary = subprocess.Popen(
        [
            *tiny_guest_argv("-serial", f"file:{tmp_path / 'secondary.log'}", *net, ip=slirp_ip),
            "-m",
            f"{RAM_MIB}M",
            *shared_ram_args(cache_path, RAM_MIB),
            "-qmp",
            f"unix:{qmp_path},server=on,wait=off",
            "-incoming",
            "defer",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop_secondary() -> None:
        secondary.kill()
        secondary.wait()

    request.addfinalizer(stop_secondary)
    deadline = time.monotonic() + 30
    while not os.path.exists(qmp_path):
        assert secondary.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    qmp = QEMUMonitorProtocol(qmp_path)
    qmp.connect()
    request.addfinalizer(qmp.close)

    def cmd(name: str, **args: object):
        reply = qmp.cmd_raw(name, args or None)
        assert "error" not in reply, reply
        return reply.get("return")

    cmd("migrate-set-capabilities", capabilities=IGNORE_SHARED)
    cmd("migrate-incoming", uri=f"exec:cat {tmp_path / 'devices.bin'}")
    wait_migration(cmd, "incoming", 30, TrackedQemuError)
    cmd("cont")
    assert counter.ask(b"GET ") == at_checkpoint
    assert counter.ask(b"INC ") == at_checkpoint + 1


@pytest.mark.qemu
def test_a_qemu_without_the_helper_is_refused_and_stopped(qemu_available, tmp_path):
    # The loader skips a preload it cannot open (with a warning) and QEMU
    # runs untracked: that must not pass for protected.
    vm = TrackedQemu(tiny_guest_argv(), RAM_MIB, str(tmp_path / "missing.so"))
    with pytest.raises(ShimError, match="registered 0, QEMU has 1 .is the helper loaded"):
        vm.start()
    assert vm.proc is None and not os.path.exists(vm.workdir)
    assert vm.ram_path and not os.path.exists(vm.ram_path)


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
    assert vm.workdir is None  # nothing was made
