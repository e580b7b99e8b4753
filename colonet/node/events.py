"""How a node tells the world what happened: one line per event.

Each event is a JSON object (`{"event": "checkpoint", ...}`) printed as a
JSON line with `json_lines`, else as a sentence for a person. Failover
events also go to the log at WARNING and are counted in the metrics.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from colonet.node.metrics import EngineMetrics

log = logging.getLogger("colonet.engine")


class EventSink:
    def __init__(self, json_lines: bool = False, out: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.out = out
        self.metrics: EngineMetrics | None = None  # set once metrics are served
        self.history: list[dict[str, Any]] = []  # every event, for tests and status

    def emit(self, event: dict[str, Any], text: str) -> None:
        self.history.append(event)
        out = self.out or sys.stdout
        print(json.dumps(event) if self.json_lines else text, file=out, flush=True)
        if event.get("event") == "failover":
            log.warning("%s", json.dumps(event))
            if self.metrics is not None and "reason" in event:
                self.metrics.failover(event["mode"], event["reason"])

    def warn(self, text: str) -> None:
        """A warning for a person (stderr), e.g. an unprotected link."""
        print(text, file=sys.stderr, flush=True)
