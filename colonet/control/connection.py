"""One control client's connection: requests in, replies out, never blocking.

The server shares its loop with the filters (or an engine's control thread),
so no client may hold that loop: the socket is non-blocking, replies wait in
`outbox` until the socket is writable, and the server bounds how much may
wait and for how long (`colonet.control.server`).
"""

from __future__ import annotations

import socket

RECV_BYTES = 65536


class ClientConnection:
    def __init__(self, sock: socket.socket, pid: int, uid: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.pid = pid
        self.uid = uid
        self.inbox = bytearray()  # received, not yet answered
        self.outbox = bytearray()  # answered, not yet taken by the socket
        self.eof = False  # the client sent all it will send (it may still read)
        self.closing = False  # a final answer is queued; close once it is out
        # Since when the client has had work waiting on it reading its
        # replies with none taken; None while it keeps up. The server drops
        # it when this gets too old.
        self.waiting_since: float | None = None
        self.events = 0  # what the selector watches for, to skip no-op modify()

    def has_line(self) -> bool:
        return b"\n" in self.inbox

    def next_line(self) -> bytes | None:
        end = self.inbox.find(b"\n")
        if end < 0:
            return None
        line = bytes(self.inbox[:end])
        del self.inbox[: end + 1]  # cheap: bytearray drops its head in place
        return line

    def receive(self) -> None:
        """Take what the socket has; OSError if the client is gone."""
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        if data:
            self.inbox += data
        else:
            self.eof = True

    def flush(self) -> int:
        """Hand the socket what it takes now; the bytes sent (OSError if gone)."""
        sent_total = 0
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                break
            del self.outbox[:sent]
            sent_total += sent
        return sent_total

    @property
    def pending(self) -> bool:
        """Replies to write or requests to answer: work that waits on the client."""
        return bool(self.outbox) or (self.has_line() and not self.closing)

    @property
    def wants_input(self) -> bool:
        """Read more only once everything read so far is answered and sent:
        a client that does not read its replies stops being read (its own
        sends back up in the kernel), so what it costs here stays bounded."""
        return not self.pending and not self.eof and not self.closing

    @property
    def finished(self) -> bool:
        """Nothing more will come in and everything owed has gone out."""
        return not self.outbox and (self.closing or (self.eof and not self.has_line()))

    def close(self) -> None:
        self.sock.close()
