"""Unix-socket server for control requests, driven by the owner's selector.

The socket is created with mode 0600 from the start (umask), so there is no
moment when another user could connect; and every connection's peer
credentials (SO_PEERCRED) are checked too, so a socket whose mode was
loosened by mistake still answers only root and the server's own user.

The owner's loop also serves the filters (or an engine), so the server never
blocks it: replies are written without blocking and queued for when the
socket is writable; a client whose queue passes `max_queued_bytes`, or that
leaves replies unread for `stall_timeout_s`, is dropped (and logged); each
turn answers at most `REQUESTS_PER_TURN` requests of one client, so a client
that pipelines thousands cannot delay the others; and at most `max_clients`
connections are open at once, so a local flood cannot exhaust fds. Owners
call `sweep()` about every `SWEEP_PERIOD_S` to drop stalled clients on time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from colonet.control.connection import ClientConnection
from colonet.control.protocol import (
    MAX_REQUEST_BYTES,
    Request,
    encode_error,
    encode_result,
    parse_request,
)
from colonet.errors import ControlSocketError, RemoteRequestError

log = logging.getLogger(__name__)

# Returns a result record (anything with `to_json`), or raises: both are answered.
Handler = Callable[[Request], Any]
_UCRED = struct.Struct("3i")  # pid, uid, gid

MAX_CLIENTS = 64  # far above colonet's own use (one short connection per command)
# A client's next request waits until its last reply is out, so a queue only
# grows this big by one huge reply to a client that does not read: replies
# are a few KiB (a status of many netdevs, tens).
MAX_QUEUED_REPLY_BYTES = 1 << 20
STALL_TIMEOUT_S = 10.0  # replies waiting with none read this long: the client is gone
REQUESTS_PER_TURN = 16  # then the loop serves the others (and the filters) first
SWEEP_PERIOD_S = 1.0


class PeerRefused(ControlSocketError):
    """A process of another user connected to the control socket."""


class ServerBusy(ControlSocketError):
    """The control socket already serves as many connections as it allows."""


def peer_credentials(conn: socket.socket) -> tuple[int, int]:
    """The connected process's (pid, uid)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _ = _UCRED.unpack(creds)
    return pid, uid


def _refuse(conn: socket.socket, error: ControlSocketError) -> None:
    """Answer once, without blocking, and close: a fresh socket's buffer takes a
    short line, and a client that cannot take it loses nothing it was owed."""
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(encode_error(error))
    conn.close()


