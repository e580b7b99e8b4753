"""The primary and secondary ends of the checkpoint protocol, fed bytes. No I/O.

Each end is a state machine in the style of h11: `receive_data(bytes)` returns
the events the bytes complete, the `send_*` methods queue frames, and
`data_to_send()` hands over the queued bytes. The caller owns the socket and
the clock. The events are defined in `colonet.checkpoint.messages` and
imported here. One conversation:

    primary                              secondary
    HELLO                   <->          HELLO              (HANDSHAKE -> IDLE)
    CHECKPOINT_REQUEST(e)    ->                             (REQUESTED)
                            <-           CHECKPOINT_REPLY(e) (REPLIED)
    VMSTATE_SEND(e), VMSTATE_SIZE(e, n), VMSTATE_DATA...  -> (TRANSFER)
                                         body complete      (STAGED, secondary)
                            <-           VMSTATE_RECEIVED(e, sha256) (RECEIVED)
                            <-           VMSTATE_LOADED(e)  (IDLE, last_epoch = e)
                            <-           CHECKPOINT_READY   (once, after the first)

The first checkpoint (the full copy) runs the same cycle; after it the
secondary sends CHECKPOINT_READY once, and only then may the primary request
the next. Epochs strictly increase. HEARTBEAT may flow either way at any time
after HELLO; GUEST_SHUTDOWN goes from the primary between checkpoints, and
from the secondary at any time after HELLO when it takes over the guest (the
primary must then stand down: the guest now runs on the secondary).

Anything the peer sends out of order is a RemoteProtocolError and moves the end
to ERROR for good; on the secondary it discards a partly received body, which
is never reported. A CheckpointBodyComplete event hands the whole body to the
caller, which verifies and stages it, then calls `send_received` and, once it
is applied, `send_loaded`. Misuse of the API by the caller is a
LocalProtocolError and changes nothing.
"""

from __future__ import annotations

import hashlib
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
    CheckpointBodyComplete,
    CheckpointLoaded,
    CheckpointReady,
    CheckpointReceived,
    CheckpointReply,
    CheckpointRequest,
    CheckpointRequested,
    CheckpointStarted,
    Event,
    GuestShutdown,
    Heartbeat,
    HeartbeatReceived,
    Hello,
    HelloReceived,
    Message,
    ReplyReceived,
    SecondaryReady,
    ShutdownReceived,
    VmstateData,
    VmstateLoaded,
    VmstateReceived,
    VmstateSend,
    VmstateSize,
    decode_message,
    encode_message,
)

DEFAULT_MAX_BODY_BYTES = 16 * 1024**3


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

_Handler = Callable[[Any, Any], list[Event]]


class _Connection:
    role: ClassVar[str]
    _handlers: ClassVar[dict[type[Message], _Handler]]

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
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    # -- what both ends send

    def send_hello(self, page_size: int, ram_pages: int, guest_name: str) -> None:
        self._check_usable("send_hello")
        if self.local_hello is not None:
            raise LocalProtocolError("HELLO was already sent")
        hello = Hello(PROTOCOL_VERSION, page_size, ram_pages, guest_name)
        if self.peer_hello is not None:
            _check_geometry(self.peer_hello, hello, LocalProtocolError)
        self.local_hello = hello
        self._send(hello)
        self._maybe_end_handshake()

    def send_heartbeat(self) -> int:
        """Queue a HEARTBEAT; returns its sequence number."""
        self._check_usable("send_heartbeat")
        if self.local_hello is None:
            raise LocalProtocolError("send_heartbeat before send_hello")
        seq = self._heartbeat_out
        self._heartbeat_out += 1
        self._send(Heartbeat(seq))
        return seq

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
            _check_geometry(hello, self.local_hello, RemoteProtocolError)
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


def _check_geometry(peer: Hello, local: Hello, error: type[ProtocolError]) -> None:
    if (peer.page_size, peer.ram_pages) != (local.page_size, local.ram_pages):
        raise error(
            f"HELLO geometry mismatch: the peer's guest {peer.guest_name!r} has {peer.ram_pages}"
            f" pages of {peer.page_size} bytes, this end's {local.guest_name!r} has"
            f" {local.ram_pages} pages of {local.page_size} bytes"
        )


# -- the secondary -------------------------------------------------------------


