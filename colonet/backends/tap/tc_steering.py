"""Kernel plumbing of the tap backend (pyroute2): capture and re-injection.

    guest -> netdev ingress --bpf redirect--> capture tap --fd--> colonet
    colonet --TX ring, SO_MARK--> release veth (a) -> (b) --mirred ingress--> netdev
            -> bpf sees the mark, clears it, lets the frame go on

So a released frame enters the netdev's ingress exactly as the guest's
frame would have, for bridge ports (the bridge learns the guest's MAC on
the netdev) and routed netdevs alike, and traffic *to* the guest never
leaves the kernel. The (b) end carries the netdev's MAC so that frames for
the host are PACKET_HOST, not PACKET_OTHERHOST, when they arrive.

Every link colonet creates has a name starting with `cn` and the release
link's ifalias records, as JSON after `colonet `, what to undo; that is how
`colonet cleanup` finds and reverses the work of a crashed process.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from colonet.backends.tap.bpf_program import steer_program
from colonet.errors import KernelSetupError
from colonet.net.bpf_syscall import load_sched_cls
from colonet.net.owner import owner_alive

ALIAS_TAG = "colonet "
FILTER_PRIO = 0xC010
ETH_P_ALL = 0x0003
CLSACT_INGRESS = "ffff:fff2"
INGRESS_QDISC = "ffff:"


@dataclass(frozen=True)
class SteeringRecord:
    """What was changed on the netdev, so it can be put back exactly."""

    netdev: str
    pid: int
    release_link: str
    created_qdisc: bool
    parent: str

    def alias(self) -> str:
        return ALIAS_TAG + json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_alias(cls, alias: str) -> SteeringRecord | None:
        if not alias.startswith(ALIAS_TAG):
            return None
        try:
            return cls(**json.loads(alias[len(ALIAS_TAG) :]))
        except (ValueError, TypeError):
            return None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise KernelSetupError(f"link {name} vanished")
    return found[0]


def _disable_ipv6(name: str) -> None:
    # No host-originated frames (router solicitations, MLD) on colonet's own
    # links: everything the capture tap carries must be guest output.
    with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
        f.write("1")


def prepare_capture_link(name: str, mtu: int, queue_len: int) -> int:
    with IPRoute() as ipr:
        index = _index(ipr, name)
        _disable_ipv6(name)
        ipr.link("set", index=index, mtu=mtu, txqlen=queue_len)
        ipr.link("set", index=index, state="up")
        return index


def create_release_link(name_a: str, name_b: str, netdev: str, mtu: int) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b})
        try:
            for name in (name_a, name_b):
                _disable_ipv6(name)
            mac = ipr.get_links(_index(ipr, netdev))[0].get("address")
            index_b = _index(ipr, name_b)
            ipr.link("set", index=index_b, address=mac)
            for name in (name_a, name_b):
                ipr.link("set", index=_index(ipr, name), mtu=mtu)
                ipr.link("set", index=_index(ipr, name), state="up")
            ipr.tc("add", "clsact", index_b)
            ipr.tc(
                "add-filter",
                "u32",
                index_b,
                ":1",
                parent=CLSACT_INGRESS,
                prio=FILTER_PRIO,
                protocol=ETH_P_ALL,
                keys=["0x0/0x0+0"],
                target=0x10001,
                action={
                    "kind": "mirred",
                    "direction": "ingress",
                    "action": "redirect",
                    "ifindex": _index(ipr, netdev),
                },
            )
        except BaseException:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=_index(ipr, name_a))
            raise


def steer(netdev: str, capture_index: int, release_link: str) -> SteeringRecord:
    """Attach the bpf program to the netdev's ingress; record how to undo it."""
    with IPRoute() as ipr:
        index = _index(ipr, netdev)
        kinds = {q.get("kind") for q in ipr.get_qdiscs(index=index)}
        created = False
        if "ingress" in kinds:
            parent = INGRESS_QDISC
        else:
            parent = CLSACT_INGRESS
            if "clsact" not in kinds:
                ipr.tc("add", "clsact", index)
                created = True
        record = SteeringRecord(netdev, os.getpid(), release_link, created, parent)
        ipr.link("set", index=_index(ipr, release_link), ifalias=record.alias())
        prog_fd = load_sched_cls(steer_program(capture_index), "colonet_steer")
        try:
            ipr.tc(
                "add-filter",
                "bpf",
                index,
                ":1",
                fd=prog_fd,
                name="colonet",
                parent=parent,
                prio=FILTER_PRIO,
                direct_action=True,
                protocol=ETH_P_ALL,
            )
        except NetlinkError as exc:
            if created:
                ipr.tc("del", "clsact", index)
            raise KernelSetupError(f"attaching the steering filter to {netdev}: {exc}") from None
        finally:
            os.close(prog_fd)
        return record


def unsteer(record: SteeringRecord) -> None:
    """Put the netdev back as it was, then delete the release link."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=record.netdev)
        if found:
            index = found[0]
            if record.created_qdisc:
                with contextlib.suppress(NetlinkError):
                    ipr.tc("del", "clsact", index)
            else:
                with contextlib.suppress(NetlinkError):
                    ipr.tc(
                        "del-filter",
                        "bpf",
                        index,
                        ":1",
                        parent=record.parent,
                        prio=FILTER_PRIO,
                        protocol=ETH_P_ALL,
                    )
    delete_link(record.release_link)


def delete_link(name: str) -> None:
    """Delete a link (a veth takes its peer along); gone already is fine."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=found[0])


def leftover_records() -> list[SteeringRecord]:
    with IPRoute() as ipr:
        records = []
        for link in ipr.get_links():
            record = SteeringRecord.from_alias(link.get("IFLA_IFALIAS") or "")
            if record is not None:
                records.append(record)
        return records


def cleanup(force: bool = False) -> list[str]:
    """Undo the steering of tap backends whose process is gone (all: `force`)."""
    removed = []
    for record in leftover_records():
        if not force and owner_alive(record.pid):
            continue
        unsteer(record)
        removed.append(
            f"tap steering of {record.netdev} (release link {record.release_link}, "
            f"pid {record.pid})"
        )
    return removed
