"""What both QEMU guests do over QMP: commands, migration into a socket,
waiting for a migration or for the console, stopping QEMU.

Each caller passes its own error class, so a QemuGuest's fault reads as
QemuError and a TrackedQemu's as TrackedQemuError.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable

from qemu.qmp.legacy import QEMUMonitorProtocol

from colonet.errors import ColonetError

Command = Callable[..., object]  # cmd(name, **args) -> QMP "return"


def qmp_command(
    qmp: QEMUMonitorProtocol | None, name: str, args: dict, error: type[ColonetError]
) -> object:
    if qmp is None:
        raise error(f"QMP {name}: QEMU is not running")
    reply = qmp.cmd_raw(name, args or None)
    if "error" in reply:
        fault = reply["error"]
        raise error(f"QMP {name} failed: {fault.get('desc', fault)}")
    return reply.get("return")


def wait_migration(cmd: Command, what: str, timeout_s: float, error: type[ColonetError]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = cmd("query-migrate")
        state = status.get("status") if isinstance(status, dict) else None
        if state == "completed":
            return
        if state in ("failed", "cancelled"):
            desc = status.get("error-desc", "") if isinstance(status, dict) else ""
            raise error(f"{what} migration {state}: {desc}")
        if time.monotonic() > deadline:
            raise error(f"{what} migration did not complete (status {state})")
        time.sleep(0.002)


def migrate_out(cmd: Command, path: str, timeout_s: float, error: type[ColonetError]) -> bytes:
    """QMP `migrate` into a unix socket at `path`, read to the end (VM paused)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(timeout_s)
        cmd("migrate", uri=f"unix:{path}")
        conn, _ = listener.accept()
        with conn:
            chunks = []
            while chunk := conn.recv(1 << 20):
                chunks.append(chunk)
    wait_migration(cmd, "outgoing", timeout_s, error)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return b"".join(chunks)


def wait_for_console(
    path: str,
    marker: str,
    timeout_s: float,
    error: type[ColonetError],
    check_alive: Callable[[], None] | None = None,
) -> None:
    """Until `marker` appears in the console log at `path` (the guest booted)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
            if marker in f.read():
                return
        if check_alive is not None:
            check_alive()
        time.sleep(0.1)
    raise error(f"the guest did not print {marker!r} on its console within {timeout_s} s")


def quit_qemu(qmp: QEMUMonitorProtocol | None, proc: subprocess.Popen | None) -> None:
    """Ask QEMU to quit over QMP, then reap it (killed after 5 s)."""
    if qmp is not None:
        with contextlib.suppress(Exception):
            qmp.cmd_raw("quit")
        with contextlib.suppress(Exception):
            qmp.close()
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
