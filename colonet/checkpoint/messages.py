"""Messages of the checkpoint protocol and their payloads. No I/O.

Each message is a frozen dataclass, validated when built, that knows its frame
kind and how to encode its payload; `decode_message` turns a `Frame` back into
one. Integers are unsigned and in network byte order; epochs are u64 >= 1.

    kind                 payload
    HELLO                u16 protocol version, u32 page size, u64 RAM pages,
                         guest name (UTF-8, the rest of the payload, 1..255 bytes)
    HEARTBEAT            u64 sequence number
    CHECKPOINT_READY     (empty)
    CHECKPOINT_REQUEST   u64 epoch
    CHECKPOINT_REPLY     u64 epoch
    VMSTATE_SEND         u64 epoch
    VMSTATE_SIZE         u64 epoch, u64 size of the checkpoint body in bytes
    VMSTATE_DATA         1 or more bytes of the body
    VMSTATE_RECEIVED     u64 epoch, 32-byte SHA-256 of the whole body
    VMSTATE_LOADED       u64 epoch
    GUEST_SHUTDOWN       reason (UTF-8, the whole payload, 0..1024 bytes)

The checkpoint body is opaque here. After VMSTATE_SEND(epoch) and
VMSTATE_SIZE(epoch, n), the primary sends the n body bytes as a sequence of
VMSTATE_DATA frames, each carrying at most its chunk size (and at most the
receiver's maximum frame payload); a body of 0 bytes has no VMSTATE_DATA
frame. The data frames carry no epoch: they belong to the checkpoint whose
size was announced last, and the receiver counts them up to n.

The events the protocol ends report (`colonet.checkpoint.protocol`) are frozen
records of the same make and live at the end of this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from colonet.checkpoint.frames import (
    Frame,
    LocalProtocolError,
    MessageKind,
    RemoteProtocolError,
    encode_frame,
)

PROTOCOL_VERSION = 1
DIGEST_SIZE = 32
MAX_GUEST_NAME_BYTES = 255
MAX_REASON_BYTES = 1024
_U64 = struct.Struct("!Q")
_U64_PAIR = struct.Struct("!QQ")
_HELLO = struct.Struct("!HIQ")
_RECEIVED = struct.Struct(f"!Q{DIGEST_SIZE}s")


def _check_uint(what: str, value: object, low: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**bits:
        raise LocalProtocolError(f"{what} must be an int in {low}..2**{bits}-1, got {value!r}")


def _check_text(what: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be a str, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{what} cannot be encoded as UTF-8: {exc}") from None
    if not low <= size <= high:
        raise LocalProtocolError(f"{what} must be {low}..{high} bytes of UTF-8, got {size}")


def _decode_text(kind: MessageKind, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"{kind.name} text is not valid UTF-8: {exc}") from None


def _unpack(kind: MessageKind, layout: struct.Struct, payload: bytes) -> tuple:
    if len(payload) != layout.size:
        raise RemoteProtocolError(
            f"{kind.name} payload is {len(payload)} bytes, expected {layout.size}"
        )
    return layout.unpack(payload)


class Message:
    """Base of every message: a frame kind and a payload codec."""

    kind: ClassVar[MessageKind]

    def encode_payload(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_payload(cls, payload: bytes) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Message):
    kind: ClassVar[MessageKind] = MessageKind.HELLO
    protocol_version: int
    page_size: int
    ram_pages: int
    guest_name: str

    def __post_init__(self) -> None:
        _check_uint("HELLO protocol_version", self.protocol_version, 0, 16)
        _check_uint("HELLO page_size", self.page_size, 1, 32)
        if self.page_size & (self.page_size - 1):
            raise LocalProtocolError(
                f"HELLO page_size must be a power of two, got {self.page_size}"
            )
        _check_uint("HELLO ram_pages", self.ram_pages, 1, 64)
        _check_text("HELLO guest_name", self.guest_name, 1, MAX_GUEST_NAME_BYTES)

    def encode_payload(self) -> bytes:
        head = _HELLO.pack(self.protocol_version, self.page_size, self.ram_pages)
        return head + self.guest_name.encode("utf-8")

    @classmethod
    def decode_payload(cls, payload: bytes) -> Hello:
        if len(payload) < _HELLO.size:
            raise RemoteProtocolError(
                f"HELLO payload is {len(payload)} bytes, expected at least {_HELLO.size}"
            )
        version, page_size, ram_pages = _HELLO.unpack(payload[: _HELLO.size])
        name = _decode_text(cls.kind, payload[_HELLO.size :])
        return cls(version, page_size, ram_pages, name)


@dataclass(frozen=True)
class Heartbeat(Message):
    kind: ClassVar[MessageKind] = MessageKind.HEARTBEAT
    seq: int

    def __post_init__(self) -> None:
        _check_uint("HEARTBEAT seq", self.seq, 0, 64)

    def encode_payload(self) -> bytes:
        return _U64.pack(self.seq)

    @classmethod
    def decode_payload(cls, payload: bytes) -> Heartbeat:
        return cls(*_unpack(cls.kind, _U64, payload))


@dataclass(frozen=True)
class CheckpointReady(Message):
    kind: ClassVar[MessageKind] = MessageKind.CHECKPOINT_READY

    def encode_payload(self) -> bytes:
        return b""

    @classmethod
    def decode_payload(cls, payload: bytes) -> CheckpointReady:
        if payload:
            raise RemoteProtocolError(
                f"CHECKPOINT_READY payload is {len(payload)} bytes, expected 0"
            )
        return cls()


@dataclass(frozen=True)
class _EpochMessage(Message):
    """A message that carries nothing but its epoch."""

    epoch: int

    def __post_init__(self) -> None:
        _check_uint(f"{self.kind.name} epoch", self.epoch, 1, 64)

    def encode_payload(self) -> bytes:
        return _U64.pack(self.epoch)

    @classmethod
    def decode_payload(cls, payload: bytes) -> _EpochMessage:
        return cls(*_unpack(cls.kind, _U64, payload))


@dataclass(frozen=True)
class CheckpointRequest(_EpochMessage):
    kind: ClassVar[MessageKind] = MessageKind.CHECKPOINT_REQUEST


@dataclass(frozen=True)
class CheckpointReply(_EpochMessage):
    kind: ClassVar[MessageKind] = MessageKind.CHECKPOINT_REPLY


@dataclass(frozen=True)
class VmstateSend(_EpochMessage):
    kind: ClassVar[MessageKind] = MessageKind.VMSTATE_SEND


@dataclass(frozen=True)
class VmstateLoaded(_EpochMessage):
    kind: ClassVar[MessageKind] = MessageKind.VMSTATE_LOADED


@dataclass(frozen=True)
class VmstateSize(Message):
    kind: ClassVar[MessageKind] = MessageKind.VMSTATE_SIZE
    epoch: int
    size: int

    def __post_init__(self) -> None:
        _check_uint("VMSTATE_SIZE epoch", self.epoch, 1, 64)
        _check_uint("VMSTATE_SIZE size", self.size, 0, 64)

    def encode_payload(self) -> bytes:
        return _U64_PAIR.pack(self.epoch, self.size)

    @classmethod
    def decode_payload(cls, payload: bytes) -> VmstateSize:
        return cls(*_unpack(cls.kind, _U64_PAIR, payload))


@dataclass(frozen=True)
class VmstateData(Message):
    kind: ClassVar[MessageKind] = MessageKind.VMSTATE_DATA
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise LocalProtocolError(f"VMSTATE_DATA data must be bytes, got {type(self.data)}")
        if not self.data:
            raise LocalProtocolError("VMSTATE_DATA data must not be empty")

    def encode_payload(self) -> bytes:
        return self.data

    @classmethod
    def decode_payload(cls, payload: bytes) -> VmstateData:
        return cls(bytes(payload))


@dataclass(frozen=True)
class VmstateReceived(Message):
    kind: ClassVar[MessageKind] = MessageKind.VMSTATE_RECEIVED
    epoch: int
    digest: bytes

    def __post_init__(self) -> None:
        _check_uint("VMSTATE_RECEIVED epoch", self.epoch, 1, 64)
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise LocalProtocolError(
                f"VMSTATE_RECEIVED digest must be {DIGEST_SIZE} bytes, got {self.digest!r}"
            )

    def encode_payload(self) -> bytes:
        return _RECEIVED.pack(self.epoch, self.digest)

    @classmethod
    def decode_payload(cls, payload: bytes) -> VmstateReceived:
        return cls(*_unpack(cls.kind, _RECEIVED, payload))


@dataclass(frozen=True)
class GuestShutdown(Message):
    kind: ClassVar[MessageKind] = MessageKind.GUEST_SHUTDOWN
    reason: str

    def __post_init__(self) -> None:
        _check_text("GUEST_SHUTDOWN reason", self.reason, 0, MAX_REASON_BYTES)

    def encode_payload(self) -> bytes:
        return self.reason.encode("utf-8")

    @classmethod
    def decode_payload(cls, payload: bytes) -> GuestShutdown:
        return cls(_decode_text(cls.kind, payload))


_BY_KIND: dict[MessageKind, type[Message]] = {
    cls.kind: cls
    for cls in (
        Hello,
        Heartbeat,
        CheckpointReady,
        CheckpointRequest,
        CheckpointReply,
        VmstateSend,
        VmstateSize,
        VmstateData,
        VmstateReceived,
        VmstateLoaded,
        GuestShutdown,
    )
}
assert set(_BY_KIND) == set(MessageKind), "every kind needs a message class"


def encode_message(message: Message) -> bytes:
    """One whole frame carrying `message`."""
    if not isinstance(message, Message) or type(message) not in _BY_KIND.values():
        raise LocalProtocolError(f"not a protocol message: {message!r}")
    return encode_frame(message.kind, message.encode_payload())


def decode_message(frame: Frame) -> Message:
    """The message a frame carries; a payload that breaks the rules is the peer's fault."""
    try:
        return _BY_KIND[frame.kind].decode_payload(frame.payload)
    except LocalProtocolError as exc:
        # The fields parsed but a value is out of range: the peer built a bad message.
        raise RemoteProtocolError(f"bad {frame.kind.name} message: {exc}") from None


