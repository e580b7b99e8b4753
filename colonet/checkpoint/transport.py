"""A protocol end on a TCP connection, with heartbeats and a dead-peer timer.

Thin: bytes go from the socket into the sans-I/O protocol object and queued
frames go back out. Waiting for an event also keeps the connection alive:
a heartbeat leaves every `heartbeat_interval_ms`, and if nothing at all has
arrived for `heartbeat_timeout_ms` the peer is declared lost. One
full-duplex connection carries both directions; the secondary's replies
(the return path) never wait behind the primary's bulk data because TCP
buffers each direction separately.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from colonet.checkpoint.auth import AuthError, PskSession
from colonet.checkpoint.frames import ProtocolError
from colonet.checkpoint.messages import Event
from colonet.checkpoint.protocol import PrimaryProtocol, SecondaryProtocol
from colonet.errors import ColonetError


class PeerLost(ColonetError):
    """The replication peer is gone; `reason` is heartbeat, closed or error."""

    exit_code = 7

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ChannelConfig:
    heartbeat_interval_ms: int = 100
    # Silence (not one byte from the peer, or none accepted by it) for this
    # long means the peer is lost, at every stage: a peer busy encoding,
    # staging or applying keeps sending heartbeats (`Channel.busy`).
    heartbeat_timeout_ms: int = 1000
    # How long one checkpoint may take while the peer is heard from: the
    # deadline for progress, not for silence.
    checkpoint_timeout_ms: int = 30_000
    send_chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms <= 0:
            raise ValueError("heartbeat_interval_ms must be positive")
        if self.checkpoint_timeout_ms < self.heartbeat_timeout_ms:
            raise ValueError("checkpoint_timeout_ms must be at least heartbeat_timeout_ms")
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            raise ValueError("heartbeat_timeout_ms must exceed heartbeat_interval_ms")


class Channel:
    def __init__(
        self,
        sock: socket.socket,
        proto: PrimaryProtocol | SecondaryProtocol,
        config: ChannelConfig | None = None,
        auth: PskSession | None = None,
    ) -> None:
        self.sock = sock
        self.proto = proto
        self.config = config or ChannelConfig()
        self.auth = auth
        self._events: deque[Event] = deque()
        self.intact = True  # every byte handed to the socket ended a whole frame
        self._send_lock = threading.Lock()  # a busy() heartbeat vs. the owner
        now = time.monotonic()
        self._last_heard = now
        self._last_sent = now
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handshake(self, timeout_s: float = 10.0) -> None:
        """Exchange PSK greetings (no-op without a PSK); AuthError if the peer fails."""
        if self.auth is None:
            return
        deadline = time.monotonic() + timeout_s
        try:
            self.sock.settimeout(timeout_s)
            self.sock.sendall(self.auth.greeting())
            confirmed = False
            while not self.auth.established:
                self.sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = self.sock.recv(4096)
                if not data:
                    raise AuthError(
                        "the peer closed the connection during the greeting (it refused our key?)"
                    )
                try:
                    leftover = self.auth.receive(data)
                finally:
                    # Our confirmation goes out even when theirs just failed,
                    # so the peer can name the fault (wrong key) too.
                    if self.auth.keys_ready and not confirmed:
                        confirmed = True
                        self.sock.sendall(self.auth.confirmation())
                if leftover:
                    self._events.extend(self.proto.receive_data(leftover))
        except TimeoutError:
            raise AuthError(f"no greeting from the peer within {timeout_s:.0f} s") from None
        except OSError as exc:
            raise AuthError(f"the greeting failed: {exc}") from None
        now = time.monotonic()
        self._last_heard = self._last_sent = now

    def flush(self) -> None:
        with self._send_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        # Frame by frame (a body is many 1 MiB frames): bytes start to flow
        # at once instead of after copying and sealing the whole body.
        batch: list[bytes] = []
        size = 0
        for frame in self.proto.frames_to_send():
            batch.append(frame)
            size += len(frame)
            if size >= self.config.send_chunk_bytes:
                self._write_locked(b"".join(batch))
                batch, size = [], 0
        if batch:
            self._write_locked(b"".join(batch))

    def _write_locked(self, data: bytes) -> None:
        if self.auth is not None:
            data = self.auth.seal(data)
        # A body of a gigabyte may take seconds over a slow link; what counts
        # is progress: bytes taken by send(), or bytes leaving our send queue
        # (the kernel may keep send() blocked for seconds while its buffer
        # drains). A peer that takes nothing for the silence limit is gone.
        view = memoryview(data)
        step = self.config.send_chunk_bytes
        limit = self._silence_limit_s()
        self.sock.settimeout(min(0.05, limit))
        offset, progress_at, queued = 0, time.monotonic(), _unsent_bytes(self.sock)
        try:
            while offset < len(view):
                try:
                    offset += self.sock.send(view[offset : offset + step])
                except TimeoutError:
                    now, left = time.monotonic(), _unsent_bytes(self.sock)
                    if left < queued:
                        progress_at = now
                    queued = left
                    if now - progress_at >= limit:
                        self.intact = False
                        raise PeerLost(
                            "heartbeat",
                            f"the peer accepted nothing for {self.config.heartbeat_timeout_ms} ms",
                        ) from None
                    continue
                progress_at = self._last_sent = time.monotonic()
                queued = _unsent_bytes(self.sock)
        except OSError as exc:
            # Part of a frame may be in the socket: nothing sent after it
            # could be read as a frame of its own any more.
            self.intact = False
            raise PeerLost("error", f"sending to the peer failed: {exc}") from None

    def _silence_limit_s(self) -> float:
        return self.config.heartbeat_timeout_ms / 1000

    @contextmanager
    def busy(self) -> Iterator[None]:
        """While the caller computes (encodes, frames, stages, applies) and
        reads nothing, a thread keeps sending heartbeats so the peer does not
        take the silence for a loss. The caller may still queue frames and
        flush; the two share the send lock."""
        stop = threading.Event()
        interval = self.config.heartbeat_interval_ms / 1000

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with self._send_lock:
                        if self.proto.local_hello is None or not self.intact:
                            return
                        # Straight to the socket: the owner may be filling the
                        # protocol's queue meanwhile (framing a body).
                        self._write_locked(self.proto.heartbeat_frame())
                except (PeerLost, ColonetError):
                    return  # the caller finds out at its next send or receive

        thread = threading.Thread(target=beat, daemon=True, name="busy-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def next_event(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None when `timeout_s` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interval = self.config.heartbeat_interval_ms / 1000
        while not self._events:
            now = time.monotonic()
            if now - self._last_sent >= interval and self.proto.local_hello is not None:
                with self._send_lock:  # heartbeat numbers are shared with busy()
                    self.proto.send_heartbeat()
                    self._flush_locked()
            if now - self._last_heard >= self._silence_limit_s():
                # Frames may be waiting while we were busy: read them first.
                self._receive(0.0)
                if self._events:
                    break
                silent = time.monotonic() - self._last_heard
                if silent >= self._silence_limit_s():
                    raise PeerLost(
                        "heartbeat", f"no frame from the peer for {silent * 1000:.0f} ms"
                    )
            if deadline is not None and now >= deadline:
                return None
            wait = interval
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            self._receive(wait)
        return self._events.popleft()

    def _receive(self, wait_s: float) -> None:
        self.sock.settimeout(max(wait_s, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except OSError as exc:
            raise PeerLost("error", f"receiving from the peer failed: {exc}") from None
        try:
            if not data:
                self.proto.receive_eof()
                raise PeerLost("closed", "the peer closed the connection")
            self._last_heard = time.monotonic()
            if self.auth is not None:
                data = self.auth.receive(data)
            self._events.extend(self.proto.receive_data(data))
        except ProtocolError as exc:
            raise PeerLost("error", f"protocol error: {exc}") from exc
        except AuthError as exc:
            raise PeerLost("error", f"authentication: {exc}") from exc

    def close(self) -> None:
        self.sock.close()


_SIOCOUTQ = 0x5411  # linux/sockios.h: bytes in the send queue, not yet acknowledged
_INT = struct.Struct("i")


def _unsent_bytes(sock: socket.socket) -> int:
    try:
        return _INT.unpack(fcntl.ioctl(sock.fileno(), _SIOCOUTQ, bytes(_INT.size)))[0]
    except OSError:
        return 0