def claim_socket_path(path: str) -> None:
    """Refuse a path in use; remove a stale socket a crashed run left."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"socket path {path} is taken: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("removing stale control socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise ControlSocketError(f"socket path {path} is unusable: {exc}") from None
    finally:
        probe.close()
    raise ControlSocketError(f"socket path {path} is taken: another process is listening on it")


class ControlServer:
    def __init__(
        self,
        path: str,
        handler: Handler,
        allowed_uids: frozenset[int] | None = None,
        *,
        max_clients: int = MAX_CLIENTS,
        max_queued_bytes: int = MAX_QUEUED_REPLY_BYTES,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.handler = handler
        self.allowed_uids = allowed_uids or frozenset({0, os.geteuid()})
        self.max_clients = max_clients
        self.max_queued_bytes = max_queued_bytes
        self.stall_timeout_s = stall_timeout_s
        self.clock = clock
        self.refused = 0  # connections of another user
        self.busy = 0  # connections over max_clients
        self.dropped = 0  # clients dropped for not reading their replies
        self._busy_logged = False
        self._listener: socket.socket | None = None
        self._clients: dict[socket.socket, ClientConnection] = {}

    @property
    def connections(self) -> int:
        return len(self._clients)

    def open(self, selector: selectors.BaseSelector) -> None:
        claim_socket_path(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(self.path)
        except OSError as exc:
            listener.close()
            raise ControlSocketError(f"cannot create control socket {self.path}: {exc}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._selector = selector
        selector.register(listener, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        pid, uid = peer_credentials(conn)
        if uid not in self.allowed_uids:
            self.refused += 1
            log.warning("control socket %s: refused a connection from uid %d", self.path, uid)
            allowed = ", ".join(map(str, sorted(self.allowed_uids)))
            _refuse(
                conn, PeerRefused(f"uid {uid} may not use this control socket (only uid {allowed})")
            )
            return
        self.sweep()  # a stalled client must not hold a slot a live one needs
        if len(self._clients) >= self.max_clients:
            self.busy += 1
            if not self._busy_logged:  # once per full spell: a flood must not flood the log
                self._busy_logged = True
                log.warning(
                    "control socket %s: at most %d connections at once; refusing more "
                    "(first: pid %d)",
                    self.path,
                    self.max_clients,
                    pid,
                )
            _refuse(
                conn,
                ServerBusy(
                    f"control socket {self.path} serves at most {self.max_clients} "
                    "connections at once; try again"
                ),
            )
            return
        client = ClientConnection(conn, pid, uid)
        self._clients[conn] = client
        client.events = selectors.EVENT_READ
        self._selector.register(conn, client.events, lambda: self._service(client))

    def _service(self, client: ClientConnection) -> None:
        """One turn for one client: write what waits, read, answer a few."""
        if self._clients.get(client.sock) is not client:
            return  # dropped earlier in this same round of events
        try:
            sent = client.flush()
            if client.wants_input:
                client.receive()
            answered = self._answer_some(client)
            sent += client.flush()
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.warning(
                    "control socket %s: client pid %d went away: %s", self.path, client.pid, exc
                )
            self._drop(client)
            return
        if len(client.outbox) > self.max_queued_bytes:
            self._drop_unread(
                client,
                f"{len(client.outbox)} bytes of replies queued unread "
                f"(limit {self.max_queued_bytes})",
            )
            return
        if client.finished:
            self._drop(client)
            return
        if not client.pending:
            client.waiting_since = None
        elif sent or answered or client.waiting_since is None:
            client.waiting_since = self.clock()
        self._watch(client)

    def _answer_some(self, client: ClientConnection) -> int:
        """Answer up to REQUESTS_PER_TURN complete requests, in order, and only
        while the client takes its replies: the next request waits until the
        last reply is out, so at most one reply is ever queued here."""
        answered = 0
        while not client.closing and not client.outbox and answered < REQUESTS_PER_TURN:
            line = client.next_line()
            if line is None:
                break
            client.outbox += self._answer(line)
            answered += 1
            client.flush()
        if not client.closing and not client.has_line() and len(client.inbox) > MAX_REQUEST_BYTES:
            err = RemoteRequestError(
                f"request line over {MAX_REQUEST_BYTES} bytes without a newline; closing"
            )
            client.inbox.clear()
            client.outbox += encode_error(err)
            client.closing = True
        return answered

    def _watch(self, client: ClientConnection) -> None:
        """Wake on writable while replies or requests wait (so the rest of a
        pipeline gets its turn once the client takes its replies), on
        readable only when it wants input (see ClientConnection)."""
        events = 0
        if client.pending:
            events |= selectors.EVENT_WRITE
        if client.wants_input:
            events |= selectors.EVENT_READ
        if events != client.events:
            client.events = events
            self._selector.modify(client.sock, events, lambda: self._service(client))

    def _answer(self, line: bytes) -> bytes:
        try:
            return encode_result(self.handler(parse_request(line)))
        except Exception as exc:  # every failure becomes an error response
            if not isinstance(exc, RemoteRequestError):
                log.debug("request failed", exc_info=True)
            return encode_error(exc)

    def sweep(self) -> None:
        """Drop clients that left replies unread for longer than stall_timeout_s."""
        now = self.clock()
        for client in list(self._clients.values()):
            since = client.waiting_since
            if since is not None and now - since > self.stall_timeout_s:
                self._drop_unread(
                    client,
                    f"it has not read its replies for {now - since:.1f} s "
                    f"({len(client.outbox)} bytes queued)",
                )

    def _drop_unread(self, client: ClientConnection, why: str) -> None:
        self.dropped += 1
        log.warning("control socket %s: dropping client pid %d: %s", self.path, client.pid, why)
        self._drop(client)

    def _drop(self, client: ClientConnection) -> None:
        if self._clients.pop(client.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        client.close()
        if len(self._clients) < self.max_clients:
            self._busy_logged = False

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
