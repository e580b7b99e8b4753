"""Control-socket clients: one typed method per operation.

`FilterClient` talks to a `colonet filter run` process and is itself a
`FilterHooks` implementation, so an engine drives filters in another
process exactly as it drives a FilterSet in its own. `EngineClient` talks
to a running `colonet primary` or `colonet secondary`.
"""

from __future__ import annotations

import socket
from typing import Any

from colonet.buffer.hooks import CommitResult, FailoverResult, FailoverRole
from colonet.buffer.status import DumpResult, FilterSetStatus
from colonet.control.protocol import (
    CheckpointRequest,
    CommitRequest,
    DumpRequest,
    EngineStatus,
    FailoverAccepted,
    FailoverRequest,
    RemoteError,
    Request,
    StatusRequest,
    decode_response,
    encode_request,
)
from colonet.errors import ControlSocketError


def exchange(path: str, line: bytes, timeout_s: float = 30.0) -> bytes:
    """Send one request line, return the answer line (raw bytes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlSocketError(f"no control socket at {path}: is colonet running?") from None
        except OSError as exc:
            raise ControlSocketError(f"cannot reach control socket {path}: {exc}") from None
        sock.sendall(line)
        reply = bytearray()
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlSocketError(f"control socket {path} closed without an answer")
            reply += chunk
    except TimeoutError:
        raise ControlSocketError(f"control socket {path} did not answer in {timeout_s} s") from None
    finally:
        sock.close()
    return bytes(reply)


def call(path: str, request: Request, timeout_s: float = 30.0) -> dict[str, Any]:
    """Send one request, return the result's JSON (RemoteError if refused)."""
    return decode_response(exchange(path, encode_request(request), timeout_s))


def _field(result: dict[str, Any], key: str, path: str) -> Any:
    try:
        return result[key]
    except KeyError:
        raise RemoteError("BadResponse", f"{path} answered without {key!r}", 4) from None


def _dump_result(result: dict[str, Any]) -> DumpResult:
    return DumpResult(result["path"], int(result["packets"]), result.get("per_netdev", {}))


class _Client:
    def __init__(self, path: str, timeout_s: float = 30.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def _call(self, request: Request) -> dict[str, Any]:
        return call(self.path, request, self.timeout_s)


class FilterClient(_Client):
    """A filter process's control socket, as FilterHooks and more."""

    def begin_checkpoint(self, epoch: int | None = None) -> int:
        return int(_field(self._call(CheckpointRequest(epoch)), "epoch", self.path))

    def commit(self, upto: int | None = None) -> CommitResult:
        result = self._call(CommitRequest(upto))
        return CommitResult(
            int(_field(result, "epoch", self.path)), int(result["released_packets"])
        )

    def failover(self, role: FailoverRole | str) -> FailoverResult:
        role = FailoverRole(role)
        result = self._call(FailoverRequest(role))
        key = "released_packets" if role is FailoverRole.PRIMARY else "discarded_packets"
        return FailoverResult(role, int(_field(result, key, self.path)))

    def status(self) -> FilterSetStatus:
        return FilterSetStatus.from_json(self._call(StatusRequest()))

    def dump(self, path: str) -> DumpResult:
        return _dump_result(self._call(DumpRequest(path)))


class EngineClient(_Client):
    """A running primary's or secondary's control socket."""

    def request_checkpoint(self) -> None:
        """A primary checkpoints now instead of at the end of its period."""
        self._call(CheckpointRequest())

    def request_failover(self) -> FailoverAccepted:
        """A secondary takes over; a primary goes on alone."""
        r = self._call(FailoverRequest())
        return FailoverAccepted(
            accepted=bool(r.get("accepted")),
            mode=str(r.get("mode", "")),
            state=str(r.get("state", "")),
            waiting_for_apply=bool(r.get("waiting_for_apply", False)),
        )

    def status(self) -> EngineStatus:
        return EngineStatus.from_json(self._call(StatusRequest()))

    def dump(self, path: str) -> DumpResult:
        """A primary forwards this to its filter process."""
        return _dump_result(self._call(DumpRequest(path)))