class SecondaryProtocol(_Connection):
    """The receiving end: stages nothing itself, but never reports half a body."""

    role = "secondary"

    def __init__(
        self,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(max_payload=max_payload)
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise LocalProtocolError(f"max_body_bytes must be an int, got {max_body_bytes!r}")
        self.max_body_bytes = max_body_bytes
        self._size: int | None = None  # announced by VMSTATE_SIZE
        self._body = bytearray()

    @property
    def body_bytes_received(self) -> int:
        """Bytes of the body in transfer held now (0 outside a transfer)."""
        return len(self._body)

    def send_reply(self, epoch: int) -> None:
        self._require("send_reply", State.REQUESTED, epoch)
        self._send(CheckpointReply(epoch))
        self.state = State.REPLIED

    def send_received(self, epoch: int, digest: bytes) -> None:
        """The body of `epoch` is whole and verified; `digest` is its SHA-256."""
        self._require("send_received", State.STAGED, epoch)
        self._send(VmstateReceived(epoch, digest))
        self.state = State.RECEIVED

    def send_loaded(self, epoch: int) -> None:
        """Checkpoint `epoch` is applied: this end now stands on it."""
        self._require("send_loaded", State.RECEIVED, epoch)
        self._send(VmstateLoaded(epoch))
        self.state, self.epoch, self.last_epoch = State.IDLE, None, epoch

    def send_ready(self) -> None:
        """Once, after the first checkpoint was loaded."""
        self._require("send_ready", State.IDLE)
        if self.last_epoch is None:
            raise LocalProtocolError("send_ready before the first checkpoint was loaded")
        if self.ready:
            raise LocalProtocolError("CHECKPOINT_READY was already sent")
        self._send(CheckpointReady())
        self.ready = True

    def send_takeover(self, reason: str) -> None:
        """GUEST_SHUTDOWN to the primary: the guest now runs here, stand down.

        Allowed in any state after HELLO: a takeover does not wait for the
        checkpoint in transfer, whose partial body is dropped here.
        """
        self._check_usable("send_takeover")
        if self.local_hello is None:
            raise LocalProtocolError("send_takeover before HELLO")
        self._send(GuestShutdown(reason))
        self._body, self._size = bytearray(), None
        self.state = State.SHUT_DOWN

    def _on_request(self, message: CheckpointRequest) -> list[Event]:
        if self.state is not State.IDLE:
            raise self._out_of_order(message, "a checkpoint is only requested between checkpoints")
        if self.last_epoch is not None and not self.ready:
            raise self._out_of_order(message, "this end has not sent CHECKPOINT_READY")
        self._check_new_epoch(message.epoch, RemoteProtocolError, "CHECKPOINT_REQUEST")
        self.state, self.epoch = State.REQUESTED, message.epoch
        return [CheckpointRequested(message.epoch)]

    def _on_send(self, message: VmstateSend) -> list[Event]:
        self._expect(message, State.REPLIED)
        self.state, self._size = State.TRANSFER, None
        return []

    def _on_size(self, message: VmstateSize) -> list[Event]:
        self._expect(message, State.TRANSFER)
        if self._size is not None:
            raise self._out_of_order(message, f"size {self._size} was already announced")
        if message.size > self.max_body_bytes:
            raise RemoteProtocolError(
                f"checkpoint {message.epoch} body of {message.size} bytes is over"
                f" the maximum {self.max_body_bytes}"
            )
        self._size = message.size
        events: list[Event] = [CheckpointStarted(message.epoch, message.size)]
        if message.size == 0:
            events.append(self._complete())
        return events

    def _on_data(self, message: VmstateData) -> list[Event]:
        self._expect(message, State.TRANSFER)
        if self._size is None:
            raise self._out_of_order(message, "VMSTATE_SIZE has not announced the body")
        total = len(self._body) + len(message.data)
        if total > self._size:
            raise RemoteProtocolError(
                f"VMSTATE_DATA runs {total - self._size} bytes past the announced size"
                f" {self._size} of checkpoint {self.epoch}"
            )
        self._body += message.data
        return [self._complete()] if total == self._size else []

    def _complete(self) -> Event:
        assert self.epoch is not None
        body = bytes(self._body)
        self._body = bytearray()
        self.state, self._size = State.STAGED, None
        return CheckpointBodyComplete(self.epoch, body)

    def _on_shutdown(self, message: GuestShutdown) -> list[Event]:
        if self.state is not State.IDLE:
            raise self._out_of_order(message, "the guest shuts down only between checkpoints")
        self.state = State.SHUT_DOWN
        return [ShutdownReceived(message.reason)]

    def _check_eof(self) -> None:
        # STAGED and RECEIVED are not cut: the whole body was already handed over.
        if self.state in (State.REQUESTED, State.REPLIED, State.TRANSFER):
            got = (
                f": {len(self._body)} of {self._size} body bytes" if self._size is not None else ""
            )
            raise RemoteProtocolError(
                f"connection closed mid-checkpoint {self.epoch} in state {self.state.name}{got}"
            )

    def _fail(self, exc: ProtocolError) -> None:
        super()._fail(exc)
        self._body = bytearray()  # a partial body is never reported
        self._size = None

    _handlers: ClassVar[dict[type[Message], _Handler]] = {
        CheckpointRequest: _on_request,
        VmstateSend: _on_send,
        VmstateSize: _on_size,
        VmstateData: _on_data,
        GuestShutdown: _on_shutdown,
    }


# -- the primary ---------------------------------------------------------------


class PrimaryProtocol(_Connection):
    """The sending end: asks for checkpoints and sends their bodies."""

    role = "primary"

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        super().__init__(max_payload=max_payload)
        self._digest: bytes | None = None  # SHA-256 of the body in transfer

    def request_checkpoint(self, epoch: int) -> None:
        self._require("request_checkpoint", State.IDLE)
        if self.last_epoch is not None and not self.ready:
            raise LocalProtocolError(
                "request_checkpoint before the secondary sent CHECKPOINT_READY"
            )
        request = CheckpointRequest(epoch)
        self._check_new_epoch(epoch, LocalProtocolError, "request_checkpoint")
        self._send(request)
        self.state, self.epoch = State.REQUESTED, epoch

    def send_checkpoint(self, epoch: int, body: bytes, chunk_size: int) -> None:
        """Queue VMSTATE_SEND, VMSTATE_SIZE and the body in chunks of at most `chunk_size`."""
        self._require("send_checkpoint", State.REPLIED, epoch)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise LocalProtocolError(f"chunk_size must be an int, got {chunk_size!r}")
        if not 1 <= chunk_size <= self.max_payload:
            raise LocalProtocolError(
                f"chunk_size must be in 1..{self.max_payload}, got {chunk_size}"
            )
        if not isinstance(body, bytes | bytearray | memoryview):
            raise LocalProtocolError(f"body must be bytes, got {type(body).__name__}")
        view = memoryview(body).cast("B")
        self._send(VmstateSend(epoch))
        self._send(VmstateSize(epoch, len(view)))
        for start in range(0, len(view), chunk_size):
            self._send(VmstateData(bytes(view[start : start + chunk_size])))
        self._digest = hashlib.sha256(view).digest()
        self.state = State.TRANSFER

    def send_shutdown(self, reason: str) -> None:
        self._require("send_shutdown", State.IDLE)
        self._send(GuestShutdown(reason))
        self.state = State.SHUT_DOWN

    def _on_ready(self, message: CheckpointReady) -> list[Event]:
        if self.state is not State.IDLE:
            raise self._out_of_order(message, "expected between checkpoints")
        if self.last_epoch is None:
            raise self._out_of_order(message, "no checkpoint has been loaded yet")
        if self.ready:
            raise self._out_of_order(message, "CHECKPOINT_READY was already received")
        self.ready = True
        return [SecondaryReady()]

    def _on_reply(self, message: CheckpointReply) -> list[Event]:
        self._expect(message, State.REQUESTED)
        self.state = State.REPLIED
        return [ReplyReceived(message.epoch)]

    def _on_received(self, message: VmstateReceived) -> list[Event]:
        self._expect(message, State.TRANSFER)
        if message.digest != self._digest:
            raise RemoteProtocolError(
                f"VMSTATE_RECEIVED digest {message.digest.hex()} for checkpoint {message.epoch}"
                f" does not match the body sent ({(self._digest or b'').hex()})"
            )
        self.state, self._digest = State.RECEIVED, None
        return [CheckpointReceived(message.epoch, message.digest)]

    def _on_loaded(self, message: VmstateLoaded) -> list[Event]:
        self._expect(message, State.RECEIVED)
        self.state, self.epoch, self.last_epoch = State.IDLE, None, message.epoch
        return [CheckpointLoaded(message.epoch)]

    def _on_takeover(self, message: GuestShutdown) -> list[Event]:
        # The secondary took the guest over: whatever was in progress ends.
        self.state, self._digest = State.SHUT_DOWN, None
        return [ShutdownReceived(message.reason)]

    def _check_eof(self) -> None:
        if self.state in (State.REQUESTED, State.REPLIED, State.TRANSFER, State.RECEIVED):
            raise RemoteProtocolError(
                f"connection closed mid-checkpoint {self.epoch} in state {self.state.name}"
            )

    _handlers: ClassVar[dict[type[Message], _Handler]] = {
        CheckpointReady: _on_ready,
        CheckpointReply: _on_reply,
        VmstateReceived: _on_received,
        VmstateLoaded: _on_loaded,
        GuestShutdown: _on_takeover,
    }
