"""Kernel and process counters read around a measurement.

Drops on every hop (UDP socket, links, CPU backlog, the filter's queue or
capture tap), process RSS and machine-wide slab memory. All are cumulative
readings; callers take a reading before and after and subtract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .colonet_api import QUEUE_STATUS, Topology, parse_queue_status, read_proc_net, run_in_netns


def udp_socket_stats(port: int) -> dict[str, int]:
    """rx_queue bytes and drops of our socket from this thread's /proc/net/udp."""
    for line in read_proc_net("udp").splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port:
            return {"rx_queue_bytes": int(f[4].split(":")[1], 16), "drops": int(f[-1])}
    return {"rx_queue_bytes": -1, "drops": -1}


def kernel_drops(topo: Topology, fp: Any) -> dict[str, int]:
    """Packets the kernel dropped on their way into the filter (cumulative).

    nfqueue: the queue's queue_dropped (queue full) and user_dropped (the
    notification did not fit the netlink socket: the kernel drops the packet
    too). tap backend: the capture tap's tx_dropped, as the filter reports it.
    """
    st = fp.netdev_status()
    if fp.backend == "nfqueue":
        text = run_in_netns(topo.host_ns, lambda: read_proc_net(QUEUE_STATUS))
        row = parse_queue_status(text, st["queue"]) or {}
        drops = {k: row.get(k, 0) for k in ("queue_dropped", "user_dropped")}
        drops["missed_notifications"] = int(st.get("missed_notifications") or 0)
        drops["total"] = drops["queue_dropped"] + drops["user_dropped"]
        return drops
    return {"total": int(st.get("kernel_dropped") or 0)}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def link_counters(ns: str, ifname: str) -> dict[str, int]:
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        stats = link.get("stats64") or link.get("IFLA_STATS64") or {}
        return {k: int(stats.get(k, 0) or 0) for k in ("tx_dropped", "rx_dropped")}


def softnet_drops() -> int:
    """Backlog drops summed over CPUs (host-wide, not per namespace)."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def filter_pid(fp: Any) -> int:
    """`ip netns exec` execs, so Popen's pid is the python running colonet: check."""
    pid = fp.proc.pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    if not any(b"python" in a for a in argv[:1]) or b"colonet" not in argv or b"run" not in argv:
        raise RuntimeError(f"pid {pid} is not the colonet filter: {argv!r}")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if children:
        raise RuntimeError(f"filter pid {pid} has children {children}; RSS would be partial")
    return pid
