"""`colonet demo`: a protected guest, a live failover, and a client that checks.

Builds the namespaces (guest, primary host, secondary host, a standby guest
NIC on the secondary, a switch, a client), starts `colonet secondary` and
`colonet primary` (the embedded guest's counter service behind a buffered
tap), and a client that sends requests continuously. After `kill_after_s`
the primary is killed outright (SIGKILL, and its guest NIC with it, as a
dying host takes its VMs); the secondary takes the guest over from the last
committed checkpoint and the client goes on. The consistency check
(`colonet.demo.consistency`) judges what the client saw. `--no-buffer` runs the
same thing without the filter: the negative control, which must fail.
Everything is removed on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any, TextIO

from colonet.demo.actors import (
    SERVICE_PORT,
    Client,
    EventProcess,
    HeldSampler,
    filters_held,
)
from colonet.demo.consistency import check
from colonet.demo.output import prepare_out_dir, save_run
from colonet.errors import ColonetError
from colonet.net.topology import Topology, run_prefix
from colonet.workdir import sweep_stale_workdirs

REPLICATION_PORT = 7400
PRIMARY_SOCKET, SECONDARY_SOCKET = "primary.sock", "secondary.sock"
TAKEOVER_WAIT_S = 15.0


@dataclass(frozen=True)
class DemoConfig:
    duration_s: float = 6.0  # client running, from the first checkpoint
    kill_after_s: float = 3.0  # primary killed this long after the first checkpoint
    period_ms: int = 100
    buffered: bool = True
    heartbeat_timeout_ms: int = 500
    request_interval_s: float = 0.005
    guest: str = "embedded"  # or "qemu": a real VM (tools/build_guest.sh)
    out_dir: str | None = None  # where the run log and its timeline go (None: nowhere)
    qemu_ram_mib: int = 128
    boot_timeout_s: float = 90.0  # a VM under TCG boots in seconds
    primary_args: tuple[str, ...] = ()  # more `colonet primary` options (fault tests)

    def __post_init__(self) -> None:
        if self.guest not in ("embedded", "qemu"):
            raise ValueError(f"--guest must be embedded or qemu, not {self.guest!r}")
        if not 0 < self.kill_after_s < self.duration_s:
            raise ValueError(
                f"--kill-after {self.kill_after_s} must be between 0 and --duration "
                f"{self.duration_s}"
            )
        if self.period_ms <= 0:
            raise ValueError(f"--period-ms {self.period_ms} must be positive")


def start_pair(
    topo: Topology, config: DemoConfig, sockets_dir: str, procs: list[EventProcess]
) -> tuple[EventProcess, EventProcess]:
    """Start `colonet secondary` then `colonet primary`; return once the first
    checkpoint is committed. Both are appended to `procs` as soon as they run,
    so the caller stops them whatever happens; their control sockets are
    PRIMARY_SOCKET and SECONDARY_SOCKET in `sockets_dir`."""
    # The replication link is authenticated, as it should be in production.
    psk = os.path.join(sockets_dir, "replication.psk")
    if not os.path.exists(psk):
        fd = os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    common = ["--heartbeat-timeout-ms", str(config.heartbeat_timeout_ms), "--psk-file", psk]
    if config.guest == "qemu":
        common += _qemu_args(topo, config)
        primary_guest: list[str] = []
        secondary_guest: list[str] = []
    else:
        common += ["--guest-ip", topo.guest_ip4, "--guest-port", str(SERVICE_PORT)]
        common += ["--guest-nic", "eth0"]
        primary_guest = ["--guest-netns", topo.guest_ns]
        secondary_guest = ["--guest-netns", topo.standby_ns]
    replication = f"{topo.secondary_ip4}:{REPLICATION_PORT}"
    secondary = EventProcess.spawn(
        topo.secondary_ns,
        "secondary",
        "--listen",
        replication,
        *secondary_guest,
        "--socket",
        os.path.join(sockets_dir, SECONDARY_SOCKET),
        *common,
    )
    procs.append(secondary)
    if secondary.wait_for("listening", 30) is None:
        raise ColonetError("the secondary did not start")
    primary = EventProcess.spawn(
        topo.host_ns,
        "primary",
        "--peer",
        replication,
        *(["--netdev", topo.netdev] if config.buffered else []),
        *primary_guest,
        "--checkpoint-delay-ms",
        str(config.period_ms),
        "--socket",
        os.path.join(sockets_dir, PRIMARY_SOCKET),
        *common,
        *config.primary_args,
    )
    procs.append(primary)
    if primary.wait_for("checkpoint", 60) is None:
        raise ColonetError("the primary did not complete its first checkpoint")
    return secondary, primary


def _qemu_args(topo: Topology, config: DemoConfig) -> list[str]:
    """The VM: built (or taken from the cache) by tools/build_guest.sh."""
    from colonet.guest.qemu import build_guest

    kernel, initrd = build_guest()
    return [
        "--guest",
        "qemu",
        "--qemu-kernel",
        kernel,
        "--qemu-initrd",
        initrd,
        "--qemu-tap",
        topo.netdev,
        "--qemu-ip",
        f"{topo.guest_ip4}/24",
        "--ram-mib",
        str(config.qemu_ram_mib),
    ]


def run_once(config: DemoConfig, out: TextIO | None = None) -> dict[str, Any]:
    """One demo run in fresh namespaces; the summary (verdict included, and
    `write_error` if its log or timeline could not be written)."""
    say = (lambda text: print(text, file=out, flush=True)) if out else (lambda text: None)
    if config.out_dir:
        prepare_out_dir(config.out_dir)  # before anything starts: a bad one fails now
    topo = Topology(
        run_prefix(),
        link="tap",
        static_neighbours=False,
        with_secondary=True,
        standby_guest=True,
        vm_holds_taps=config.guest == "qemu",
    )
    tmpdir = tempfile.mkdtemp(prefix="colonet-demo-")
    procs: list[EventProcess] = []
    client: Client | None = None
    sampler: HeldSampler | None = None
    demo_events: list[dict[str, Any]] = []
    try:
        topo.build()
        say(
            f"demo: client {topo.client_ns} -- switch {topo.switch_ns} -- primary host "
            f"{topo.host_ns} / secondary host {topo.secondary_ns}; guest: {config.guest}; "
            "buffering "
            f"{'ON' if config.buffered else 'OFF (negative control)'}"
        )
        secondary, primary = start_pair(topo, config, tmpdir, procs)
        primary_sock = os.path.join(tmpdir, PRIMARY_SOCKET)
        sampler = HeldSampler(primary_sock)
        sampler.start()
        client = Client(topo, config.request_interval_s)
        client.start()
        if not _wait_first_reply(client, config.boot_timeout_s):
            raise ColonetError(f"the guest did not answer within {config.boot_timeout_s} s")
        started = time.monotonic()
        say(
            f"{'epoch':>6} {'dirty pages':>12} {'bytes':>10} {'pause ms':>9} "
            f"{'transfer ms':>12} {'released pkts':>14} {'answered':>9}"
        )
        _follow(primary, client, started + config.kill_after_s, say)
        held = _held_packets(primary_sock)
        killed_at = time.monotonic()
        sampler.stop()
        demo_events.append({"t": time.time(), "source": "demo", "event": "kill"})
        primary.popen.kill()  # SIGKILL: no goodbye, no flush, no cleanup
        topo.kill_guest_nic()
        say(f"demo: primary killed (SIGKILL) with {held} packet(s) held, never to be released")
        takeover = secondary.wait_for("failover", TAKEOVER_WAIT_S)
        if takeover is not None:
            say(
                f"demo: secondary took over from checkpoint {takeover.get('last_committed')} "
                f"({takeover.get('reason')}: {takeover.get('detail')}), counter "
                f"{takeover.get('guest_counter')}"
            )
        time.sleep(max(0.0, started + config.duration_s - time.monotonic()))
        client.close()
    except KeyboardInterrupt:
        say("demo: interrupted, tearing down")
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        if client is not None:
            client.close()
        for proc in procs:
            proc.stop()
        topo.destroy()
        shutil.rmtree(tmpdir, ignore_errors=True)
        # The primary was SIGKILLed: its (and its QEMU's) private dirs are ours to sweep.
        sweep_stale_workdirs()
    summary = _summary(config, primary, secondary, client, killed_at, held)
    if config.out_dir:
        summary |= save_run(
            config.out_dir, primary.events + secondary.events + sampler.events + demo_events,
            summary,
        )  # fmt: skip
        if "write_error" in summary:
            say(f"demo: {summary['write_error']}")
        else:
            say(f"demo: run log {summary['run_log']}, timeline {summary['timeline']}")
    return summary


def _wait_first_reply(client: Client, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not client.replies:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _follow(primary: EventProcess, client: Client, until: float, say) -> None:  # type: ignore[no-untyped-def]
    """Print each checkpoint as it commits, until the kill time."""
    while (left := until - time.monotonic()) > 0:
        try:
            event = primary.news.get(timeout=left)
        except queue.Empty:
            return
        if event is None:
            raise ColonetError("the primary exited before the kill")
        if event.get("event") != "checkpoint":
            say(f"primary: {event}")
            continue
        say(
            f"{event['epoch']:>6} {event['dirty_pages']:>12} {event['body_bytes']:>10} "
            f"{event['pause_ms']:>9.2f} {event['transfer_ms']:>12.2f} "
            f"{event.get('released_packets') or 0:>14} {len(client.replies):>9}"
        )


def _held_packets(primary_sock: str) -> int | None:
    held = filters_held(primary_sock)
    return None if held is None else sum(n["held_packets"] for n in held)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _summary(config, primary, secondary, client, killed_at, held) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    checkpoints = primary.of("checkpoint")
    takeover = next(iter(secondary.of("failover")), None)
    counter = takeover.get("guest_counter") if takeover else None
    verdict = check(client.replies, killed_at, counter, took_over=takeover is not None)
    pauses = [c["pause_ms"] for c in checkpoints]
    before = [r for r in client.replies if r.at < killed_at]
    # Round trips through the buffered primary (after the takeover the guest
    # runs unprotected, so its replies come at once).
    rtts = [ms for at, ms in client.rtts_ms if at < killed_at]
    return {
        "guest": config.guest,
        "buffered": config.buffered,
        "kill_after_s": round(config.kill_after_s, 3),
        "period_ms": config.period_ms,
        "requests_sent": client.sent,
        "answered": len(client.replies),
        "answered_by_primary": len(before),
        "answered_by_secondary": len(client.replies) - len(before),
        "checkpoints": len(checkpoints),
        "applied_on_secondary": len(secondary.of("applied")),
        "pause_ms_median": _round(statistics.median(pauses)) if pauses else None,
        "pause_ms_p99": _pct(pauses, 0.99),
        "transfer_ms_median": _round(statistics.median([c["transfer_ms"] for c in checkpoints]))
        if checkpoints
        else None,
        "bytes_sent": sum(c["body_bytes"] for c in checkpoints),
        "packets_released": sum(c.get("released_packets") or 0 for c in checkpoints),
        "packets_held_at_kill": held,
        "failover_reason": takeover.get("reason") if takeover else None,
        "failover_detail": takeover.get("detail") if takeover else None,
        "takeover_ms": takeover.get("failover_ms") if takeover else None,
        "failover_gap_ms": _round(verdict.failover_gap_ms),
        "last_committed": takeover.get("last_committed") if takeover else None,
        "last_value_from_primary": max((r.value for r in before), default=None),
        "takeover_counter": counter,
        "rtt_ms_median": _round(statistics.median(rtts)) if rtts else None,
        "rtt_ms_p99": _pct(rtts, 0.99),
        "violations": list(verdict.violations),
        "verdict": "pass" if verdict.passed else "fail",
    }
