"""The embedded guest's service state, kept in guest RAM (pure logic).

Page 0 holds the counter; the pages after it hold a ring of (request id,
value) records, so every request dirties RAM the way a real service's
writes would, and a checkpoint that misses a page shows up as a wrong
counter after failover.
"""

from __future__ import annotations

import struct

from colonet.guest.ram import GuestRam

_U64 = struct.Struct("!Q")
_RECORD = struct.Struct("!QQ")
REQUEST = struct.Struct("!4sQ")  # b"INC " or b"GET ", request id
REPLY = struct.Struct("!QQ")  # request id, counter value
LOG_FIRST_PAGE = 1


class CounterStore:
    def __init__(self, ram: GuestRam, log_pages: int = 16) -> None:
        if ram.pages < LOG_FIRST_PAGE + log_pages:
            raise ValueError(f"guest RAM of {ram.pages} pages cannot hold {log_pages} log pages")
        self.ram = ram
        self._log_slots = log_pages * ram.page_size // _RECORD.size

    @property
    def value(self) -> int:
        return _U64.unpack(self.ram.read(0, 8))[0]

    def increment(self, request_id: int) -> int:
        value = self.value + 1
        self.ram.write(0, _U64.pack(value))
        slot = value % self._log_slots
        offset = LOG_FIRST_PAGE * self.ram.page_size + slot * _RECORD.size
        self.ram.write(offset, _RECORD.pack(request_id, value))
        return value

    def handle(self, request: bytes) -> bytes | None:
        """Answer one datagram; None for one that is not a request."""
        if len(request) != REQUEST.size:
            return None
        op, request_id = REQUEST.unpack(request)
        if op == b"INC ":
            return REPLY.pack(request_id, self.increment(request_id))
        if op == b"GET ":
            return REPLY.pack(request_id, self.value)
        return None
