"""Control requests and responses, one JSON object per line. No I/O here.

A request names an operation and its arguments:

    {"op": "checkpoint"}
    {"op": "commit", "epoch": 7}            # "epoch" optional: all sealed
    {"op": "failover", "role": "primary"}   # or "secondary"; an engine's
                                            # socket takes it without a role
    {"op": "status"}
    {"op": "dump", "path": "/abs/held.pcapng"}   # held packets to pcapng

A response is {"ok": true, "result": {...}} or
{"ok": false, "error": {"kind": ..., "message": ..., "exit_code": n}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from colonet.errors import ColonetError, RemoteRequestError

MAX_REQUEST_BYTES = 64 * 1024
OPERATIONS = ("checkpoint", "commit", "failover", "status", "dump")
ROLES = ("primary", "secondary")


@dataclass(frozen=True)
class Request:
    op: str
    epoch: int | None = None
    role: str | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"op": self.op}
        if self.epoch is not None:
            body["epoch"] = self.epoch
        if self.role is not None:
            body["role"] = self.role
        if self.path is not None:
            body["path"] = self.path
        return body


def parse_request(line: bytes) -> Request:
    """Validate one request line; every fault names what was wrong."""
    if len(line) > MAX_REQUEST_BYTES:
        raise RemoteRequestError(
            f"request of {len(line)} bytes is over the {MAX_REQUEST_BYTES}-byte limit"
        )
    try:
        body = json.loads(line)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and over-long integers;
        # RecursionError, absurd nesting.
        raise RemoteRequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RemoteRequestError(f"request must be a JSON object, got {type(body).__name__}")
    op = body.get("op")
    if op not in OPERATIONS:
        raise RemoteRequestError(f"unknown op {op!r}: expected one of {', '.join(OPERATIONS)}")
    allowed = {"op", {"commit": "epoch", "failover": "role", "dump": "path"}.get(op, "op")}
    extra = sorted(set(body) - allowed)
    if extra:
        raise RemoteRequestError(f"op {op!r} takes no field(s) {', '.join(extra)}")
    epoch = body.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1):
        raise RemoteRequestError(f"epoch must be a positive integer, got {epoch!r}")
    role = body.get("role")
    if op == "failover" and role is not None and role not in ROLES:
        raise RemoteRequestError(f"failover role must be one of {', '.join(ROLES)}, got {role!r}")
    path = body.get("path")
    if op == "dump" and (not isinstance(path, str) or not path.startswith("/")):
        raise RemoteRequestError(f"dump needs an absolute 'path' string, got {path!r}")
    return Request(op=op, epoch=epoch, role=role, path=path)


def encode_result(result: dict[str, Any]) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode() + b"\n"


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
            return body["result"]
        error = body["error"]
        raise RemoteError(error["kind"], error["message"], int(error["exit_code"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise RemoteError("BadResponse", f"malformed response from server: {exc}", 4) from None
