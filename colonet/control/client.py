"""Send one control request and wait for its answer."""

from __future__ import annotations

import json
import socket
from typing import Any

from colonet.control.protocol import decode_response
from colonet.errors import ControlSocketError


def request(path: str, body: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlSocketError(
                f"no control socket at {path}: is `colonet filter run` running?"
            ) from None
        except OSError as exc:
            raise ControlSocketError(f"cannot reach control socket {path}: {exc}") from None
        sock.sendall(json.dumps(body).encode() + b"\n")
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
    return decode_response(bytes(reply))
