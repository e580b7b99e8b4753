"""An engine's control socket (status, checkpoint, failover, dump), served
from its own thread while the engine's thread runs checkpoints."""

from __future__ import annotations

import selectors
import threading
from collections.abc import Callable
from typing import Any

from colonet.control.protocol import FailoverRequest, Request
from colonet.control.server import ControlServer
from colonet.errors import UsageError

# op -> handler returning a result record (anything with to_json)
Handlers = dict[str, Callable[[Request], Any]]


class EngineControl:
    def __init__(self, path: str, handlers: Handlers) -> None:
        self.handlers = handlers
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(path, self.handle)
        self.server.open(self.selector)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="engine-control")
        self.thread.start()

    def handle(self, request: Request) -> Any:
        handler = self.handlers.get(request.op)
        if handler is None:
            served = ", ".join(sorted(self.handlers))
            raise UsageError(f"op {request.op!r} is not served here (this engine serves {served})")
        if isinstance(request, FailoverRequest) and request.role is not None:
            raise UsageError("an engine knows its own role: send failover without one")
        return handler(request)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.2):
                key.data()
            self.server.sweep()  # a client that stopped reading makes no event

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.server.close()
        self.selector.close()
