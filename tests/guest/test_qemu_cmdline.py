"""What colonet accepts of a user's QEMU command line (issue 12). No root."""

from __future__ import annotations

import pytest

from colonet.guest.qemu_cmdline import QemuArgsError, check_user_args, parse_size_mib


@pytest.mark.parametrize(
    ("text", "mib"),
    [("128", 128), ("128M", 128), ("128m", 128), ("1G", 1024), ("size=2G", 2048), ("512MB", 512)],
)
def test_sizes(text: str, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "0", "1k", "1.5G", "-4M"])
def test_bad_sizes_are_named(text: str) -> None:
    with pytest.raises(QemuArgsError, match="-m"):
        parse_size_mib(text)


def test_a_plain_diskless_vm_is_accepted_with_its_ram_size() -> None:
    args = [
        "-machine", "q35", "-cpu", "max", "-m", "1G", "-smp", "2", "-nographic",
        "-kernel", "vmlinuz", "-initrd", "initrd", "-append", "console=ttyS0 quiet",
        "-netdev", "tap,id=n0,ifname=gst0,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:c0:10:01",
    ]  # fmt: skip
    vm = check_user_args(args)
    assert vm.ram_mib == 1024 and vm.args == tuple(args)


def test_qemus_default_ram_is_assumed_without_m() -> None:
    assert check_user_args(["-nographic"]).ram_mib == 128


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (["-mem-path", "/dev/hugepages"], r"-mem-path: colonet cannot protect RAM in a file"),
        (["-incoming", "defer"], r"-incoming: .*starts the secondary's VM itself"),
        (["-qmp", "unix:/tmp/q,server"], r"-qmp: .*QMP monitor of its own"),
        (["-drive", "file=disk.qcow2"], r"-drive: .*disks are not replicated yet"),
        (["-device", "virtio-blk-pci,drive=d0"], r"virtio-blk-pci.*disks are not replicated"),
        (["-blockdev", "driver=file,filename=x"], r"-blockdev .*disks are not replicated"),
        (["-device", "virtio-balloon-pci"], r"memory balloon"),
        (["-object", "memory-backend-file,id=m,size=1G,mem-path=/x"], r"memory backend of its own"),
        (["-machine", "q35,memory-backend=m"], r"sets the machine's memory backend"),
        (["-numa", "node,memdev=m"], r"NUMA memory backends"),
        (["-m", "1G,slots=4,maxmem=8G"], r"memory hotplug"),
        (
            ["-chardev", "socket,id=c,path=/s", "-netdev", "vhost-user,id=n,chardev=c"],
            r"vhost-user",
        ),
        (["-device", "virtio-mem-pci,memdev=m"], r"virtio-mem"),
        (["-m"], r"-m needs a size"),
    ],
)
def test_what_cannot_be_protected_is_refused_by_name(args: list[str], fault: str) -> None:
    with pytest.raises(QemuArgsError, match=fault):
        check_user_args(args)
