"""Unix-socket server for control requests, driven by the owner's selector.

The socket is created with mode 0600 from the start (umask), so there is no
moment when another user could connect; and every connection's peer
credentials (SO_PEERCRED) are checked too, so a socket whose mode was
loosened by mistake still answers only root and the server's own user.
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
from collections.abc import Callable
from typing import Any

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


class PeerRefused(ControlSocketError):
    """A process of another user connected to the control socket."""


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(creds)[1]


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
        self, path: str, handler: Handler, allowed_uids: frozenset[int] | None = None
    ) -> None:
        self.path = path
        self.handler = handler
        self.allowed_uids = allowed_uids or frozenset({0, os.geteuid()})
        self.refused = 0
        self._listener: socket.socket | None = None
        self._buffers: dict[socket.socket, bytearray] = {}

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
        uid = peer_uid(conn)
        if uid not in self.allowed_uids:
            self.refused += 1
            log.warning("control socket %s: refused a connection from uid %d", self.path, uid)
            with contextlib.suppress(OSError):
                conn.settimeout(1.0)
                conn.sendall(
                    encode_error(
                        PeerRefused(
                            f"uid {uid} may not use this control socket (only uid "
                            f"{', '.join(map(str, sorted(self.allowed_uids)))})"
                        )
                    )
                )
            conn.close()
            return
        conn.setblocking(False)
        self._buffers[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._read(conn))

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self._buffers[conn]
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            self._answer(conn, line)
        if len(buf) > MAX_REQUEST_BYTES:
            err = RemoteRequestError(
                f"request line over {MAX_REQUEST_BYTES} bytes without a newline; closing"
            )
            self._send(conn, encode_error(err))
            self._drop(conn)

    def _answer(self, conn: socket.socket, line: bytes) -> None:
        try:
            reply = encode_result(self.handler(parse_request(line)))
        except Exception as exc:  # every failure becomes an error response
            if not isinstance(exc, RemoteRequestError):
                log.debug("request failed", exc_info=True)
            reply = encode_error(exc)
        self._send(conn, reply)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(2.0)
            conn.sendall(data)
            conn.setblocking(False)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.warning("control client went away: %s", exc)
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if conn in self._buffers:
            del self._buffers[conn]
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn)
            conn.close()

    def close(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
