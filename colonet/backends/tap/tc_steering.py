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
link's ifalias records, as JSON after `colonet `, what to undo and who owns
it (lock file, pid); that is how `colonet cleanup` finds and reverses the
work of a crashed process, and spares a live one. A running filter checks
its pieces are still there (`snapshot`, then the pure `missing_steering`)
and puts back what vanished (`resteer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from colonet.backends.tap.bpf_program import steer_program
from colonet.errors import KernelSetupError, UsageError
from colonet.net.bpf_syscall import load_sched_cls
from colonet.net.owner import holder_alive

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
    lock: str = ""  # the owner's netdev lock file (colonet.net.owner)

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


def link_index(name: str) -> int:
    with IPRoute() as ipr:
        return _index(ipr, name)


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
        try:
            ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b})
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            # Not a KernelSetupError: `auto` must not fall back to nfqueue
            # behind a dead colonet's steering, which would swallow it all.
            raise UsageError(
                f"{name_a} exists: a colonet that is no longer running left its steering "
                f"of {netdev}; run `colonet cleanup` first"
            ) from None
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


def steer(netdev: str, capture_index: int, release_link: str, lock: str = "") -> SteeringRecord:
    """Attach the bpf program to the netdev's ingress; record how to undo it."""
    with IPRoute() as ipr:
        index = _index(ipr, netdev)
        parent, created = _ingress_parent(ipr, index)
        record = SteeringRecord(netdev, os.getpid(), release_link, created, parent, lock)
        ipr.link("set", index=_index(ipr, release_link), ifalias=record.alias())
        _attach_program(ipr, netdev, index, record, capture_index, created)
        return record


def _ingress_parent(ipr: IPRoute, index: int) -> tuple[str, bool]:
    """Where to attach on the netdev's ingress, adding a clsact if it has
    neither clsact nor ingress qdisc: (parent, whether it was added)."""
    kinds = {q.get("kind") for q in ipr.get_qdiscs(index=index)}
    if "ingress" in kinds:
        return INGRESS_QDISC, False
    if "clsact" in kinds:
        return CLSACT_INGRESS, False
    ipr.tc("add", "clsact", index)
    return CLSACT_INGRESS, True


def _attach_program(
    ipr: IPRoute,
    netdev: str,
    index: int,
    record: SteeringRecord,
    capture_index: int,
    created_now: bool,
) -> None:
    prog_fd = load_sched_cls(steer_program(capture_index), "colonet_steer")
    try:
        ipr.tc(
            "add-filter",
            "bpf",
            index,
            ":1",
            fd=prog_fd,
            name="colonet",
            parent=record.parent,
            prio=FILTER_PRIO,
            direct_action=True,
            protocol=ETH_P_ALL,
        )
    except NetlinkError as exc:
        if created_now:
            ipr.tc("del", "clsact", index)
        raise KernelSetupError(f"attaching the steering filter to {netdev}: {exc}") from None
    finally:
        os.close(prog_fd)


# -- still in place? (docs/DESIGN.md invariant 7) ------------------------------


@dataclass(frozen=True)
class TapSnapshot:
    """What the kernel holds now of one tap backend's steering."""

    links: Mapping[str, int]  # name -> ifindex, of the netdev and colonet's links present
    netdev_qdiscs: frozenset[str]  # qdisc kinds on the netdev
    steering_filter: bool  # colonet's bpf filter on the netdev's ingress (record.parent)
    release_filter: bool  # the mirred filter on the release link's (b) end


def snapshot(
    record: SteeringRecord, capture_link: str, release_links: tuple[str, str]
) -> TapSnapshot:
    """Read, over rtnetlink, the kernel state `missing_steering` judges."""
    names = {record.netdev, capture_link, *release_links}
    with IPRoute() as ipr:
        links = {
            link.get("ifname"): link["index"]
            for link in ipr.get_links()
            if link.get("ifname") in names
        }
        qdiscs: frozenset[str] = frozenset()
        steering = False
        if record.netdev in links:
            index = links[record.netdev]
            qdiscs = frozenset(q.get("kind") for q in ipr.get_qdiscs(index=index))
            steering = _has_filter(ipr, index, record.parent, "bpf")
        release_b = links.get(release_links[1])
        release = release_b is not None and _has_filter(ipr, release_b, CLSACT_INGRESS, "u32")
    return TapSnapshot(links, qdiscs, steering, release)


def missing_steering(
    snap: TapSnapshot,
    record: SteeringRecord,
    netdev_index: int,
    capture_link: str,
    capture_index: int,
    release_links: tuple[str, str],
) -> list[str]:
    """Pure: the pieces of the steering in `record` absent from `snap`, one
    phrase each (empty: all in place)."""
    missing = []
    netdev = record.netdev
    index = snap.links.get(netdev)
    if index is None:
        missing.append(f"netdev {netdev} itself")
    elif index != netdev_index:
        missing.append(f"netdev {netdev} (ifindex {netdev_index}; another device now has its name)")
    else:
        qdisc = "ingress" if record.parent == INGRESS_QDISC else "clsact"
        if qdisc not in snap.netdev_qdiscs:
            missing.append(f"the {qdisc} qdisc on {netdev}")
        if not snap.steering_filter:
            missing.append(f"colonet's bpf filter on {netdev}'s ingress")
    if snap.links.get(capture_link) != capture_index:
        missing.append(f"the capture tap {capture_link}")
    if any(name not in snap.links for name in release_links):
        missing.append(f"the release link {'/'.join(release_links)}")
    elif not snap.release_filter:
        missing.append(f"the mirred filter on {release_links[1]}")
    return missing


def resteer(
    record: SteeringRecord, capture_index: int, release_links: tuple[str, str], mtu: int
) -> SteeringRecord:
    """Put back what vanished of `record`'s steering; returns the record as
    it now is (a qdisc colonet had to add again is colonet's to delete).

    The bpf program redirects to the capture tap as before; if the tap is
    gone too, the redirect finds no device and the kernel drops the frame.
    """
    snap = snapshot(record, "", release_links)
    if record.netdev not in snap.links:
        raise KernelSetupError(f"netdev {record.netdev} is gone: there is nothing to steer")
    if not all(name in snap.links for name in release_links) or not snap.release_filter:
        # Recreated for `colonet cleanup` (its record) more than for use:
        # a filter that lost its steering releases nothing more.
        delete_link(release_links[0])
        create_release_link(*release_links, record.netdev, mtu)
    with IPRoute() as ipr:
        index = _index(ipr, record.netdev)
        parent, created_now = _ingress_parent(ipr, index)
        created = created_now or (record.created_qdisc and parent == record.parent)
        record = dataclasses.replace(record, parent=parent, created_qdisc=created)
        ipr.link("set", index=_index(ipr, release_links[0]), ifalias=record.alias())
        if not _has_filter(ipr, index, parent, "bpf"):
            _attach_program(ipr, record.netdev, index, record, capture_index, created_now)
    return record


def _has_filter(ipr: IPRoute, index: int, parent: str, kind: str) -> bool:
    """Is there a `kind` filter at colonet's priority under `parent`?"""
    return any(
        f.get("kind") == kind and f["info"] >> 16 == FILTER_PRIO
        for f in ipr.get_filters(index=index, parent=_handle(parent))
    )


def _handle(text: str) -> int:
    """tc's "major:minor" (hex) as the u32 netlink carries."""
    major, _, minor = text.partition(":")
    return int(major or "0", 16) << 16 | int(minor or "0", 16)


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
        if not force and holder_alive(record.lock, record.pid):
            continue
        unsteer(record)
        removed.append(
            f"tap steering of {record.netdev} (release link {record.release_link}, "
            f"pid {record.pid})"
        )
    return removed
