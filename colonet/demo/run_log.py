"""Read a run log (`run.jsonl`, as `colonet demo` writes it) for `colonet report`.

Any file may be handed to `colonet report`, so each line is checked for what
the picture reads before anything is drawn: a malformed log is a UsageError
naming the file and the line, never a traceback. Pure: no drawing here.
"""

from __future__ import annotations

import json
import math
from typing import Any

from colonet.errors import UsageError

# Plausible bounds keep the drawing's arithmetic finite: a nonsense value
# gets a message here, not an overflow deep in matplotlib.
MAX_TIME_S = 1e11  # Unix seconds, ~ year 5000
MAX_MS = 1e9  # a checkpoint phase, ~ 11 days
MAX_BYTES = 1e18

# What the timeline reads from each kind of event beyond `t`:
# (source, event) -> names of numbers that must be there.
_NUMBERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("primary", "checkpoint"): ("pause_ms", "transfer_ms", "total_ms"),
}


def _number(value: Any, where: str, what: str, limit: float, low: float = 0.0) -> float:
    # bool is an int in Python, never a number in a log.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: {what} must be a number, got {json.dumps(value)[:40]}")
    if not (math.isfinite(value) and low <= value <= limit):
        raise UsageError(f"{where}: {what} {value} is out of range ({low:g} to {limit:g})")
    return float(value)


def parse_event(line: bytes, where: str) -> dict[str, Any]:
    """One line of a run log as an event; `where` (file:line) names any fault."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = exc if isinstance(exc, ValueError) else "nested too deep"
        raise UsageError(f"{where}: not a JSON line: {reason}") from None
    if not isinstance(event, dict):
        raise UsageError(f"{where}: an event is a JSON object, got {type(event).__name__}")
    if "t" not in event:
        raise UsageError(f"{where}: an event needs a numeric 't' (Unix seconds)")
    _number(event["t"], where, "'t'", MAX_TIME_S)
    key = (event.get("source"), event.get("event"))
    for name in _NUMBERS.get(key, ()):
        if name not in event:
            raise UsageError(f"{where}: a {key[0]} {key[1]} event needs {name!r}")
        _number(event[name], where, repr(name), MAX_MS)
    if key == ("primary", "checkpoint") and event.get("released_packets") is not None:
        _number(event["released_packets"], where, "'released_packets'", MAX_BYTES)
    if key == ("filters", "filters"):
        _check_netdevs(event.get("netdevs", []), where)
    return event


def _check_netdevs(netdevs: Any, where: str) -> None:
    if not isinstance(netdevs, list):
        raise UsageError(f"{where}: 'netdevs' must be a list, got {type(netdevs).__name__}")
    for i, netdev in enumerate(netdevs):
        if not isinstance(netdev, dict) or not isinstance(netdev.get("netdev"), str):
            raise UsageError(f"{where}: netdevs[{i}] needs a 'netdev' name")
        if "held_bytes" not in netdev:
            raise UsageError(f"{where}: netdevs[{i}] needs 'held_bytes'")
        _number(netdev["held_bytes"], where, f"netdevs[{i}].held_bytes", MAX_BYTES)


def load_events(path: str) -> list[dict[str, Any]]:
    """A run log's events, by time; UsageError naming the file (and line) if
    it cannot be read or any line is not an event the timeline can draw."""
    events = []
    try:
        # Bytes, decoded line by line, so a bad byte is pinned to its line.
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    events.append(parse_event(line, f"{path}:{number}"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not events:
        raise UsageError(f"{path} holds no events")
    return sorted(events, key=lambda e: e["t"])
