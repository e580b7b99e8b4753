"""`colonet filter run`: attach filters, serve the control socket, detach."""

from __future__ import annotations

import json
import logging

from colonet.backends.attach import attach_filters
from colonet.buffer.backend import BackendOptions
from colonet.buffer.capture import ReleasedCapture
from colonet.control.server import claim_socket_path
from colonet.net.change_watch import ChangeWatch
from colonet.net.privilege import require_net_admin
from colonet.node.config import FilterConfig
from colonet.node.events import EventSink
from colonet.node.filter_daemon import FilterDaemon
from colonet.node.metrics import serve_metrics

log = logging.getLogger(__name__)


def run_filter_node(config: FilterConfig) -> int:
    """Buffer `config.netdevs` until a stop signal; prints a ready line first,
    then one line per event (steering lost), then a stopped line."""
    require_net_admin("colonet filter run")
    # Refuse a taken socket path before anything is installed.
    claim_socket_path(config.control_socket)
    daemon: FilterDaemon | None = None
    filters = attach_filters(
        config.netdevs,
        backend=config.backend,
        limits=config.limits,
        options=BackendOptions(
            batch_release=config.batch_release,
            retain_payloads=config.retain_payloads or bool(config.capture_released),
        ),
        on_high_water=lambda netdev: daemon.on_high_water(netdev) if daemon else None,
    )
    daemon = FilterDaemon(
        filters, config.control_socket, EventSink(config.json_events), watch=ChangeWatch.open()
    )
    capture = None
    try:
        if config.capture_released:
            capture = filters.on_release = ReleasedCapture(config.capture_released)
        if config.metrics_address is not None:
            serve_metrics(config.metrics_address, daemon.status)
        daemon.open()
        backends = {f.netdev: f.backend.name for f in filters.filters}
        ready = {"event": "ready", "socket": config.control_socket, "backends": backends}
        attached = ", ".join(f"{netdev} ({kind})" for netdev, kind in backends.items())
        daemon.run(
            on_ready=lambda: print(
                json.dumps(ready)
                if config.json_events
                else f"colonet: buffering {attached}; control socket {config.control_socket}",
                flush=True,
            )
        )
    finally:
        daemon.close()
        if capture is not None:
            capture.close()
    final = daemon.status()
    if config.json_events:
        print(json.dumps({"event": "stopped", "status": final.to_json()}), flush=True)
    else:
        print("colonet: filters removed", flush=True)
    return 0
