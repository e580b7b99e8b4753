"""Control requests and results: typed records and their JSON lines. No I/O.

One JSON object per line each way. A request names an operation:

    {"op": "checkpoint"}                    # filters: {"epoch": N} optional,
                                            # the epoch that must be open
    {"op": "commit", "epoch": 7}            # "epoch" optional: all sealed
    {"op": "failover", "role": "primary"}   # or "secondary"; an engine's
                                            # socket takes it without a role
    {"op": "status"}
    {"op": "dump", "path": "/abs/held.pcapng"}   # held packets to pcapng

A response is {"ok": true, "result": {...}} or
{"ok": false, "error": {"kind": ..., "message": ..., "exit_code": n}}.
Every operation has one request record here; `REQUEST_TYPES` is the table
of what each op may carry. The results are records too (`colonet.buffer.
hooks` for the hook operations, below for the others); `colonet.control.
client` gives each op one typed method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from colonet.buffer.hooks import FailoverRole
from colonet.buffer.status import FilterSetStatus
from colonet.errors import ColonetError, RemoteRequestError

MAX_REQUEST_BYTES = 64 * 1024
ROLES = tuple(r.value for r in FailoverRole)


@dataclass(frozen=True, slots=True)
class CheckpointRequest:
    op: ClassVar[str] = "checkpoint"
    epoch: int | None = None  # filters: refuse unless this epoch is the open one


@dataclass(frozen=True, slots=True)
class CommitRequest:
    op: ClassVar[str] = "commit"
    epoch: int | None = None  # None: every sealed epoch


@dataclass(frozen=True, slots=True)
class FailoverRequest:
    op: ClassVar[str] = "failover"
    role: FailoverRole | None = None  # filters need one; engines know their own


@dataclass(frozen=True, slots=True)
class StatusRequest:
    op: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class DumpRequest:
    op: ClassVar[str] = "dump"
    path: str = ""


Request = CheckpointRequest | CommitRequest | FailoverRequest | StatusRequest | DumpRequest

# op -> (record, the optional fields it may carry). Every request lives here.
REQUEST_TYPES: dict[str, tuple[type[Request], frozenset[str]]] = {
    "checkpoint": (CheckpointRequest, frozenset({"epoch"})),
    "commit": (CommitRequest, frozenset({"epoch"})),
    "failover": (FailoverRequest, frozenset({"role"})),
    "status": (StatusRequest, frozenset()),
    "dump": (DumpRequest, frozenset({"path"})),
}
OPERATIONS = tuple(REQUEST_TYPES)


def request_to_json(request: Request) -> dict[str, Any]:
    body: dict[str, Any] = {"op": request.op}
    for name in REQUEST_TYPES[request.op][1]:
        value = getattr(request, name)
        if value is not None:
            body[name] = value.value if isinstance(value, FailoverRole) else value
    return body


def encode_request(request: Request) -> bytes:
    return json.dumps(request_to_json(request)).encode() + b"\n"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:
            raise RemoteRequestError(f"request repeats the field {key!r}")
        body[key] = value
    return body


def parse_request(line: bytes) -> Request:
    """Validate one request line; every fault names what was wrong."""
    if len(line) > MAX_REQUEST_BYTES:
        raise RemoteRequestError(
            f"request of {len(line)} bytes is over the {MAX_REQUEST_BYTES}-byte limit"
        )
    try:
        body = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and over-long integers;
        # RecursionError, absurd nesting.
        raise RemoteRequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RemoteRequestError(f"request must be a JSON object, got {type(body).__name__}")
    op = body.get("op")
    if not isinstance(op, str) or op not in REQUEST_TYPES:
        raise RemoteRequestError(f"unknown op {op!r}: expected one of {', '.join(OPERATIONS)}")
    record, allowed = REQUEST_TYPES[op]
    extra = sorted(set(body) - allowed - {"op"})
    if extra:
        raise RemoteRequestError(f"op {op!r} takes no field(s) {', '.join(extra)}")
    for name in allowed & set(body):
        if body[name] is None:  # "absent" has a meaning (e.g. commit all): null is not it
            raise RemoteRequestError(f"{name} must not be null: leave the field out instead")
    if "epoch" in body:
        epoch = body["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise RemoteRequestError(f"epoch must be a positive integer, got {epoch!r}")
    if "role" in body:
        if body["role"] not in ROLES:
            raise RemoteRequestError(
                f"failover role must be one of {', '.join(ROLES)}, got {body['role']!r}"
            )
        body["role"] = FailoverRole(body["role"])
    if op == "dump" and (not isinstance(body.get("path"), str) or not body["path"].startswith("/")):
        raise RemoteRequestError(f"dump needs an absolute 'path' string, got {body.get('path')!r}")
    return record(**{k: v for k, v in body.items() if k != "op"})


# -- results that are not hook results ------------------------------------


@dataclass(frozen=True, slots=True)
class FailoverAccepted:
    """An engine took a failover request (it runs at the next safe point)."""

    accepted: bool  # False: a failover was already under way
    mode: str  # "primary" (go on alone) or "secondary" (take over)
    state: str
    waiting_for_apply: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "mode": self.mode,
            "state": self.state,
            "waiting_for_apply": self.waiting_for_apply,
        }


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """A running primary's or secondary's state (`colonet status`)."""

    role: str
    failover: Mapping[str, Any]  # the failover state, or the event once it ran
    checkpoints: int = 0  # primary
    early_checkpoints: int = 0
    last_checkpoint: Mapping[str, Any] | None = None
    filters: FilterSetStatus | None = None
    last_applied: int | None = None  # secondary
    applying: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.role == "secondary":
            return {
                "role": self.role,
                "last_applied": self.last_applied,
                "applying": self.applying,
                "failover": dict(self.failover),
            }
        body: dict[str, Any] = {
            "role": self.role,
            "checkpoints": self.checkpoints,
            "early_checkpoints": self.early_checkpoints,
            "last": None if self.last_checkpoint is None else dict(self.last_checkpoint),
            "failover": dict(self.failover),
        }
        if self.filters is not None:
            body["filters"] = self.filters.to_json()
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> EngineStatus:
        filters = body.get("filters")
        return cls(
            role=body["role"],
            failover=body["failover"],
            checkpoints=body.get("checkpoints", 0),
            early_checkpoints=body.get("early_checkpoints", 0),
            last_checkpoint=body.get("last"),
            filters=None if filters is None else FilterSetStatus.from_json(filters),
            last_applied=body.get("last_applied"),
            applying=body.get("applying", False),
        )


# -- response lines ---------------------------------------------------------


def encode_result(result: Any) -> bytes:
    """A result record (anything with `to_json`) as a response line."""
    return json.dumps({"ok": True, "result": result.to_json()}).encode() + b"\n"


def encode_error(exc: BaseException) -> bytes:
    exit_code = exc.exit_code if isinstance(exc, ColonetError) else 1
    error = {"kind": type(exc).__name__, "message": str(exc), "exit_code": exit_code}
    return json.dumps({"ok": False, "error": error}).encode() + b"\n"


class RemoteError(ColonetError):
    """The server refused a request; carries the server's kind and code."""

    def __init__(self, kind: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


def decode_response(line: bytes) -> dict[str, Any]:
    """The result of a response line, or RemoteError with the server's reason."""
    try:
        body = json.loads(line)
        if body["ok"]:
            result = body["result"]
            if not isinstance(result, dict):
                raise TypeError(f"result is a {type(result).__name__}, not an object")
            return result
        error = body["error"]
        raise RemoteError(error["kind"], error["message"], int(error["exit_code"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise RemoteError("BadResponse", f"malformed response from server: {exc}", 4) from None
