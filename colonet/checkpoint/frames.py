"""Frames of the checkpoint protocol: a fixed header and a checksummed payload. No I/O.

Every frame is a 16-byte header followed by its payload, in network byte order:

    offset  size  field
    0       4     magic b"CLNT"
    4       1     version (FRAME_VERSION = 1)
    5       1     kind (a MessageKind)
    6       2     flags (reserved, must be 0)
    8       4     length of the payload in bytes
    12      4     CRC-32 of the payload (zlib.crc32)
    16      n     payload

A `FrameDecoder` is fed bytes as they arrive and returns whole frames. It checks
each header field as soon as its bytes are in, and the length against its
maximum before it buffers a byte of the payload, so a peer can never make it
hold more than `HEADER_SIZE + max_payload` bytes. A short read is not an error
while more bytes may come; `close()` says the peer closed, and only then is a
partial frame an error.

The message kinds live here because the frame layer checks them; the payload
of each kind is defined in `colonet.checkpoint.messages`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from colonet.errors import ColonetError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "FRAME_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "Frame",
    "FrameDecoder",
    "LocalProtocolError",
    "MessageKind",
    "ProtocolError",
    "RemoteProtocolError",
    "encode_frame",
]

MAGIC = b"CLNT"
FRAME_VERSION = 1
DEFAULT_MAX_PAYLOAD = 10 * 1024 * 1024
_HEADER = struct.Struct("!4sBBHII")
HEADER_SIZE = _HEADER.size
_MAX_LENGTH = 2**32 - 1


class ProtocolError(ColonetError):
    """The checkpoint protocol was broken; the connection cannot go on."""

    exit_code = 6


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(ProtocolError):
    """This end misused the protocol API (a bug in the caller, not the peer)."""


class MessageKind(IntEnum):
    """The kind byte of a frame header."""

    HELLO = 1
    HEARTBEAT = 2
    CHECKPOINT_READY = 3
    CHECKPOINT_REQUEST = 4
    CHECKPOINT_REPLY = 5
    VMSTATE_SEND = 6
    VMSTATE_SIZE = 7
    VMSTATE_DATA = 8
    VMSTATE_RECEIVED = 9
    VMSTATE_LOADED = 10
    GUEST_SHUTDOWN = 11


_KINDS = frozenset(int(kind) for kind in MessageKind)


@dataclass(frozen=True)
class Frame:
    kind: MessageKind
    payload: bytes


def encode_frame(kind: MessageKind, payload: bytes) -> bytes:
    """Header and payload of one frame, ready to send."""
    if not isinstance(kind, MessageKind):
        raise LocalProtocolError(f"frame kind must be a MessageKind, got {kind!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"frame payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > _MAX_LENGTH:
        raise LocalProtocolError(
            f"{kind.name} payload of {len(payload)} bytes does not fit a frame"
        )
    header = _HEADER.pack(MAGIC, FRAME_VERSION, kind, 0, len(payload), zlib.crc32(payload))
    return header + payload


class FrameDecoder:
    """Turns a byte stream into frames; every fault is a RemoteProtocolError.

    After a fault, or after `close()`, the decoder is spent: `feed` raises
    LocalProtocolError.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if isinstance(max_payload, bool) or not isinstance(max_payload, int):
            raise LocalProtocolError(f"max_payload must be an int, got {max_payload!r}")
        if not 0 <= max_payload <= _MAX_LENGTH:
            raise LocalProtocolError(f"max_payload must be in 0..{_MAX_LENGTH}, got {max_payload}")
        self.max_payload = max_payload
        self._header = bytearray()
        self._payload = bytearray()
        self._kind: MessageKind | None = None  # set once the header is whole and valid
        self._length = 0
        self._crc = 0
        self._spent: str | None = None  # why feed is no longer allowed

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held now."""
        return len(self._header) + len(self._payload)

    def feed(self, data: bytes) -> list[Frame]:
        """Consume `data`; return every frame it completes, in order."""
        if self._spent is not None:
            raise LocalProtocolError(f"frame decoder is spent: {self._spent}")
        frames: list[Frame] = []
        view = memoryview(data).cast("B")
        pos = 0
        try:
            while True:
                if self._kind is None:
                    take = min(HEADER_SIZE - len(self._header), len(view) - pos)
                    self._header += view[pos : pos + take]
                    pos += take
                    self._check_header()
                    if self._kind is None:
                        break  # the header is still short: wait for more
                take = min(self._length - len(self._payload), len(view) - pos)
                self._payload += view[pos : pos + take]
                pos += take
                if len(self._payload) < self._length:
                    break
                frames.append(self._finish_frame())
                if pos == len(view):
                    break
        except RemoteProtocolError as exc:
            self._spent = f"it raised {exc}"
            self._header.clear()
            self._payload.clear()
            raise
        return frames

    def close(self) -> None:
        """The peer closed the stream: an unfinished frame is an error."""
        if self._spent is not None:
            return
        self._spent = "the stream was closed"
        if self.pending == 0:
            return
        held = self.pending
        self._header.clear()
        self._payload.clear()
        if self._kind is None:
            raise RemoteProtocolError(
                f"connection closed mid-frame: {held} of {HEADER_SIZE} header bytes"
            )
        raise RemoteProtocolError(
            f"connection closed mid-frame: {held} of {HEADER_SIZE + self._length} bytes"
            f" of a {self._kind.name} frame"
        )

    def _check_header(self) -> None:
        """Check each field whose bytes are in; once all are, accept the header."""
        head = bytes(self._header)
        if len(head) >= 4 and head[:4] != MAGIC:
            raise RemoteProtocolError(f"bad magic {head[:4]!r} at frame start, expected {MAGIC!r}")
        if len(head) >= 5 and head[4] != FRAME_VERSION:
            raise RemoteProtocolError(
                f"unsupported frame version {head[4]}, this end speaks {FRAME_VERSION}"
            )
        if len(head) >= 6 and head[5] not in _KINDS:
            raise RemoteProtocolError(f"unknown message kind {head[5]}")
        if len(head) < HEADER_SIZE:
            return
        _, _, kind, flags, length, crc = _HEADER.unpack(head)
        kind = MessageKind(kind)
        if flags != 0:
            raise RemoteProtocolError(f"reserved flags {flags:#06x} set in {kind.name} frame")
        if length > self.max_payload:
            raise RemoteProtocolError(
                f"payload length {length} over the maximum {self.max_payload} in {kind.name} frame"
            )
        self._kind, self._length, self._crc = kind, length, crc

    def _finish_frame(self) -> Frame:
        assert self._kind is not None
        kind, payload = self._kind, bytes(self._payload)
        self._header.clear()
        self._payload.clear()
        self._kind = None
        actual = zlib.crc32(payload)
        if actual != self._crc:
            raise RemoteProtocolError(
                f"checksum mismatch in {kind.name} frame: header says {self._crc:#010x},"
                f" payload has {actual:#010x}"
            )
        return Frame(kind, payload)
