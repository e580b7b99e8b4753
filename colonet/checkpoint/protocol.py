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
from typing import ClassVar

from colonet.checkpoint.connection import Connection, Handler, State
from colonet.checkpoint.frames import (
    DEFAULT_MAX_PAYLOAD,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from colonet.checkpoint.messages import (
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
    HeartbeatReceived,
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
)

# The events an end returns are re-exported, so that a user of the protocol
# imports from one place (as with h11).
__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "CheckpointBodyComplete",
    "CheckpointLoaded",
    "CheckpointReceived",
    "CheckpointRequested",
    "CheckpointStarted",
    "Event",
    "HeartbeatReceived",
    "HelloReceived",
    "PrimaryProtocol",
    "ReplyReceived",
    "SecondaryProtocol",
    "SecondaryReady",
    "ShutdownReceived",
    "State",
]

DEFAULT_MAX_BODY_BYTES = 16 * 1024**3


# -- the secondary -------------------------------------------------------------


class SecondaryProtocol(Connection):
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
        # In any state: between checkpoints it is an orderly shutdown; in the
        # middle of one it is the primary going on alone (it gave up on us),
        # and a partial body is dropped. Either way: never take over.
        self._body, self._size = bytearray(), None
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

    _handlers: ClassVar[dict[type[Message], Handler]] = {
        CheckpointRequest: _on_request,
        VmstateSend: _on_send,
        VmstateSize: _on_size,
        VmstateData: _on_data,
        GuestShutdown: _on_shutdown,
    }


# -- the primary ---------------------------------------------------------------


class PrimaryProtocol(Connection):
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

    def send_stand_down(self, reason: str) -> None:
        """GUEST_SHUTDOWN in any state after HELLO: this primary goes on alone
        and the secondary, reading it whenever it can, must not take over. A
        checkpoint in transfer is abandoned."""
        self._check_usable("send_stand_down")
        if self.local_hello is None:
            raise LocalProtocolError("send_stand_down before HELLO")
        self._send(GuestShutdown(reason))
        self._digest = None
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

    _handlers: ClassVar[dict[type[Message], Handler]] = {
        CheckpointReady: _on_ready,
        CheckpointReply: _on_reply,
        VmstateReceived: _on_received,
        VmstateLoaded: _on_loaded,
        GuestShutdown: _on_takeover,
    }
