"""A QEMU process whose guest RAM colonet maps and whose writes it tracks.

The building block of incremental QEMU checkpoints (issue 12), not yet a
`Guest`: colonet/guest/qemu.py is unchanged. `TrackedQemu` takes the VM's
own QEMU command line (without -m, -qmp or a RAM backend) and adds what
tracking needs:

    -m <N>M
    -object memory-backend-file,id=colonet-ram,size=<N>M,mem-path=<file>,share=on
    -machine memory-backend=colonet-ram
    -qmp unix:<workdir>/qmp.sock,server=on,wait=off
    LD_PRELOAD=<uffd_wp_shim.so>  COLONET_UFFD_RAM_PATH=<file>  COLONET_UFFD_STATUS=...

The RAM file is created (and reserved, so a full /dev/shm fails here, not
as a SIGBUS in QEMU later) in /dev/shm, mapped read-only by colonet once the
helper has registered QEMU's mapping of it, then unlinked at once: from then
on nothing is left behind however the processes end. `collect_dirty()` is
the PAGEMAP_SCAN of QEMU's mapping (pages written since the last call).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence

from qemu.qmp.legacy import QEMUMonitorProtocol

from colonet.errors import ColonetError
from colonet.guest.pagemap import PAGE_SIZE, PagemapScanner, find_mappings
from colonet.guest.qmp_io import migrate_out, qmp_command, quit_qemu
from colonet.guest.uffd_shim import SHIM_EXIT_CODE, ShimError, preload_env, read_status
from colonet.net.owner import die_with_parent
from colonet.workdir import TRACKED_QEMU_PREFIX, Workdir

BACKEND_ID = "colonet-ram"


class TrackedQemuError(ColonetError):
    """QEMU with tracked RAM did not start, or refused a command."""


def shared_ram_args(path: str, ram_mib: int, backend_id: str = BACKEND_ID) -> list[str]:
    """QEMU options that put the guest's RAM in `path`, shared (mmap MAP_SHARED)."""
    return [
        "-object",
        f"memory-backend-file,id={backend_id},size={ram_mib}M,mem-path={path},share=on",
        "-machine",
        f"memory-backend={backend_id}",
    ]


def create_ram_file(size: int, directory: str = "/dev/shm") -> str:
    """A new file of `size` bytes, its blocks reserved; removed again on failure."""
    try:
        fd, path = tempfile.mkstemp(prefix="colonet-ram-", suffix=".ram", dir=directory)
    except OSError as exc:
        raise TrackedQemuError(
            f"cannot create a guest RAM file in {directory}: {exc.strerror}"
        ) from None
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise TrackedQemuError(
            f"cannot reserve {size >> 20} MiB for guest RAM in {directory}: {exc.strerror}"
        ) from None
    os.close(fd)
    return path


