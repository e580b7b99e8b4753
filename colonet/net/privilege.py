"""Capability checks, so a missing privilege is reported before any change."""

from __future__ import annotations

from colonet.errors import PrivilegeError

CAP_NET_ADMIN = 12


def effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_net_admin() -> bool:
    return bool(effective_capabilities() & (1 << CAP_NET_ADMIN))


def require_net_admin(action: str) -> None:
    if not has_net_admin():
        raise PrivilegeError(
            f"{action} needs CAP_NET_ADMIN (run it as root); "
            "this process does not have it, and nothing was changed"
        )
