"""`colonet filter run`: attach filters, serve the control socket, detach."""

from __future__ import annotations

import argparse
import json
import logging
import os

from colonet.buffer.capture import ReleasedCapture
from colonet.buffer.epoch_queue import BufferLimitError, BufferLimits
from colonet.buffer.filter_set import BackendOptions, FilterSet
from colonet.buffer.nfqueue import NfqueueConfig
from colonet.cli_engine import parse_address
from colonet.control.server import claim_socket_path
from colonet.errors import UsageError
from colonet.filter_daemon import FilterDaemon
from colonet.metrics import serve_metrics
from colonet.net.privilege import require_net_admin

log = logging.getLogger(__name__)


def run_filters(args: argparse.Namespace) -> int:
    try:
        limits = BufferLimits(
            max_held_packets=args.max_packets,
            max_held_bytes=args.max_bytes,
            high_water_ratio=args.high_water,
        )
    except BufferLimitError as exc:
        raise UsageError(str(exc)) from None
    require_net_admin("colonet filter run")
    # Refuse a taken socket path before anything is installed.
    claim_socket_path(args.socket)
    daemon: FilterDaemon | None = None
    filters = FilterSet.attach(
        args.netdev,
        backend=args.backend,
        limits=limits,
        options=BackendOptions(
            batch_release=not args.no_batch_release,
            nfqueue=NfqueueConfig(
                retain_payloads=args.retain_payloads or bool(args.capture_released)
            ),
        ),
        on_high_water=lambda netdev: daemon.on_high_water(netdev) if daemon else None,
    )
    daemon = FilterDaemon(filters, args.socket)
    capture = None
    try:
        if args.capture_released:
            capture = filters.on_release = ReleasedCapture(os.path.abspath(args.capture_released))
        if args.metrics:
            serve_metrics(parse_address(args.metrics, "--metrics"), daemon.status)
        daemon.open()
        backends = {f.netdev: f.backend.name for f in filters.filters}
        ready = {"event": "ready", "socket": args.socket, "backends": backends}
        attached = ", ".join(f"{netdev} ({kind})" for netdev, kind in backends.items())
        print(
            json.dumps(ready)
            if args.json
            else f"colonet: buffering {attached}; control socket {args.socket}",
            flush=True,
        )
        daemon.run()
    finally:
        daemon.close()
        if capture is not None:
            capture.close()
    final = daemon.status()
    if args.json:
        print(json.dumps({"event": "stopped", "status": final}), flush=True)
    else:
        print("colonet: filters removed", flush=True)
    return 0
