"""QemuGuest's pure parts: configuration and the QEMU command line."""

from __future__ import annotations

import pytest

from colonet.checkpoint.pages import DeviceSection
from colonet.guest.qemu import SECTION, QemuGuest, QemuGuestConfig


@pytest.fixture
def files(tmp_path):
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    return str(kernel), str(initrd)


def test_missing_kernel_is_named(tmp_path):
    with pytest.raises(ValueError, match="kernel .*nope.* does not exist"):
        QemuGuestConfig(kernel=str(tmp_path / "nope"), initrd=str(tmp_path), tap="tap0")


def test_command_line_has_the_tap_mac_address_and_qmp(files):
    guest = QemuGuest(QemuGuestConfig(*files, tap="gst0", guest_ip="10.9.0.2/24", ram_mib=64))
    try:
        argv = " ".join(guest.argv())
        assert "tap,id=n0,ifname=gst0,script=no,downscript=no" in argv
        assert "virtio-net-pci,netdev=n0,mac=52:54:00:c0:10:01" in argv
        assert "colonet.ip=10.9.0.2/24" in argv and "-m 64" in argv
        assert f"unix:{guest.qmp_path},server=on,wait=off" in argv
        assert guest.netdevs() == ["gst0"]
        assert guest.collect_dirty() == [] and len(guest.ram_view()) == 4096
    finally:
        guest.shutdown()


def test_loading_needs_the_vm_state_section(files):
    guest = QemuGuest(QemuGuestConfig(*files, tap="gst0"))
    try:
        with pytest.raises(ValueError, match="no qemu-vmstate section"):
            guest.load_devices([DeviceSection("service", 1, b"{}")])
        with pytest.raises(ValueError, match="version 2 is not 1"):
            guest.load_devices([DeviceSection(SECTION, 2, b"x")])
        guest.load_devices([DeviceSection(SECTION, 1, b"stream")])
    finally:
        guest.shutdown()


def test_qmp_without_qemu_is_a_clear_error(files):
    from colonet.guest.qemu import QemuError

    guest = QemuGuest(QemuGuestConfig(*files, tap="gst0"))
    try:
        with pytest.raises(QemuError, match="QMP stop: QEMU is not running"):
            guest.pause()
    finally:
        guest.shutdown()