# -- events the protocol ends report (colonet.checkpoint.protocol) ---------


class Event:
    """Base of everything `receive_data` returns."""


@dataclass(frozen=True)
class HelloReceived(Event):
    hello: Hello


@dataclass(frozen=True)
class HeartbeatReceived(Event):
    seq: int


@dataclass(frozen=True)
class _EpochEvent(Event):
    epoch: int

    def __post_init__(self) -> None:
        _check_uint(f"{type(self).__name__} epoch", self.epoch, 1, 64)


@dataclass(frozen=True)
class CheckpointRequested(_EpochEvent):
    """Secondary: the primary asks for checkpoint `epoch`; answer with send_reply."""


@dataclass(frozen=True)
class CheckpointStarted(_EpochEvent):
    """Secondary: the body of `epoch`, `size` bytes, is on its way."""

    size: int


@dataclass(frozen=True)
class CheckpointBodyComplete(_EpochEvent):
    """Secondary: every byte of the body arrived; it is the caller's to verify."""

    body: bytes


@dataclass(frozen=True)
class ShutdownReceived(Event):
    reason: str


@dataclass(frozen=True)
class SecondaryReady(Event):
    """Primary: the secondary finished the initial sync (CHECKPOINT_READY)."""


@dataclass(frozen=True)
class ReplyReceived(_EpochEvent):
    """Primary: the secondary is ready for the body of `epoch`."""


@dataclass(frozen=True)
class CheckpointReceived(_EpochEvent):
    """Primary: the secondary holds and verified `epoch`: its output may go."""

    digest: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.digest) != DIGEST_SIZE:
            raise LocalProtocolError(f"digest must be {DIGEST_SIZE} bytes, got {self.digest!r}")


@dataclass(frozen=True)
class CheckpointLoaded(_EpochEvent):
    """Primary: the secondary applied `epoch`."""
