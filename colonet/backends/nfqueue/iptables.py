"""The iptables rules that steer a netdev's guest output into an NFQUEUE.

Every rule carries a comment starting with `colonet` and naming the owning
process (its netdev lock file, and its pid for people), so `colonet
cleanup` finds what a crashed process left and spares a live one. Rules
have no `--queue-bypass`: while no process listens on the queue the kernel
drops the packets, so a netdev whose colonet died is closed, never silently
unbuffered (docs/DESIGN.md invariant 7). A running filter checks its rules
are still there (`missing_rules`, pure) and puts them back if not.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from colonet.errors import KernelSetupError
from colonet.net.owner import holder_alive

TAG = "colonet"
TABLE = "mangle"
CHAIN = "PREROUTING"
FAMILIES = ("iptables", "ip6tables")
_PID_IN_COMMENT = re.compile(r"\bpid=(\d+)")
_LOCK_IN_COMMENT = re.compile(r"\block=(\S+)")


@dataclass(frozen=True)
class SteeringRule:
    """One rule per IP family: guest output of `netdev` -> queue `queue_num`."""

    netdev: str
    bridge_port: bool
    queue_num: int
    owner_pid: int
    owner_lock: str = ""  # the owner's lock file (colonet.net.owner)

    @property
    def comment(self) -> str:
        lock = f" lock={self.owner_lock}" if self.owner_lock else ""
        return f"{TAG} dev={self.netdev} queue={self.queue_num} pid={self.owner_pid}{lock}"

    def describe(self, family: str) -> str:
        return (
            f"the {family} rule in {TABLE} {CHAIN} steering {self.netdev} to queue {self.queue_num}"
        )

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


def install(rule: SteeringRule, families: Sequence[str] = FAMILIES) -> None:
    """Insert the rule first in the chain, for each family, all or none."""
    installed: list[str] = []
    try:
        for family in families:
            _run([_binary(family), "-w", "-t", TABLE, "-I", CHAIN, *rule.args()])
            installed.append(family)
    except KernelSetupError:
        for family in installed:
            _run([_binary(family), "-w", "-t", TABLE, "-D", CHAIN, *rule.args()])
        raise


def remove(rule: SteeringRule) -> None:
    """Delete the rule of each family; one already gone (removed from
    outside while colonet ran) is not an error."""
    errors = []
    present = saved_rules()
    for family in FAMILIES:
        if rule.describe(family) in missing_rules(present, rule):
            continue
        try:
            _run([_binary(family), "-w", "-t", TABLE, "-D", CHAIN, *rule.args()])
        except KernelSetupError as exc:
            errors.append(str(exc))
    if errors:
        raise KernelSetupError("; ".join(errors))


def saved_rules() -> dict[str, str]:
    """`iptables-save -t mangle` of each family (takes no xtables lock).

    A family whose listing fails maps to "" (so every rule of it counts as
    missing: what colonet cannot see, it cannot vouch for)."""
    saved = {}
    for family in FAMILIES:
        try:
            saved[family] = _run([_binary(family) + "-save", "-t", TABLE])
        except KernelSetupError:
            saved[family] = ""
    return saved


def rule_specs(saved: str) -> list[list[str]]:
    """Every "-A CHAIN ..." line of one iptables-save output, split as argv."""
    return [shlex.split(line) for line in saved.splitlines() if line.startswith("-A ")]


def missing_rules(saved: Mapping[str, str], rule: SteeringRule) -> list[str]:
    """Pure: which families' copy of `rule` is absent from their
    iptables-save output (one phrase each; empty when both are in place)."""
    expected = ["-A", CHAIN, *rule.args()]
    return [
        rule.describe(family)
        for family in FAMILIES
        if expected not in rule_specs(saved.get(family, ""))
    ]


def tagged_rules() -> list[tuple[str, list[str]]]:
    """(family, rule spec as printed by iptables-save) of every colonet rule."""
    found = []
    for family in FAMILIES:
        text = _run([_binary(family) + "-save", "-t", TABLE])
        for spec in rule_specs(text):
            comments = [spec[i + 1] for i, word in enumerate(spec[:-1]) if word == "--comment"]
            if any(c.split()[0] == TAG for c in comments if c.split()):
                found.append((family, spec))
    return found


def _owner_alive(spec: list[str]) -> bool:
    """The owner named in a rule's comment: its lock, else its pid."""
    text = " ".join(spec)
    lock = _LOCK_IN_COMMENT.search(text)
    pid = _PID_IN_COMMENT.search(text)
    return holder_alive(lock.group(1) if lock else None, int(pid.group(1)) if pid else None)


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
