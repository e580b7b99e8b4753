"""`colonet filter run`: one event loop for the filters and the control socket.

Single-threaded on purpose: packet arrival, seal, commit and failover are
serialised by the loop, so the epoch bookkeeping needs no locks. The same
loop checks every ~200 ms that the kernel steering is still in place
(docs/DESIGN.md invariant 7) and reports a loss as an event.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from colonet.buffer.capture import dump_held
from colonet.buffer.filter import SteeringLoss
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
from colonet.net.change_watch import ChangeWatch
from colonet.net.owner import only_in_this_process
from colonet.node.events import EventSink

log = logging.getLogger(__name__)

# How often the loop checks the kernel steering: the longest a removal from
# outside goes unnoticed. A check costs ~2 ms (tap: rtnetlink dumps) to
# ~3 ms (nfqueue: iptables-save of both families).
STEERING_CHECK_PERIOD_S = 0.2
# After a netlink notification of a change (colonet.net.change_watch), the
# check runs at once, but at most this often: a burst of changes elsewhere
# on the host costs a check per interval, not one per change.
CHANGE_CHECK_MIN_INTERVAL_S = 0.01
# Signals that end the process by default: each stops it cleanly instead,
# removing the steering as SIGTERM does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True, slots=True)
class SealedEpoch:
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch}


class FilterDaemon:
    def __init__(
        self,
        filters: FilterSet,
        socket_path: str | None,
        events: EventSink | None = None,
        steering_check_s: float | None = STEERING_CHECK_PERIOD_S,
        watch: ChangeWatch | None = None,
    ) -> None:
        self.filters = filters
        self.selector = selectors.DefaultSelector()
        self.control = ControlServer(socket_path, self.handle) if socket_path else None
        self.events = events
        self.high_water_requests = 0
        self.checkpoints = 0
        self.steering_losses: list[SteeringLoss] = []
        self._stopping = False
        self._timers: list[tuple[float, float, Callable[[], None]]] = []
        self._wake: socket.socket | None = None
        self.watch = watch
        self._last_check = 0.0
        self._change_check_due: float | None = None  # a notified change awaits its check
        if steering_check_s:
            self.every(steering_check_s, self.check_steering)

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

    def check_steering(self) -> None:
        """Report each netdev whose steering vanished since the last check:
        a JSON event line on stdout, an ERROR in the log; `status` and the
        metrics show the filter's new state (docs/DESIGN.md invariant 7)."""
        self._last_check = time.monotonic()
        self._change_check_due = None
        for loss in self.filters.check_steering():
            self.steering_losses.append(loss)
            event = loss.to_json()
            log.error("steering lost: %s", json.dumps(event))
            if self.events is not None:
                self.events.emit(
                    event,
                    f"colonet: {loss.netdev}: steering lost ({loss.detail}); {loss.action}",
                )

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

    def run(
        self,
        *,
        duration_s: float | None = None,
        handle_signals: bool = True,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Serve until `stop_soon()` or `duration_s`; with `handle_signals`
        (the process's main thread), SIGINT, SIGTERM, SIGHUP, SIGUSR1 and
        SIGUSR2 stop it too, so the steering is removed on the way out.
        `on_ready` runs once those handlers are in place (the ready line: a
        stop signal sent as soon as it is read must not kill)."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = wake_w
        self.selector.register(wake_r, selectors.EVENT_READ, lambda: _drain(wake_r))
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno()) if handle_signals else None
        old_handlers = (
            {
                sig: signal.signal(sig, only_in_this_process(lambda *_: self.stop_soon()))
                for sig in STOP_SIGNALS
            }
            if handle_signals
            else {}
        )
        registered: set[int] = set()
        watched = self.watch.fds() if self.watch is not None else []
        for fd in watched:
            self.selector.register(fd, selectors.EVENT_READ, lambda fd=fd: self._changed(fd))
        end = time.monotonic() + duration_s if duration_s else None
        try:
            if on_ready is not None:
                on_ready()
            while not self._stopping:
                registered = self._sync_filter_fds(registered)
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                timeout = 0.5 if end is None else min(0.5, end - now)
                due = [t[0] for t in self._timers]
                if self._change_check_due is not None:
                    due.append(self._change_check_due)
                if due:
                    timeout = max(0.0, min(timeout, min(due) - now))
                for key, _ in self.selector.select(timeout):
                    key.data()
                self._fire_timers()
                if (
                    self._change_check_due is not None
                    and time.monotonic() >= self._change_check_due
                ):
                    self.check_steering()
        finally:
            for fd in watched:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fd)
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

    def _changed(self, fd: int) -> None:
        """The kernel announced a configuration change: check soon."""
        assert self.watch is not None
        self.watch.drain(fd)
        if self._change_check_due is None:
            self._change_check_due = self._last_check + CHANGE_CHECK_MIN_INTERVAL_S

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
            if self.watch is not None:
                self.watch.close()
            self.selector.close()


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        sock.recv(4096)
