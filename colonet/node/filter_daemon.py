"""`colonet filter run`: one event loop for the filters and the control socket.

Single-threaded on purpose: packet arrival, seal, commit and failover are
serialised by the loop, so the epoch bookkeeping needs no locks.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colonet.buffer.capture import dump_held
from colonet.buffer.filter_set import FilterSet
from colonet.buffer.status import FilterSetStatus
from colonet.control.protocol import (
    CheckpointRequest,
    CommitRequest,
    DumpRequest,
    FailoverRequest,
    Request,
)
from colonet.control.server import SWEEP_PERIOD_S, ControlServer
from colonet.errors import UsageError
from colonet.net.owner import only_in_this_process

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SealedEpoch:
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch}


class FilterDaemon:
    def __init__(self, filters: FilterSet, socket_path: str | None) -> None:
        self.filters = filters
        self.selector = selectors.DefaultSelector()
        self.control = ControlServer(socket_path, self.handle) if socket_path else None
        self.high_water_requests = 0
        self.checkpoints = 0
        self._stopping = False
        self._timers: list[tuple[float, float, Callable[[], None]]] = []
        self._wake: socket.socket | None = None

    # -- control requests -------------------------------------------------

    def handle(self, request: Request) -> Any:
        """One control request; the result record is answered as JSON."""
        if isinstance(request, CheckpointRequest):
            epoch = self.filters.begin_checkpoint(request.epoch)
            self.checkpoints += 1
            return SealedEpoch(epoch)
        if isinstance(request, CommitRequest):
            return self.filters.commit(request.epoch)
        if isinstance(request, FailoverRequest):
            if request.role is None:
                raise UsageError("failover of a filter process needs role primary or secondary")
            return self.filters.failover(request.role)
        if isinstance(request, DumpRequest):
            return dump_held(self.filters, request.path)
        return self.status()

    def status(self) -> FilterSetStatus:
        return self.filters.status(self.high_water_requests)

    def on_high_water(self, netdev: str) -> None:
        # Standalone, nobody can checkpoint early for us: report it so the
        # checkpointing system driving us sees it in `status`.
        self.high_water_requests += 1
        log.warning("%s reached its high-water mark: an early checkpoint is needed", netdev)

    # -- loop -------------------------------------------------------------

    def every(self, period_s: float, action: Callable[[], None]) -> None:
        self._timers.append((time.monotonic() + period_s, period_s, action))

    def open(self) -> None:
        if self.control is not None:
            self.control.open(self.selector)
            # A client that stopped reading makes no event: drop it on a timer.
            self.every(SWEEP_PERIOD_S, self.control.sweep)

    def stop_soon(self) -> None:
        """From a signal handler or another thread: the loop ends promptly."""
        self._stopping = True
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake.send(b"\0")

    def run(self, *, duration_s: float | None = None, handle_signals: bool = True) -> None:
        """Serve until `stop_soon()` or `duration_s`; with `handle_signals`
        (the process's main thread), SIGINT and SIGTERM stop it too."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = wake_w
        self.selector.register(wake_r, selectors.EVENT_READ, lambda: _drain(wake_r))
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno()) if handle_signals else None
        old_handlers = (
            {
                sig: signal.signal(sig, only_in_this_process(lambda *_: self.stop_soon()))
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            if handle_signals
            else {}
        )
        registered: set[int] = set()
        end = time.monotonic() + duration_s if duration_s else None
        try:
            while not self._stopping:
                registered = self._sync_filter_fds(registered)
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                timeout = 0.5 if end is None else min(0.5, end - now)
                if self._timers:
                    timeout = max(0.0, min(timeout, min(t[0] for t in self._timers) - now))
                for key, _ in self.selector.select(timeout):
                    key.data()
                self._fire_timers()
        finally:
            if old_wakeup is not None:
                signal.set_wakeup_fd(old_wakeup)
            self._wake = None
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            for fd in registered:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fd)
            self.selector.unregister(wake_r)
            wake_r.close()
            wake_w.close()

    def _sync_filter_fds(self, registered: set[int]) -> set[int]:
        """Watch the fds of filters still buffering; forget stopped ones."""
        current = self.filters.fds()
        for fd in registered - set(current):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        for fd, f in current.items():
            if fd not in registered:
                self.selector.register(fd, selectors.EVENT_READ, f.backend.poll)
        return set(current)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        for i, (due, period, action) in enumerate(self._timers):
            if due <= now:
                self._timers[i] = (max(due + period, now), period, action)
                action()

    def close(self) -> None:
        try:
            self.filters.stop()
        finally:
            if self.control is not None:
                self.control.close()
            self.selector.close()


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        sock.recv(4096)
