"""What each node is built from: validated configuration records.

The CLI turns its arguments into these; tests build them directly. Units
are in the names; every check happens once, here, with a message naming
the option a person would have to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from colonet.buffer.epoch_queue import BufferLimits
from colonet.checkpoint.link_security import SecurityFiles
from colonet.checkpoint.transport import ChannelConfig
from colonet.errors import UsageError
from colonet.guest.registry import DEFAULT, GuestSettings

Address = tuple[str, int]

# The replication channel's longest silence allowed mid-checkpoint: a
# heartbeat timeout can be at most that.
MAX_HEARTBEAT_TIMEOUT_MS = ChannelConfig.checkpoint_timeout_ms
MIN_HEARTBEAT_TIMEOUT_MS = 50


def parse_address(text: str, what: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} must be ADDR:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class NodeConfig:
    """What a primary and a secondary share."""

    guest_kind: str = DEFAULT
    guest: GuestSettings = field(default_factory=GuestSettings)
    heartbeat_timeout_ms: int = 1000
    control_socket: str | None = None
    ram_digests: bool = False  # report sha256 of RAM at each checkpoint
    metrics_address: Address | None = None
    json_events: bool = False
    security: SecurityFiles = field(default_factory=SecurityFiles)

    def __post_init__(self) -> None:
        hb = self.heartbeat_timeout_ms
        if not MIN_HEARTBEAT_TIMEOUT_MS <= hb <= MAX_HEARTBEAT_TIMEOUT_MS:
            raise UsageError(
                f"--heartbeat-timeout-ms {hb} must be between {MIN_HEARTBEAT_TIMEOUT_MS} "
                f"and {MAX_HEARTBEAT_TIMEOUT_MS}"
            )
        if self.guest.ram_mib < 1:
            raise UsageError(f"--ram-mib {self.guest.ram_mib} must be positive")

    def channel_config(self) -> ChannelConfig:
        interval = max(10, self.heartbeat_timeout_ms // 5)
        return ChannelConfig(
            heartbeat_interval_ms=interval, heartbeat_timeout_ms=self.heartbeat_timeout_ms
        )


@dataclass(frozen=True)
class FilterConfig:
    """`colonet filter run`, alone or as a primary's child."""

    netdevs: tuple[str, ...]
    control_socket: str
    backend: str = "auto"
    limits: BufferLimits = field(default_factory=BufferLimits)
    batch_release: bool = True
    retain_payloads: bool = False
    capture_released: str | None = None  # absolute path of a pcapng file
    metrics_address: Address | None = None
    json_events: bool = False


@dataclass(frozen=True)
class PrimaryConfig:
    node: NodeConfig
    peer: Address
    netdevs: tuple[str, ...] = ()
    backend: str = "auto"
    max_packets: int | None = None  # filter limits (None: the filter's default)
    max_bytes: int | None = None
    high_water: float | None = None
    checkpoint_delay_ms: int = 100
    strict: bool = False  # keep the guest paused until the secondary loaded
    release_at: str = "received"
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_delay_ms <= 0:
            raise UsageError(f"--checkpoint-delay-ms {self.checkpoint_delay_ms} must be positive")
        if self.release_at not in ("received", "loaded"):
            raise UsageError(f"--release-at must be received or loaded, not {self.release_at!r}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise UsageError(f"--duration {self.duration_s} must be positive")


@dataclass(frozen=True)
class SecondaryConfig:
    node: NodeConfig
    listen: Address
    takeover: bool = True  # False: only keep checkpoints, exit on failover
