"""What both ends of the checkpoint protocol share: states, bytes in and out,
HELLO and HEARTBEAT, dispatch of a peer's message to the end's handlers.
No I/O. The ends themselves are in `colonet.checkpoint.protocol`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, ClassVar

from colonet.checkpoint.frames import (
    DEFAULT_MAX_PAYLOAD,
    FrameDecoder,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from colonet.checkpoint.messages import (
    PROTOCOL_VERSION,
    Event,
    Heartbeat,
    HeartbeatReceived,
    Hello,
    HelloReceived,
    Message,
    decode_message,
    encode_message,
)


class State(Enum):
    """Where an end is; both ends move through the same states."""

    HANDSHAKE = "HELLO not yet exchanged both ways"
    IDLE = "between checkpoints"
    REQUESTED = "CHECKPOINT_REQUEST went across, CHECKPOINT_REPLY pending"
    REPLIED = "CHECKPOINT_REPLY went across, body not yet announced"
    TRANSFER = "body announced or in transfer, VMSTATE_RECEIVED pending"
    STAGED = "secondary only: body complete, VMSTATE_RECEIVED not yet sent"
    RECEIVED = "VMSTATE_RECEIVED went across, VMSTATE_LOADED pending"
    SHUT_DOWN = "GUEST_SHUTDOWN went across"
    CLOSED = "the peer closed the stream"
    ERROR = "a protocol error ended the connection"


# -- the machinery both ends share ------------------------------------------

Handler = Callable[[Any, Any], list[Event]]


class Connection:
    role: ClassVar[str]
    _handlers: ClassVar[dict[type[Message], Handler]]

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._decoder = FrameDecoder(max_payload)
        self.max_payload = max_payload
        self._outgoing: list[bytes] = []
        self.state = State.HANDSHAKE
        self.epoch: int | None = None  # the checkpoint in progress
        self.last_epoch: int | None = None  # the last checkpoint LOADED
        self.ready = False  # CHECKPOINT_READY went across
        self.local_hello: Hello | None = None
        self.peer_hello: Hello | None = None
        self.error: str | None = None
        self._heartbeat_out = 0
        self._heartbeat_in: int | None = None

    # -- bytes in and out

    def receive_data(self, data: bytes) -> list[Event]:
        """Events completed by `data`; a RemoteProtocolError moves to ERROR."""
        self._check_usable("receive_data")
        events: list[Event] = []
        try:
            for frame in self._decoder.feed(data):
                events.extend(self._dispatch(decode_message(frame)))
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        return events

    def receive_eof(self) -> None:
        """The peer closed the stream. An error if it cut a frame or a transfer."""
        self._check_usable("receive_eof")
        try:
            self._decoder.close()
            self._check_eof()
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        self.state = State.CLOSED

    def data_to_send(self) -> bytes:
        """Every byte queued since the last call."""
        return b"".join(self.frames_to_send())

    def frames_to_send(self) -> list[bytes]:
        """Every frame queued since the last call, in order (no copy of a body)."""
        frames, self._outgoing = self._outgoing, []
        return frames

    # -- what both ends send

    def send_hello(self, page_size: int, ram_pages: int, guest_name: str) -> None:
        self._check_usable("send_hello")
        if self.local_hello is not None:
            raise LocalProtocolError("HELLO was already sent")
        hello = Hello(PROTOCOL_VERSION, page_size, ram_pages, guest_name)
        if self.peer_hello is not None:
            check_geometry(self.peer_hello, hello, LocalProtocolError)
        self.local_hello = hello
        self._send(hello)
        self._maybe_end_handshake()

    def send_heartbeat(self) -> int:
        """Queue a HEARTBEAT; returns its sequence number."""
        frame, seq = self._next_heartbeat()
        self._outgoing.append(frame)
        return seq

    def heartbeat_frame(self) -> bytes:
        """A HEARTBEAT's bytes, not queued: for a caller that writes it out at
        once while the owner is busy (it shares the sequence numbers, so the
        caller keeps the two from running at the same time)."""
        return self._next_heartbeat()[0]

    def _next_heartbeat(self) -> tuple[bytes, int]:
        self._check_usable("send_heartbeat")
        if self.local_hello is None:
            raise LocalProtocolError("send_heartbeat before send_hello")
        seq = self._heartbeat_out
        self._heartbeat_out += 1
        return encode_message(Heartbeat(seq)), seq

    # -- helpers

    def _send(self, message: Message) -> None:
        self._outgoing.append(encode_message(message))

    def _check_usable(self, action: str) -> None:
        if self.state is State.ERROR:
            raise LocalProtocolError(f"{action} after a protocol error: {self.error}")
        if self.state is State.CLOSED:
            raise LocalProtocolError(f"{action} after the peer closed the stream")

    def _require(self, action: str, state: State, epoch: int | None = None) -> None:
        """Refuse an API call made in the wrong state or for the wrong epoch."""
        self._check_usable(action)
        if self.state is not state:
            raise LocalProtocolError(
                f"{action} not allowed in state {self.state.name}, only in {state.name}"
            )
        if epoch is not None and epoch != self.epoch:
            raise LocalProtocolError(f"{action} for epoch {epoch}, but {self.epoch} is in progress")

    def _out_of_order(self, message: Message, why: str) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"{message.kind.name} out of order in state {self.state.name}: {why}"
        )

    def _expect(self, message: Message, state: State) -> None:
        """The peer's message must come in `state` and, if it has one, for the epoch in progress."""
        if self.state is not state:
            raise self._out_of_order(message, f"expected in state {state.name}")
        epoch = getattr(message, "epoch", None)
        if epoch is not None and epoch != self.epoch:
            raise RemoteProtocolError(
                f"{message.kind.name} for epoch {epoch} in state {self.state.name},"
                f" but checkpoint {self.epoch} is in progress"
            )

    def _check_new_epoch(self, epoch: int, error: type[ProtocolError], what: str) -> None:
        if self.last_epoch is not None and epoch <= self.last_epoch:
            raise error(f"{what} epoch {epoch} is not after the last checkpoint {self.last_epoch}")

    def _dispatch(self, message: Message) -> list[Event]:
        if isinstance(message, Hello):
            return [self._on_hello(message)]
        if self.peer_hello is None:
            raise self._out_of_order(message, "the peer has not sent HELLO")
        if isinstance(message, Heartbeat):
            if self._heartbeat_in is not None and message.seq <= self._heartbeat_in:
                raise RemoteProtocolError(
                    f"HEARTBEAT seq {message.seq} is not after the last one, {self._heartbeat_in}"
                )
            self._heartbeat_in = message.seq
            return [HeartbeatReceived(message.seq)]
        handler = self._handlers.get(type(message))
        if handler is None:
            raise RemoteProtocolError(f"{message.kind.name} is never sent to the {self.role}")
        return handler(self, message)

    def _on_hello(self, hello: Hello) -> Event:
        if self.peer_hello is not None:
            raise self._out_of_order(
                hello, f"second HELLO (protocol version {hello.protocol_version})"
            )
        if hello.protocol_version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"HELLO with protocol version {hello.protocol_version},"
                f" this end speaks {PROTOCOL_VERSION}"
            )
        if self.local_hello is not None:
            check_geometry(hello, self.local_hello, RemoteProtocolError)
        self.peer_hello = hello
        self._maybe_end_handshake()
        return HelloReceived(hello)

    def _maybe_end_handshake(self) -> None:
        if self.local_hello is not None and self.peer_hello is not None:
            self.state = State.IDLE

    def _fail(self, exc: ProtocolError) -> None:
        self.state = State.ERROR
        self.error = str(exc)

    def _check_eof(self) -> None:
        raise NotImplementedError


def check_geometry(peer: Hello, local: Hello, error: type[ProtocolError]) -> None:
    if (peer.page_size, peer.ram_pages) != (local.page_size, local.ram_pages):
        raise error(
            f"HELLO geometry mismatch: the peer's guest {peer.guest_name!r} has {peer.ram_pages}"
            f" pages of {peer.page_size} bytes, this end's {local.guest_name!r} has"
            f" {local.ram_pages} pages of {local.page_size} bytes"
        )
