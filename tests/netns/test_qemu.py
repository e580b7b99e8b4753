"""A real VM (QEMU, TCG) protected by colonet: buffered, killed, resumed on
the secondary, and the client never sees its counter go back.

Select alone with `bash tools/test.sh -m qemu`.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import threading

import pytest

from colonet.demo.run import DemoConfig, run_once
from colonet.guest.qemu import QemuGuest, QemuGuestConfig, build_guest
from colonet.net.netns import socket_in_netns
from colonet.net.topology import Topology, run_prefix
from tests.netns.harness import FilterProcess, colonet_argv

pytestmark = pytest.mark.qemu


@pytest.fixture(autouse=True)
def _needs_qemu() -> None:
    if shutil.which("qemu-system-x86_64"):
        return
    if os.environ.get("CI"):
        pytest.fail("QEMU tests must run in CI: tools/bootstrap.sh installs qemu-system-x86")
    pytest.skip("qemu-system-x86_64 is not installed (tools/bootstrap.sh installs it)")


def test_vm_killed_mid_run_resumes_on_the_secondary_without_rollback():
    summary = run_once(DemoConfig(guest="qemu", duration_s=11, kill_after_s=6, period_ms=1000))
    assert summary["verdict"] == "pass", summary["violations"]
    assert summary["checkpoints"] >= 3
    # The kill may land after the secondary applied a checkpoint the primary
    # had not yet reported.
    assert 0 <= summary["applied_on_secondary"] - summary["checkpoints"] <= 1
    # The VM's whole state travels each time (tens of MiB for 128 MiB of RAM).
    assert summary["bytes_sent"] / summary["checkpoints"] > 10 * 2**20
    assert summary["packets_released"] > 0 and summary["packets_held_at_kill"] is not None
    assert summary["answered_by_primary"] > 0 and summary["answered_by_secondary"] > 0
    assert summary["last_committed"] == summary["applied_on_secondary"]


def test_qemu_guest_needs_its_kernel_initrd_and_tap():
    done = subprocess.run(
        colonet_argv("primary", "--peer", "127.0.0.1:9", "--guest", "qemu"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--guest qemu needs --qemu-kernel, --qemu-initrd, --qemu-tap" in done.stderr


def test_bulk_tcp_from_a_real_vm_passes_the_filter_intact(request):
    """docs/DESIGN.md's pitfall: a VM's tap carries offloaded frames (GSO, partial
    checksums). 1 MiB echoed by the VM through colonet's filter, committed
    every 50 ms, comes back byte for byte."""

    topo = Topology(run_prefix(), link="tap", static_neighbours=False, vm_holds_taps=True)
    request.addfinalizer(topo.destroy)
    topo.build()
    kernel, initrd = build_guest()
    guest = QemuGuest(
        QemuGuestConfig(
            kernel, initrd, tap=topo.netdev, guest_ip="10.201.0.2/24", netns=topo.host_ns
        )
    )
    request.addfinalizer(guest.shutdown)
    guest.activate()
    filt = FilterProcess.start(topo, "--backend", "tap")
    request.addfinalizer(filt.kill)
    stop = threading.Event()

    def commit_every_50ms() -> None:
        while not stop.wait(0.05):
            filt.call("commit", epoch=filt.call("checkpoint")["epoch"])

    committer = threading.Thread(target=commit_every_50ms, daemon=True)
    committer.start()
    payload = random.Random(6).randbytes(1 << 20)
    sock = socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(20)
    try:
        sock.connect((topo.guest_ip4, 7071))
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        echoed = bytearray()
        while len(echoed) < len(payload):
            chunk = sock.recv(1 << 16)
            assert chunk, f"connection closed after {len(echoed)} bytes"
            echoed += chunk
        sender.join(10)
    finally:
        sock.close()
        stop.set()
        committer.join(5)
    assert bytes(echoed) == payload
    assert filt.netdev_status()["released_packets"] > 100
