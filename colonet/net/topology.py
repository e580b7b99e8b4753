"""Guest, host and client namespaces joined through a buffered netdev.

Used by the tests, the demo and the benchmarks. The guest's NIC reaches the
host either through a veth pair (routed: the host forwards between two
subnets) or through a tap held by a relay process that plays the VM's part
(bridged: the tap and the client's link are ports of one bridge). Either
way the host-side device, `netdev`, is what a colonet filter buffers.

Every name starts with a per-run prefix so parallel runs never collide,
and `destroy()` removes every namespace (and with it every link) even when
building stopped halfway.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

from pyroute2 import NetNS, netns

from colonet.net.netns import netns_path, write_sysctl
from colonet.net.owner import remove_stale_locks

IFA_F_NODAD = 0x02
LinkKind = Literal["veth", "tap"]

_counter = itertools.count()


def run_prefix() -> str:
    """A namespace-name prefix unique to this process and call."""
    return f"cn{os.getpid()}x{next(_counter)}"


@dataclass
class Topology:
    """Three namespaces; `netdev` lives in `host_ns` and carries guest output."""

    prefix: str
    link: LinkKind = "veth"
    netdev: str = "gst0"
    guest_ip4: str = ""
    guest_ip6: str = ""
    client_ip4: str = ""
    client_ip6: str = ""
    # Permanent neighbour entries: the guest's own ARP/ND traffic is guest
    # output too and waits for a commit, so a test that holds an epoch for
    # seconds would otherwise see the guest's neighbour entries fail.
    static_neighbours: bool = True
    mtu: int = 1500
    with_secondary: bool = False  # a fourth namespace on a replication link
    secondary_ip4: str = "10.203.0.2"
    # For failover (tap link, with_secondary): a switch namespace joins the
    # client, the primary host and the secondary host on one L2 segment, and
    # the secondary host has a standby guest NIC (same MAC and addresses as
    # the guest's, link down until the guest is activated there).
    standby_guest: bool = False
    # A real VM (QEMU) opens the host taps itself: no NIC in the guest
    # namespaces and no relay process (tap link only).
    vm_holds_taps: bool = False
    relay: subprocess.Popen | None = field(default=None, repr=False)
    standby_relay: subprocess.Popen | None = field(default=None, repr=False)
    _made: list[str] = field(default_factory=list, repr=False)

    @property
    def guest_ns(self) -> str:
        return self.prefix + "g"

    @property
    def host_ns(self) -> str:
        return self.prefix + "h"

    @property
    def client_ns(self) -> str:
        return self.prefix + "c"

    @property
    def secondary_ns(self) -> str:
        return self.prefix + "s"

    @property
    def switch_ns(self) -> str:
        return self.prefix + "w"

    @property
    def standby_ns(self) -> str:
        """Where the guest runs after a takeover (on the secondary host)."""
        return self.prefix + "t"

    @property
    def mode(self) -> str:
        return "bridged" if self.link == "tap" else "routed"

    def build(self) -> Topology:
        if self.standby_guest and (self.link != "tap" or not self.with_secondary):
            raise ValueError("a standby guest needs link='tap' and with_secondary=True")
        if self.vm_holds_taps and (self.link != "tap" or self.static_neighbours):
            raise ValueError("taps held by a VM need link='tap' and static_neighbours=False")
        if self.standby_guest and self.mtu != 1500:
            raise ValueError("a standby guest is built with the default MTU only")
        try:
            names = [self.guest_ns, self.host_ns, self.client_ns]
            if self.with_secondary:
                names.append(self.secondary_ns)
            if self.standby_guest:
                names += [self.switch_ns, self.standby_ns]
            for name in names:
                netns.create(name)
                self._made.append(name)
            if self.with_secondary:
                self._build_replication_link()
            if self.link == "tap":
                self._build_bridged_tap()
            else:
                self._build_routed_veth()
            if self.mtu != 1500:
                self._set_mtu()
            if self.static_neighbours:
                self._pin_neighbours()
        except BaseException:
            self.destroy()
            raise
        return self

    def _build_replication_link(self) -> None:
        with NetNS(self.host_ns) as host:
            host.link(
                "add",
                ifname="rep0",
                kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": self.secondary_ns},
            )
            index = host.link_lookup(ifname="rep0")[0]
            host.addr("add", index=index, address="10.203.0.1", prefixlen=24)
            host.link("set", index=index, state="up")
        with NetNS(self.secondary_ns) as sec:
            _up(sec, "lo")
            index = sec.link_lookup(ifname="eth0")[0]
            sec.addr("add", index=index, address=self.secondary_ip4, prefixlen=24)
            sec.link("set", index=index, state="up")

    def _build_routed_veth(self) -> None:
        self.guest_ip4, self.guest_ip6 = "10.201.0.2", "fd01:201::2"
        self.client_ip4, self.client_ip6 = "10.202.0.2", "fd01:202::2"
        with NetNS(self.host_ns) as host:
            host.link(
                "add",
                ifname=self.netdev,
                kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": self.guest_ns},
            )
            host.link(
                "add",
                ifname="cli0",
                kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": self.client_ns},
            )
            _up(host, "lo")
            _addr(host, self.netdev, "10.201.0.1", 24, "fd01:201::1", 64)
            _addr(host, "cli0", "10.202.0.1", 24, "fd01:202::1", 64)
        write_sysctl(self.host_ns, "net.ipv4.ip_forward", "1")
        write_sysctl(self.host_ns, "net.ipv6.conf.all.forwarding", "1")
        self._end_host(self.guest_ns, self.guest_ip4, self.guest_ip6, "10.201.0.1", "fd01:201::1")
        self._end_host(
            self.client_ns, self.client_ip4, self.client_ip6, "10.202.0.1", "fd01:202::1"
        )

    def _build_bridged_tap(self) -> None:
        self.guest_ip4, self.guest_ip6 = "10.201.0.2", "fd01:201::2"
        self.client_ip4, self.client_ip6 = "10.201.0.3", "fd01:201::3"
        if not self.vm_holds_taps:
            with NetNS(self.guest_ns) as guest:
                guest.link("add", ifname="eth0", kind="tuntap", mode="tap")
        with NetNS(self.host_ns) as host:
            host.link("add", ifname=self.netdev, kind="tuntap", mode="tap")
            host.link("add", ifname="br0", kind="bridge")
            # Directly to the client, or to the switch that reaches it.
            peer_ns, peer_if = (
                (self.switch_ns, "hp0") if self.standby_guest else (self.client_ns, "eth0")
            )
            host.link(
                "add", ifname="cli0", kind="veth", peer={"ifname": peer_if, "net_ns_fd": peer_ns}
            )
            bridge = host.link_lookup(ifname="br0")[0]
            for port in (self.netdev, "cli0"):
                host.link("set", index=host.link_lookup(ifname=port)[0], master=bridge)
            for name in ("lo", "br0", self.netdev, "cli0"):
                _up(host, name)
        if self.standby_guest:
            self._build_switch()
        self._end_host(self.client_ns, self.client_ip4, self.client_ip6, None, None)
        if not self.vm_holds_taps:
            self._end_host(self.guest_ns, self.guest_ip4, self.guest_ip6, None, None)
            self.relay = _start_relay(self.guest_ns, self.host_ns, self.netdev)
        if self.standby_guest:
            self._build_standby_guest()

    def _build_switch(self) -> None:
        with NetNS(self.switch_ns) as switch:
            switch.link("add", ifname="sw0", kind="bridge")
            for port, ns, name in (
                ("cp0", self.client_ns, "eth0"),
                ("sp0", self.secondary_ns, "up0"),
            ):
                switch.link("add", ifname=port, kind="veth", peer={"ifname": name, "net_ns_fd": ns})
            bridge = switch.link_lookup(ifname="sw0")[0]
            for port in ("hp0", "cp0", "sp0"):
                switch.link("set", index=switch.link_lookup(ifname=port)[0], master=bridge)
            for name in ("lo", "sw0", "hp0", "cp0", "sp0"):
                _up(switch, name)

    def _build_standby_guest(self) -> None:
        """The secondary host's bridge and the guest NIC that waits there."""
        self._build_secondary_bridge()
        if self.vm_holds_taps:
            return  # the secondary's QEMU opens the tap when it takes over
        guest_mac = _mac(self.guest_ns, "eth0")
        with NetNS(self.standby_ns) as standby:
            _up(standby, "lo")
            standby.link("add", ifname="eth0", kind="tuntap", mode="tap")
            index = standby.link_lookup(ifname="eth0")[0]
            standby.link("set", index=index, address=guest_mac)
        # Addresses survive the link being down until activation.
        write_sysctl(self.standby_ns, "net.ipv6.conf.eth0.keep_addr_on_down", "1")
        with NetNS(self.standby_ns) as standby:
            index = standby.link_lookup(ifname="eth0")[0]
            standby.addr("add", index=index, address=self.guest_ip4, prefixlen=24)
            standby.addr(
                "add", index=index, address=self.guest_ip6, prefixlen=64, flags=IFA_F_NODAD
            )
        self.standby_relay = _start_relay(self.standby_ns, self.secondary_ns, self.netdev)

    def _build_secondary_bridge(self) -> None:
        with NetNS(self.secondary_ns) as sec:
            sec.link("add", ifname=self.netdev, kind="tuntap", mode="tap")
            sec.link("add", ifname="br0", kind="bridge")
            bridge = sec.link_lookup(ifname="br0")[0]
            for port in (self.netdev, "up0"):
                sec.link("set", index=sec.link_lookup(ifname=port)[0], master=bridge)
            for name in ("br0", self.netdev, "up0"):
                _up(sec, name)

    def _end_host(self, ns: str, ip4: str, ip6: str, gw4: str | None, gw6: str | None) -> None:
        with NetNS(ns) as ipr:
            _up(ipr, "lo")
            _addr(ipr, "eth0", ip4, 24, ip6, 64)
            if gw4:
                ipr.route("add", dst="default", gateway=gw4)
            if gw6:
                ipr.route("add", dst="default", gateway=gw6, family=10)

    def _set_mtu(self) -> None:
        for ns in (self.guest_ns, self.host_ns, self.client_ns):
            with NetNS(ns) as ipr:
                links = [link for link in ipr.get_links() if link.get("ifname") != "lo"]
                # Bridges last: their MTU may not exceed their ports'.
                links.sort(
                    key=lambda link: link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"
                )
                for link in links:
                    ipr.link("set", index=link["index"], mtu=self.mtu)

    def _pin_neighbours(self) -> None:
        guest_mac = _mac(self.guest_ns, "eth0")
        client_mac = _mac(self.client_ns, "eth0")
        if self.link == "tap":
            pins = [
                (self.guest_ns, [(self.client_ip4, client_mac), (self.client_ip6, client_mac)]),
                (self.client_ns, [(self.guest_ip4, guest_mac), (self.guest_ip6, guest_mac)]),
            ]
        else:
            host_g, host_c = _mac(self.host_ns, self.netdev), _mac(self.host_ns, "cli0")
            pins = [
                (self.guest_ns, [("10.201.0.1", host_g), ("fd01:201::1", host_g)]),
                (self.client_ns, [("10.202.0.1", host_c), ("fd01:202::1", host_c)]),
            ]
        for ns, entries in pins:
            with NetNS(ns) as ipr:
                index = ipr.link_lookup(ifname="eth0")[0]
                for ip, mac in entries:
                    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state="permanent")
        if self.link == "veth":
            with NetNS(self.host_ns) as ipr:
                for dev, ip, mac in (
                    (self.netdev, self.guest_ip4, guest_mac),
                    (self.netdev, self.guest_ip6, guest_mac),
                    ("cli0", self.client_ip4, client_mac),
                    ("cli0", self.client_ip6, client_mac),
                ):
                    index = ipr.link_lookup(ifname=dev)[0]
                    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state="permanent")

    def kill_guest_nic(self) -> None:
        """SIGKILL the primary guest's NIC, as a dying host takes its VMs."""
        _kill(self.relay)

    def destroy(self) -> None:
        for relay in (self.relay, self.standby_relay):
            _kill(relay)
            if relay is not None and relay.stdout:
                relay.stdout.close()
        self.relay = self.standby_relay = None
        for name in reversed(self._made):
            with contextlib.suppress(OSError):
                inode = os.stat(netns_path(name)).st_ino
                netns.remove(name)
                # A filter killed with its engine (SIGKILL) leaves its lock
                # file; the namespace it named is gone, so is any use for it.
                remove_stale_locks(netns=inode)
        self._made.clear()

    def __enter__(self) -> Topology:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _start_relay(guest_ns: str, host_ns: str, host_tap: str) -> subprocess.Popen:
    relay = subprocess.Popen(
        [sys.executable, "-m", "colonet.net.tap_relay", guest_ns, "eth0", host_ns, host_tap],
        stdout=subprocess.PIPE,
    )
    assert relay.stdout is not None
    if relay.stdout.readline().strip() != b"ready":
        relay.kill()
        raise RuntimeError("tap relay did not start")
    _wait_carrier(host_ns, host_tap)
    return relay


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def _up(ipr: NetNS, name: str) -> None:
    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")


def _addr(ipr: NetNS, name: str, ip4: str, len4: int, ip6: str, len6: int) -> None:
    index = ipr.link_lookup(ifname=name)[0]
    ipr.addr("add", index=index, address=ip4, prefixlen=len4)
    # No duplicate address detection: the address must work at once.
    ipr.addr("add", index=index, address=ip6, prefixlen=len6, flags=IFA_F_NODAD)
    ipr.link("set", index=index, state="up")


def _mac(ns: str, name: str) -> str:
    with NetNS(ns) as ipr:
        return ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get("address")


def _wait_carrier(ns: str, name: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    with NetNS(ns) as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        while time.monotonic() < deadline:
            if ipr.get_links(index)[0].get("carrier") == 1:
                return
            time.sleep(0.02)
    raise RuntimeError(f"{name} in {ns} has no carrier")
