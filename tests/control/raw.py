"""Send a control request as a raw JSON object, the way any client may.

Tests speak the documented wire format directly (including requests the
typed client would never build); colonet's own callers use the typed
methods of `colonet.control.client`.
"""

from __future__ import annotations

import json
from typing import Any

from colonet.control.client import exchange
from colonet.control.protocol import decode_response


def raw_request(path: str, body: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    return decode_response(exchange(path, json.dumps(body).encode() + b"\n", timeout_s))
