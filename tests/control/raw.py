"""Send a control request as a raw JSON object, the way any client may.

Tests speak the documented wire format directly (including requests the
typed client would never build); colonet's own callers use
`colonet.control.client`.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from colonet.control.protocol import decode_response
from colonet.errors import ControlSocketError


def raw_request(path: str, body: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlSocketError(f"cannot reach control socket {path}: {exc}") from None
        sock.sendall(json.dumps(body).encode() + b"\n")
        reply = bytearray()
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlSocketError(f"control socket {path} closed without an answer")
            reply += chunk
    return decode_response(bytes(reply))
