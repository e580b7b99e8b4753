"""The helper colonet preloads into QEMU to track writes to its RAM.

tools/qemu_dirty/uffd_wp_shim.c, built by tools/qemu_dirty/build.sh (and by
tools/bootstrap.sh) into .cache/qemu_dirty/. When the process it is loaded
into maps the file named by COLONET_UFFD_RAM_PATH with MAP_SHARED, it
registers that mapping for asynchronous userfaultfd write-protection, so
that colonet/guest/pagemap.py can scan it. It reports each registration,
or the step that failed, in the file named by COLONET_UFFD_STATUS, and exits
the process with SHIM_EXIT_CODE when registration fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from colonet.errors import ColonetError
from colonet.guest.dirty_scan import ShimRegistration, parse_shim_status

SHIM_EXIT_CODE = 97
RAM_PATH_ENV = "COLONET_UFFD_RAM_PATH"
STATUS_ENV = "COLONET_UFFD_STATUS"
_BUILD = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "qemu_dirty", "build.sh")


class ShimError(ColonetError):
    """The dirty-tracking helper could not be built, loaded or registered."""


def build_shim() -> str:
    """Path of the helper's shared object (built once, cached by content)."""
    try:
        done = subprocess.run(
            ["bash", os.path.normpath(_BUILD)], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ShimError(
            f"building the QEMU dirty-tracking helper failed: {detail.strip()}"
        ) from None
    return done.stdout.strip().splitlines()[-1]


def preload_env(
    shim: str, ram_path: str, status_path: str, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`env` (default: this process's) with the helper preloaded for `ram_path`."""
    out = dict(os.environ if env is None else env)
    preload = out.get("LD_PRELOAD", "")
    out["LD_PRELOAD"] = f"{shim} {preload}".strip()
    out[RAM_PATH_ENV] = ram_path
    out[STATUS_ENV] = status_path
    return out


def read_status(status_path: str) -> list[ShimRegistration]:
    """The helper's registrations so far; ShimError if it reported a failure."""
    try:
        with open(status_path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    try:
        registrations, errors = parse_shim_status(text)
    except ValueError as exc:
        raise ShimError(str(exc)) from None
    if errors:
        raise ShimError(f"the QEMU dirty-tracking helper failed: {errors[0]}")
    return registrations
