"""A user's own QEMU command line, checked for what colonet can protect (pure).

colonet protects a VM by owning three things on its command line: the RAM
(a shared file it can read and track: `memory-backend-file,share=on`), the
QMP monitor it drives, and on the secondary `-incoming`. `check_user_args`
reads the rest of the user's arguments, returns the RAM size they ask for,
and refuses, naming the option, what would break protection:

- RAM colonet cannot map and track: legacy `-mem-path`, a memory backend of
  the user's own (`memory-backend-*` objects, `-machine memory-backend=`,
  NUMA `memdev`), hugepages, memory hotplug (`-m ...,slots=,maxmem=`);
- RAM that changes behind QEMU's mapping: virtio-balloon and virtio-mem
  (they punch holes the write tracking never sees);
- state outside the checkpoint: vhost-user devices (another process holds
  the device), and `-incoming`/`-qmp`, which colonet sets itself.

Disks come with a later step (block replication); until then a `-drive`
or a block `-blockdev` is refused too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE = re.compile(r"^(\d+)([kKmMgGtT]?)[bB]?$")
_UNIT_MIB = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}

# option -> why colonet cannot protect a VM that uses it
_REFUSED_OPTIONS = {
    "-mem-path": "RAM in a file of its own (colonet puts RAM in a shared file it tracks)",
    "-mem-prealloc": "RAM options of its own (colonet sets the RAM backend)",
    "-incoming": "an incoming migration (colonet starts the secondary's VM itself)",
    "-qmp": "a QMP monitor of its own (colonet drives the VM over its own)",
    "-drive": "a disk (disks are not replicated yet)",
    "-hda": "a disk (disks are not replicated yet)",
    "-cdrom": "a disk (disks are not replicated yet)",
}
# words in a -device / -object / -netdev / -chardev value -> why
_REFUSED_KINDS = {
    "virtio-balloon": "a memory balloon (it discards RAM behind the write tracking)",
    "virtio-mem": "virtio-mem (it adds and discards RAM behind the write tracking)",
    "vhost-user": "a vhost-user device (another process holds its state)",
    "memory-backend": "a memory backend of its own (colonet sets the RAM backend)",
    "hugetlb": "hugepages (colonet tracks 4 KiB pages of a shared file)",
}


class QemuArgsError(ValueError):
    """The user's QEMU arguments ask for something colonet cannot protect."""


@dataclass(frozen=True)
class UserVm:
    args: tuple[str, ...]  # the user's arguments, unchanged
    ram_mib: int


def parse_size_mib(text: str) -> int:
    """QEMU's `-m` size (`128`, `128M`, `1G`, `size=1G`) in MiB."""
    value = text.split(",")[0]
    value = value.removeprefix("size=")
    match = _SIZE.match(value)
    if match is None:
        raise QemuArgsError(f"-m {text!r}: not a size (e.g. 128M or 1G)")
    number, unit = int(match.group(1)), match.group(2).lower()
    mib = number * _UNIT_MIB[unit]
    if mib < 1 or mib != int(mib):
        raise QemuArgsError(f"-m {text!r}: RAM must be a whole number of MiB, at least 1")
    return int(mib)


def check_user_args(args: list[str] | tuple[str, ...]) -> UserVm:
    """The RAM the user's QEMU arguments ask for, or QemuArgsError naming the
    first option colonet cannot protect."""
    ram_mib = 128  # QEMU's own default
    i = 0
    while i < len(args):
        option = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if option in _REFUSED_OPTIONS:
            raise QemuArgsError(f"{option}: colonet cannot protect {_REFUSED_OPTIONS[option]}")
        if option == "-m":
            if value is None:
                raise QemuArgsError("-m needs a size")
            if "slots=" in value or "maxmem=" in value:
                raise QemuArgsError(f"-m {value}: memory hotplug (slots/maxmem) is not protected")
            ram_mib = parse_size_mib(value)
        elif option in ("-device", "-object", "-netdev", "-chardev", "-blockdev"):
            if value is None:
                raise QemuArgsError(f"{option} needs a value")
            _check_value(option, value)
        elif option in ("-machine", "-M") and value is not None and "memory-backend=" in value:
            raise QemuArgsError(f"{option} {value}: colonet sets the machine's memory backend")
        elif option == "-numa" and value is not None and "memdev=" in value:
            raise QemuArgsError(f"-numa {value}: NUMA memory backends are not protected")
        i += 2 if option.startswith("-") and value is not None and not value.startswith("-") else 1
    return UserVm(tuple(args), ram_mib)


def _check_value(option: str, value: str) -> None:
    if option == "-blockdev" or (option == "-device" and _is_disk(value)):
        raise QemuArgsError(f"{option} {value}: a disk (disks are not replicated yet)")
    for word, why in _REFUSED_KINDS.items():
        if word in value:
            raise QemuArgsError(f"{option} {value}: colonet cannot protect {why}")


def _is_disk(value: str) -> bool:
    driver = value.split(",")[0]
    return driver in {"virtio-blk-pci", "virtio-blk", "scsi-hd", "ide-hd", "nvme", "usb-storage"}
