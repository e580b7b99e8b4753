"""A real VM (QEMU, TCG) protected by colonet: buffered, killed, resumed on
the secondary, and the client never sees its counter go back.

Select alone with `bash tools/test.sh -m qemu`.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from colonet.demo import DemoConfig, run_once
from tests.netns.harness import colonet_argv

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
    assert summary["applied_on_secondary"] == summary["checkpoints"]
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
