"""Fuzz targets shared by the test suite (few examples) and tools/fuzz.py
(100,000 each). Every input must end in a result, a clean protocol error or
"need more bytes": any other exception, or a buffer past its bound, fails.

Each target is a plain function of hypothesis-drawn data, so it runs under
`@given` in tests and under the tool's own settings.
"""

from __future__ import annotations

import contextlib
import hashlib

from hypothesis import strategies as st

from colonet.checkpoint.auth import AuthError, PskSession
from colonet.checkpoint.frames import (
    HEADER_SIZE,
    FrameDecoder,
    MessageKind,
    ProtocolError,
    RemoteProtocolError,
    encode_frame,
)
from colonet.checkpoint.messages import (
    CheckpointReady,
    CheckpointReply,
    CheckpointRequest,
    GuestShutdown,
    Heartbeat,
    Hello,
    VmstateData,
    VmstateLoaded,
    VmstateReceived,
    VmstateSend,
    VmstateSize,
    encode_message,
)
from colonet.checkpoint.pages import CheckpointFormatError, decode_checkpoint, encode_checkpoint
from colonet.checkpoint.protocol import PrimaryProtocol, SecondaryProtocol

MAX_PAYLOAD = 4096  # small, so "over the maximum" is reachable
KEY = bytes(range(32))

chunks = st.lists(st.binary(max_size=64), max_size=40)

# Valid frames of every kind, with small or edge-case fields: the state
# machines see well-formed messages in any order, not only noise.
epochs = st.integers(min_value=1, max_value=5)
messages = st.one_of(
    st.builds(
        Hello,
        st.just(1),
        st.sampled_from([4096, 512]),
        st.integers(1, 4),
        st.text(min_size=1, max_size=8),
    ),
    st.builds(Heartbeat, st.integers(0, 3)),
    st.builds(CheckpointReady),
    st.builds(CheckpointRequest, epochs),
    st.builds(CheckpointReply, epochs),
    st.builds(VmstateSend, epochs),
    st.builds(VmstateSize, epochs, st.integers(0, 64)),
    st.builds(VmstateData, st.binary(min_size=1, max_size=32)),
    st.builds(VmstateReceived, epochs, st.binary(min_size=32, max_size=32)),
    st.builds(VmstateLoaded, epochs),
    st.builds(GuestShutdown, st.text(max_size=16)),
)
wire_items = st.one_of(
    messages.map(encode_message),
    st.binary(max_size=24),  # noise between frames
    st.tuples(st.sampled_from(list(MessageKind)), st.binary(max_size=40)).map(
        lambda kp: encode_frame(kp[0], kp[1])
    ),
)


def frame_decoder(pieces: list[bytes]) -> None:
    decoder = FrameDecoder(MAX_PAYLOAD)
    try:
        for piece in pieces:
            for frame in decoder.feed(piece):
                assert len(frame.payload) <= MAX_PAYLOAD
            assert decoder.pending <= HEADER_SIZE + MAX_PAYLOAD
        decoder.close()
    except ProtocolError:
        pass


def _handshaken(end):  # type: ignore[no-untyped-def]
    end.send_hello(4096, 2, "fuzz")
    end.data_to_send()
    return end


def state_machine(side: str, items: list[bytes], cut_at: int) -> None:
    """Either end, after sending its HELLO, fed well-formed and malformed
    frames in any order and pieces; then maybe an EOF."""
    end = _handshaken(
        PrimaryProtocol(max_payload=MAX_PAYLOAD)
        if side == "primary"
        else SecondaryProtocol(max_payload=MAX_PAYLOAD)
    )
    wire = b"".join(items)
    try:
        for start in range(0, len(wire), max(1, cut_at)):
            end.receive_data(wire[start : start + max(1, cut_at)])
        end.receive_eof()
    except RemoteProtocolError:
        assert end.state.name == "ERROR"


def checkpoint_body(data: bytes, flip: int | None) -> None:
    """decode_checkpoint on noise, or on a valid body with one byte changed."""
    if flip is not None:
        ram = bytearray(4096 * 4)
        ram[5000:5008] = data[:8].ljust(8, b"\0")
        body = bytearray(encode_checkpoint(3, memoryview(ram), [1, 2], []))
        body[flip % len(body)] ^= 1 + (flip % 255)
        data = bytes(body)
    with contextlib.suppress(CheckpointFormatError):
        decode_checkpoint(data, expect_page_size=4096, expect_ram_pages=4)


def record_layer(pieces: list[bytes]) -> None:
    """The PSK record layer on noise: nothing but AuthError, nothing passes."""
    session = PskSession("secondary", KEY, nonce=hashlib.sha256(b"n").digest()[:16])
    try:
        for piece in pieces:
            assert session.receive(piece) == b""
    except AuthError:
        pass
