"""A QEMU virtual machine as a colonet guest, driven over QMP.

Pause and resume are QMP `stop` and `cont`. A checkpoint is the VM's whole
state: QMP `migrate` to a unix socket colonet listens on, read to the end
while the VM is paused, carried to the secondary as one device section
("qemu-vmstate"). QEMU's RAM is inside that stream, so the colonet RAM
region of this guest is a single empty page. On the secondary, `activate()`
starts the same QEMU command line with `-incoming` from the last committed
stream, `cont`s it and asks QEMU to announce the NIC (`announce-self`).

Full state per checkpoint (tens of MiB for a 128 MiB guest): an incremental
path would need QEMU's dirty-page tracking across checkpoints, which plain
`migrate` does not keep (COLO's `x-colo` capability does, with its own
protocol).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from colonet.errors import ColonetError
from colonet.guest.base import DeviceSection
from colonet.guest.qmp_io import (
    migrate_out,
    qmp_command,
    quit_qemu,
    wait_for_console,
    wait_migration,
)
from colonet.guest.registry import GuestKind, GuestOption, GuestSettings
from colonet.net.owner import die_with_parent
from colonet.workdir import QEMU_PREFIX, Workdir

log = logging.getLogger(__name__)

SECTION = "qemu-vmstate"
SECTION_VERSION = 1
PAGE_SIZE = 4096


def build_guest() -> tuple[str, str]:
    """Kernel and initramfs of the tiny guest (tools/build_guest.sh, cached)."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "build_guest.sh")
    try:
        done = subprocess.run(
            ["bash", os.path.normpath(script)], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise QemuError(f"building the QEMU guest failed: {detail.strip()}") from None
    out = done.stdout.strip().splitlines()[-1]
    return os.path.join(out, "vmlinuz"), os.path.join(out, "initramfs.cpio.gz")


class QemuError(ColonetError):
    """QEMU refused a command or did not start."""


@dataclass(frozen=True)
class QemuGuestConfig:
    kernel: str
    initrd: str
    tap: str  # the host tap QEMU opens (in the namespace QEMU runs in)
    guest_ip: str = "10.201.0.2/24"  # given to the guest on its kernel command line
    mac: str = "52:54:00:c0:10:01"
    ram_mib: int = 128
    qemu: str = "qemu-system-x86_64"
    accel: str = "tcg"
    start_timeout_s: float = 30.0
    # Protection starts once the booted guest prints this on its console
    # (the tiny guest's service does); None: do not wait.
    ready_marker: str | None = "counter_service: listening"
    boot_timeout_s: float = 180.0
    netns: str | None = None  # run QEMU there (None: this process's namespace)
    extra_args: tuple[str, ...] = ()  # e.g. a QEMU -object filter-buffer

    def __post_init__(self) -> None:
        for what, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if not os.path.isfile(path):
                raise ValueError(f"QEMU guest {what} {path!r} does not exist")
        if self.ram_mib < 32:
            raise ValueError(f"ram_mib {self.ram_mib} is under 32")


class QemuGuest:
    page_size = PAGE_SIZE
    ram_pages = 1  # QEMU's RAM travels inside the migration stream

    def __init__(self, config: QemuGuestConfig) -> None:
        self.config = config
        # Removed by shutdown(); by the next colonet's sweep if we are killed.
        self._workdir = Workdir(QEMU_PREFIX)
        self.workdir = self._workdir.path
        self.qmp_path = self._workdir.join("qmp.sock")
        self.proc: subprocess.Popen | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self._ram = bytearray(PAGE_SIZE)
        self._incoming: bytes | None = None

    # -- the guest interface ---------------------------------------------

    def pause(self) -> None:
        self._cmd("stop")

    def resume(self) -> None:
        self._cmd("cont")

    def ram_view(self) -> memoryview:
        return memoryview(self._ram).toreadonly()

    def collect_dirty(self) -> list[int]:
        return []

    def save_devices(self) -> list[DeviceSection]:
        """The VM's whole state, by migration into a socket (VM paused)."""
        return [DeviceSection(SECTION, SECTION_VERSION, self._migrate_out())]

    def load_devices(self, sections: Sequence[DeviceSection]) -> None:
        for section in sections:
            if section.name == SECTION:
                if section.version != SECTION_VERSION:
                    raise ValueError(f"{SECTION} section version {section.version} is not 1")
                self._incoming = bytes(section.data)
        if self._incoming is None:
            raise ValueError(f"the checkpoint has no {SECTION} section: not a QEMU guest's")

    def restore(self, ram: memoryview, sections: Sequence[DeviceSection]) -> None:
        # The whole VM, RAM included, is in its device section for now.
        self.load_devices(sections)

    def takeover_details(self) -> dict[str, Any]:
        return {}

    def netdevs(self) -> list[str]:
        return [self.config.tap]

    def activate(self) -> None:
        """Boot (primary), or resume from the loaded checkpoint (failover)."""
        if self._incoming is None:
            self._start([])
            self._wait_ready()
            return
        state = os.path.join(self.workdir, "state.bin")
        with open(state, "wb") as f:
            f.write(self._incoming)
        self._incoming = None
        self._start(["-incoming", f"exec:cat {state}"])
        self._wait_migration("incoming")
        self._cmd("cont")
        # Switches learn the NIC's new port (QEMU sends RARP from the NIC).
        self._cmd("announce-self", initial=50, max=550, rounds=5, step=100)

    def shutdown(self) -> None:
        quit_qemu(self.qmp, self.proc)
        self.qmp = self.proc = None
        self._workdir.remove()

    # -- QEMU -------------------------------------------------------------

    def argv(self) -> list[str]:
        c = self.config
        prefix = ["ip", "netns", "exec", c.netns] if c.netns else []
        return prefix + [
            c.qemu,
            "-machine",
            f"q35,accel={c.accel}",
            "-m",
            str(c.ram_mib),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            f"file:{os.path.join(self.workdir, 'serial.log')}",
            "-kernel",
            c.kernel,
            "-initrd",
            c.initrd,
            "-append",
            f"console=ttyS0 quiet colonet.ip={c.guest_ip}",
            "-netdev",
            f"tap,id=n0,ifname={c.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=n0,mac={c.mac}",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            *c.extra_args,
        ]

    def _start(self, extra: list[str]) -> None:
        # QEMU dies with its engine: a killed primary host takes its VM along.
        self.proc = subprocess.Popen(
            self.argv() + extra,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + self.config.start_timeout_s
        while not os.path.exists(self.qmp_path):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise QemuError(f"QEMU exited with {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                raise QemuError("QEMU did not open its QMP socket in time")
            time.sleep(0.02)
        self.qmp = QEMUMonitorProtocol(self.qmp_path)
        self.qmp.connect()
        # A paused VM's state leaves at full speed, not at the 128 MiB/s default.
        self._cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 30})

    def _wait_ready(self) -> None:
        marker = self.config.ready_marker
        if marker is None:
            return

        def alive() -> None:
            if self.proc is not None and self.proc.poll() is not None:
                raise QemuError(f"QEMU exited with {self.proc.returncode} while booting")

        serial = os.path.join(self.workdir, "serial.log")
        wait_for_console(serial, marker, self.config.boot_timeout_s, QemuError, alive)

    def _cmd(self, name: str, **args: object) -> object:
        return qmp_command(self.qmp, name, args, QemuError)

    def _migrate_out(self) -> bytes:
        path = os.path.join(self.workdir, "migrate.sock")
        return migrate_out(self._cmd, path, self.config.start_timeout_s, QemuError)

    def _wait_migration(self, what: str) -> None:
        wait_migration(self._cmd, what, self.config.start_timeout_s, QemuError)


def _config(settings: GuestSettings) -> QemuGuestConfig:
    o = settings.options
    return QemuGuestConfig(
        kernel=o["qemu_kernel"] or "",
        initrd=o["qemu_initrd"] or "",
        tap=o["qemu_tap"] or "",
        guest_ip=o.get("qemu_ip") or QemuGuestConfig.guest_ip,
        mac=o.get("qemu_mac") or QemuGuestConfig.mac,
        ram_mib=settings.ram_mib,
    )


def _build(settings: GuestSettings) -> QemuGuest:
    return QemuGuest(_config(settings))


def _check(settings: GuestSettings) -> None:
    _config(settings)  # the kernel and initrd exist, the sizes make sense
    if shutil.which(QemuGuestConfig.qemu) is None:
        raise ValueError(f"{QemuGuestConfig.qemu} is not installed (Debian: qemu-system-x86)")


KIND = GuestKind(
    name="qemu",
    summary="a QEMU VM over QMP (see tools/build_guest.sh)",
    build=_build,
    check=_check,
    options=(
        GuestOption("qemu-kernel", "the VM's kernel", required=True, metavar="FILE"),
        GuestOption("qemu-initrd", "the VM's initrd", required=True, metavar="FILE"),
        GuestOption(
            "qemu-tap", "host tap QEMU opens for the VM's NIC", required=True, metavar="IF"
        ),
        GuestOption("qemu-ip", "the VM's address", "10.201.0.2/24", metavar="A.B.C.D/NN"),
        GuestOption("qemu-mac", "the VM's MAC", "52:54:00:c0:10:01", metavar="MAC"),
    ),
)
