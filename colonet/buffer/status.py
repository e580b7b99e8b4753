"""What a filter set reports: typed records with their JSON form.

The JSON form is flat (one object per netdev with the queue's counters and
the backend's own details beside them) because people read it with `jq`
and `colonet filter status --json`; the records are what code reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from colonet.buffer.epoch_queue import EpochStats, QueueStats

_QUEUE_FIELDS = tuple(f.name for f in dataclasses.fields(QueueStats) if f.name != "epochs")


@dataclass(frozen=True, slots=True)
class NetdevStatus:
    netdev: str
    backend: str
    state: str
    queue: QueueStats
    passed_through_packets: int = 0
    dropped_after_failover_packets: int = 0
    dropped_after_steering_lost_packets: int = 0
    steering_losses: int = 0  # times colonet found its steering removed from outside
    reason: str | None = None  # why the filter no longer buffers (steering-lost)
    backend_details: Mapping[str, object] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {k: getattr(self.queue, k) for k in _QUEUE_FIELDS}
        body["epochs"] = [dataclasses.asdict(e) for e in self.queue.epochs]
        body.update(
            netdev=self.netdev,
            backend=self.backend,
            state=self.state,
            passed_through_packets=self.passed_through_packets,
            dropped_after_failover_packets=self.dropped_after_failover_packets,
            dropped_after_steering_lost_packets=self.dropped_after_steering_lost_packets,
            steering_losses=self.steering_losses,
            reason=self.reason,
        )
        body.update(self.backend_details)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> NetdevStatus:
        queue = QueueStats(
            **{k: body[k] for k in _QUEUE_FIELDS},
            epochs=tuple(EpochStats(**e) for e in body["epochs"]),
        )
        known = {*_QUEUE_FIELDS, "epochs", *(f.name for f in dataclasses.fields(cls))}
        return cls(
            netdev=body["netdev"],
            backend=body["backend"],
            state=body["state"],
            queue=queue,
            passed_through_packets=body.get("passed_through_packets", 0),
            dropped_after_failover_packets=body.get("dropped_after_failover_packets", 0),
            dropped_after_steering_lost_packets=body.get("dropped_after_steering_lost_packets", 0),
            steering_losses=body.get("steering_losses", 0),
            reason=body.get("reason"),
            backend_details={k: v for k, v in body.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class FilterSetStatus:
    open_epoch: int
    last_sealed: int
    last_released: int
    oldest_epoch_age_s: float
    netdevs: tuple[NetdevStatus, ...]
    high_water_requests: int = 0  # crossings counted by the filter process

    @property
    def held_packets(self) -> int:
        return sum(n.queue.held_packets for n in self.netdevs)

    def to_json(self) -> dict[str, Any]:
        return {
            "open_epoch": self.open_epoch,
            "last_sealed": self.last_sealed,
            "last_released": self.last_released,
            "oldest_epoch_age_s": self.oldest_epoch_age_s,
            "high_water_requests": self.high_water_requests,
            "netdevs": [n.to_json() for n in self.netdevs],
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> FilterSetStatus:
        return cls(
            open_epoch=body["open_epoch"],
            last_sealed=body["last_sealed"],
            last_released=body["last_released"],
            oldest_epoch_age_s=body["oldest_epoch_age_s"],
            high_water_requests=body.get("high_water_requests", 0),
            netdevs=tuple(NetdevStatus.from_json(n) for n in body["netdevs"]),
        )


@dataclass(frozen=True, slots=True)
class DumpResult:
    path: str
    packets: int
    per_netdev: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "packets": self.packets, "per_netdev": dict(self.per_netdev)}
