"""Prometheus metrics (`--metrics ADDR:PORT`, off by default).

Filter figures are read at scrape time from a status callable (a FilterSet
in `colonet filter run`, the filter process's control socket in `colonet
primary`), so the hot path pays nothing. Checkpoint figures are observed by
the engine as each checkpoint commits; failover events are counted by mode
and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from colonet.buffer.filter import FilterState
from colonet.buffer.status import FilterSetStatus
from colonet.errors import ColonetError

# Pauses of an embedded guest are ~1 ms, of a QEMU VM ~100 ms; transfers
# reach seconds on a slow link.
_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STEERING_LOST = FilterState.STEERING_LOST.value
_NETDEV_COUNTERS = (
    ("released_packets", "colonet_filter_released_packets", "Packets released at commits"),
    ("discarded_packets", "colonet_filter_discarded_packets", "Packets discarded (failover/stop)"),
    ("tail_dropped_packets", "colonet_filter_tail_dropped_packets", "Packets over the limit"),
    ("released_bytes", "colonet_filter_released_bytes", "Bytes released at commits"),
)


class FilterCollector(Collector):
    """Per-netdev gauges and counters from a filter status, read per scrape."""

    def __init__(self, status: Callable[[], FilterSetStatus | None]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        try:
            status = self.status()
        except ColonetError:
            status = None
        up = GaugeMetricFamily("colonet_filter_up", "1 when the filters answered this scrape")
        up.add_metric([], 1 if status else 0)
        yield up
        if not status:
            return
        held_p = GaugeMetricFamily(
            "colonet_filter_held_packets", "Packets held now", labels=["netdev"]
        )
        held_b = GaugeMetricFamily("colonet_filter_held_bytes", "Bytes held now", labels=["netdev"])
        counters = {
            key: CounterMetricFamily(name, text, labels=["netdev"])
            for key, name, text in _NETDEV_COUNTERS
        }
        # docs/DESIGN.md invariant 7: an alert on this gauge catches steering
        # removed from outside colonet (the filter then releases nothing).
        lost = GaugeMetricFamily(
            "colonet_filter_steering_lost",
            "1 when the netdev's steering was removed from outside colonet: "
            "the filter releases nothing more",
            labels=["netdev"],
        )
        losses = CounterMetricFamily(
            "colonet_filter_steering_losses",
            "Times colonet found the netdev's steering removed from outside",
            labels=["netdev"],
        )
        for n in status.netdevs:
            held_p.add_metric([n.netdev], n.queue.held_packets)
            held_b.add_metric([n.netdev], n.queue.held_bytes)
            for key, family in counters.items():
                family.add_metric([n.netdev], getattr(n.queue, key))
            lost.add_metric([n.netdev], 1 if n.state == STEERING_LOST else 0)
            losses.add_metric([n.netdev], n.steering_losses)
        yield held_p
        yield held_b
        yield from counters.values()
        yield lost
        yield losses
        age = GaugeMetricFamily(
            "colonet_filter_oldest_epoch_age_seconds",
            "How long the oldest epoch still held has been open",
        )
        age.add_metric([], status.oldest_epoch_age_s)
        yield age
        hw = CounterMetricFamily(
            "colonet_filter_high_water", "Times a filter crossed its high-water mark"
        )
        hw.add_metric([], status.high_water_requests)
        yield hw


class EngineMetrics:
    """Checkpoint histograms and failover counts of one engine."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pause = Histogram(
            "colonet_checkpoint_pause_seconds", "Guest pause per checkpoint",
            buckets=_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.transfer = Histogram(
            "colonet_checkpoint_transfer_seconds", "Body sent -> VMSTATE_RECEIVED",
            buckets=_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.dirty_pages = Counter(
            "colonet_checkpoint_dirty_pages", "Pages sent in checkpoints", registry=registry
        )
        self.body_bytes = Counter(
            "colonet_checkpoint_body_bytes", "Bytes of checkpoint bodies", registry=registry
        )
        self.applied = Counter(
            "colonet_checkpoints_applied", "Checkpoints applied (secondary)", registry=registry
        )
        self.failovers = Counter(
            "colonet_failover_events", "Failover events", ["mode", "reason"], registry=registry
        )

    def checkpoint(self, pause_ms: float, transfer_ms: float, dirty: int, nbytes: int) -> None:
        self.pause.observe(pause_ms / 1000)
        self.transfer.observe(transfer_ms / 1000)
        self.dirty_pages.inc(dirty)
        self.body_bytes.inc(nbytes)

    def failover(self, mode: str, reason: str) -> None:
        self.failovers.labels(mode=mode, reason=reason).inc()


def serve_metrics(
    address: tuple[str, int], status: Callable[[], FilterSetStatus | None] | None = None
) -> tuple[CollectorRegistry, EngineMetrics]:
    """Start the HTTP endpoint in a daemon thread; the registry and engine metrics."""
    registry = CollectorRegistry()
    if status is not None:
        registry.register(FilterCollector(status))
    engine = EngineMetrics(registry)
    try:
        start_http_server(address[1], addr=address[0], registry=registry)
    except OSError as exc:
        raise ColonetError(
            f"cannot serve metrics on {address[0]}:{address[1]}: {exc.strerror}"
        ) from None
    return registry, engine
