"""Look up the netdevs colonet is asked to buffer."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyroute2 import IPRoute, NetNS

from colonet.errors import UnknownNetdevError, UsageError
from colonet.net.netns import netns_path

IFF_LOOPBACK = 0x8  # linux/if.h


@dataclass(frozen=True)
class NetdevInfo:
    """What a filter needs to know about its netdev to steer its traffic."""

    name: str
    index: int
    mtu: int
    kind: str | None
    master: str | None
    master_kind: str | None

    @property
    def is_bridge_port(self) -> bool:
        return self.master_kind == "bridge"


def describe_netdev(name: str) -> NetdevInfo:
    """Describe netdev `name` in this namespace, or say which ones exist."""
    with IPRoute() as ipr:
        links = {link.get("ifname"): link for link in ipr.get_links()}
        link = links.get(name)
        if link is None:
            known = ", ".join(sorted(n for n in links if n)) or "none"
            raise UnknownNetdevError(
                f"unknown netdev {name!r}: no such network device in this "
                f"network namespace (devices here: {known})"
            )
        if link["flags"] & IFF_LOOPBACK:
            raise UsageError(
                f"{name} is a loopback device: colonet buffers a netdev that carries a "
                "guest's traffic (its tap, or a veth)"
            )
        master_index = link.get("master")
        master = master_kind = None
        if master_index:
            for other in links.values():
                if other["index"] == master_index:
                    master = other.get("ifname")
                    master_kind = other.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        return NetdevInfo(
            name=name,
            index=link["index"],
            mtu=link.get("mtu") or 1500,
            kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
            master=master,
            master_kind=master_kind,
        )


def set_link_up(netns: str | None, name: str, *, up: bool = True) -> None:
    """Bring `name` up (or down) in `netns` (None: this namespace)."""
    with NetNS(netns) if netns else IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise UnknownNetdevError(
                f"unknown netdev {name!r} in namespace {netns or '(current)'}: cannot bring it up"
            )
        ipr.link("set", index=found[0], state="up" if up else "down")


def require_netdev(netns: str | None, name: str) -> None:
    """Fail now, naming what is missing, if `name` is not in `netns`.

    For settings only used later (a takeover's NIC): checked at start, so a
    typo is found before anything depends on it."""
    where = netns or "(current)"
    if netns is not None and not os.path.exists(netns_path(netns)):
        raise UsageError(f"network namespace {netns!r} does not exist")
    # NetNS(name) would create a missing namespace: checked above.
    with NetNS(netns, flags=0) if netns else IPRoute() as ipr:
        if not ipr.link_lookup(ifname=name):
            known = ", ".join(sorted(link.get("ifname") for link in ipr.get_links()))
            raise UnknownNetdevError(
                f"unknown netdev {name!r} in namespace {where} (devices there: {known})"
            )