class TrackedQemu:
    def __init__(
        self,
        argv: Sequence[str],
        ram_mib: int,
        shim: str,
        *,
        ram_dir: str = "/dev/shm",
        start_timeout_s: float = 30.0,
    ) -> None:
        self.argv = list(argv)
        self.ram_mib = ram_mib
        self.ram_bytes = ram_mib << 20
        self.shim = shim
        self.ram_dir = ram_dir
        self.start_timeout_s = start_timeout_s
        # Made by start(): the QMP socket, the helper's status, QEMU's stderr.
        self.workdir: str | None = None
        self._workdir: Workdir | None = None
        self.qmp_path = self.status_path = self.stderr_path = ""
        self.ram_path: str | None = None  # kept after unlinking, for messages
        self._ram_linked = False
        self.proc: subprocess.Popen | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self.scanner: PagemapScanner | None = None
        self.ram_start = 0  # where QEMU mapped the RAM file
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None

    # -- life -------------------------------------------------------------

    def start(self) -> None:
        """Start QEMU; returns once its RAM is registered, mapped here and unlinked."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        if self.workdir is not None:
            raise TrackedQemuError("this QEMU was started already")
        self._workdir = Workdir(TRACKED_QEMU_PREFIX)  # swept if we are killed
        self.workdir = self._workdir.path
        self.qmp_path = self._workdir.join("qmp.sock")
        self.status_path = self._workdir.join("uffd-status")
        self.stderr_path = self._workdir.join("qemu.stderr")
        self.ram_path = create_ram_file(self.ram_bytes, self.ram_dir)
        self._ram_linked = True
        argv = [
            *self.argv,
            "-m",
            f"{self.ram_mib}M",
            *shared_ram_args(self.ram_path, self.ram_mib),
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        env = preload_env(self.shim, self.ram_path, self.status_path)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                preexec_fn=die_with_parent,  # QEMU dies with colonet
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not os.path.exists(self.qmp_path):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TrackedQemuError("QEMU did not open its QMP socket in time")
            time.sleep(0.02)
        self.qmp = QEMUMonitorProtocol(self.qmp_path)
        self.qmp.connect()
        # QMP answers once QEMU's main loop runs: its RAM backend exists by then.
        self.cmd("query-status")
        self._check_alive()
        mine = read_status(self.status_path)
        mapped = find_mappings(self.proc.pid, self.ram_path)
        if len(mine) != 1 or len(mapped) != 1:
            raise ShimError(
                f"expected the helper to register the one mapping of {self.ram_path}; "
                f"it registered {len(mine)}, QEMU has {len(mapped)} (is the helper loaded?)"
            )
        reg = mine[0]
        if (reg.start, reg.end) != mapped[0] or reg.end - reg.start != self.ram_bytes:
            raise ShimError(
                f"the helper registered [{reg.start:#x}, {reg.end:#x}), QEMU maps the RAM "
                f"file at [{mapped[0][0]:#x}, {mapped[0][1]:#x}) ({self.ram_bytes} bytes)"
            )
        self.ram_start = reg.start
        self.scanner = PagemapScanner(self.proc.pid, reg.start, self.ram_bytes)
        with open(self.ram_path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), self.ram_bytes, mmap.MAP_SHARED, mmap.PROT_READ)
        self._view = memoryview(self._map)
        self._unlink_ram()

    def _check_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            return
        with contextlib.suppress(OSError), open(self.stderr_path, errors="replace") as f:
            err = f.read().strip()
        if code == SHIM_EXIT_CODE:
            read_status(self.status_path)  # raises with the helper's own words
            raise ShimError(f"the dirty-tracking helper stopped QEMU: {err}")
        raise TrackedQemuError(f"QEMU exited with {code}: {err}")

    def _unlink_ram(self) -> None:
        if self.ram_path is not None and self._ram_linked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.ram_path)
            self._ram_linked = False

    def close(self) -> None:
        """Stop QEMU and remove everything it and this object made (again: no-op)."""
        try:
            self._stop_qemu()
        finally:
            self._release_ram()
            self._unlink_ram()
            if self._workdir is not None:
                self._workdir.remove()

    def _stop_qemu(self) -> None:
        if self.scanner is not None:
            self.scanner.close()
            self.scanner = None
        quit_qemu(self.qmp, self.proc)
        self.qmp = self.proc = None

    def _release_ram(self) -> None:
        # Views a caller still holds keep the mapping alive; it goes with the
        # last of them (the file is unlinked already, so nothing stays behind).
        if self._view is not None:
            with contextlib.suppress(BufferError):
                self._view.release()
            self._view = None
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None

    def __enter__(self) -> TrackedQemu:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the VM -------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise TrackedQemuError("QEMU is not running")
        return self.proc.pid

    def ram_view(self) -> memoryview:
        """All of guest RAM, read-only (consistent while paused)."""
        if self._view is None:
            raise TrackedQemuError("QEMU is not running")
        return self._view.toreadonly()

    def collect_dirty(self) -> list[int]:
        """Pages written since the last call (read and re-armed); call while paused."""
        if self.scanner is None:
            raise TrackedQemuError("QEMU is not running")
        return self.scanner.collect()

    def pause(self) -> None:
        self.cmd("stop")

    def resume(self) -> None:
        self.cmd("cont")

    def cmd(self, name: str, **args: object) -> object:
        return qmp_command(self.qmp, name, args, TrackedQemuError)

    def save_devices(self) -> bytes:
        """Device state without the shared RAM (needs `x-ignore-shared` set),
        by migration into a socket in the workdir (VM paused)."""
        assert self._workdir is not None
        path = self._workdir.join("migrate.sock")
        return migrate_out(self.cmd, path, self.start_timeout_s, TrackedQemuError)

    @property
    def page_size(self) -> int:
        return PAGE_SIZE

    @property
    def ram_pages(self) -> int:
        return self.ram_bytes // PAGE_SIZE
