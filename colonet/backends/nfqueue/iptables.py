"""The iptables rules that steer a netdev's guest output into an NFQUEUE.

Every rule carries a comment starting with `colonet` and naming the owning
process, so `colonet cleanup` finds what a crashed process left. Rules have
no `--queue-bypass`: while no process listens on the queue the kernel drops
the packets, so a netdev whose colonet died is closed, never silently
unbuffered (docs/DESIGN.md invariant 7).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from colonet.errors import KernelSetupError
from colonet.net.owner import owner_alive

TAG = "colonet"
TABLE = "mangle"
CHAIN = "PREROUTING"
FAMILIES = ("iptables", "ip6tables")
_PID_IN_COMMENT = re.compile(r"pid=(\d+)")


@dataclass(frozen=True)
class SteeringRule:
    """One rule per IP family: guest output of `netdev` -> queue `queue_num`."""

    netdev: str
    bridge_port: bool
    queue_num: int
    owner_pid: int

    @property
    def comment(self) -> str:
        return f"{TAG} dev={self.netdev} queue={self.queue_num} pid={self.owner_pid}"

    def args(self) -> list[str]:
        # A bridge port's frames show the bridge as their in-interface; the
        # port itself is matched with physdev (needs br_netfilter).
        if self.bridge_port:
            match = ["-m", "physdev", "--physdev-in", self.netdev]
        else:
            match = ["-i", self.netdev]
        return [
            *match,
            "-m",
            "comment",
            "--comment",
            self.comment,
            "-j",
            "NFQUEUE",
            "--queue-num",
            str(self.queue_num),
        ]


def _binary(family: str) -> str:
    path = shutil.which(family)
    if path is None:
        raise KernelSetupError(f"{family} not found: install Debian's iptables package")
    return path


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise KernelSetupError(f"{shlex.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def install(rule: SteeringRule) -> None:
    installed: list[str] = []
    try:
        for family in FAMILIES:
            _run([_binary(family), "-w", "-t", TABLE, "-I", CHAIN, *rule.args()])
            installed.append(family)
    except KernelSetupError:
        for family in installed:
            _run([_binary(family), "-w", "-t", TABLE, "-D", CHAIN, *rule.args()])
        raise


def remove(rule: SteeringRule) -> None:
    errors = []
    for family in FAMILIES:
        try:
            _run([_binary(family), "-w", "-t", TABLE, "-D", CHAIN, *rule.args()])
        except KernelSetupError as exc:
            errors.append(str(exc))
    if errors:
        raise KernelSetupError("; ".join(errors))


def tagged_rules() -> list[tuple[str, list[str]]]:
    """(family, rule spec as printed by iptables-save) of every colonet rule."""
    found = []
    for family in FAMILIES:
        text = _run([_binary(family) + "-save", "-t", TABLE])
        for line in text.splitlines():
            if not line.startswith("-A "):
                continue
            spec = shlex.split(line)
            comments = [spec[i + 1] for i, word in enumerate(spec[:-1]) if word == "--comment"]
            if any(c.split()[0] == TAG for c in comments if c.split()):
                found.append((family, spec))
    return found


def _owner_alive(spec: list[str]) -> bool:
    match = _PID_IN_COMMENT.search(" ".join(spec))
    if match is None:
        return False
    return owner_alive(int(match.group(1)))


def cleanup(force: bool = False) -> list[str]:
    """Delete colonet rules whose owner is gone (all of them with `force`).

    Returns a description of each rule removed.
    """
    removed = []
    for family, spec in tagged_rules():
        if not force and _owner_alive(spec):
            continue
        # iptables-save prints "-A CHAIN ..."; delete the same spec.
        _run([_binary(family), "-w", "-t", TABLE, "-D", *spec[1:]])
        removed.append(f"{family} -t {TABLE} {shlex.join(spec)}")
    return removed
