"""Tests for checkpoint frames and message payloads: round trips and every malformed input."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colonet.checkpoint.frames import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAGIC,
    Frame,
    FrameDecoder,
    LocalProtocolError,
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
    Message,
    VmstateData,
    VmstateLoaded,
    VmstateReceived,
    VmstateSend,
    VmstateSize,
    decode_message,
    encode_message,
)
from colonet.errors import ColonetError

SAMPLES: list[Message] = [
    Hello(1, 4096, 262144, "guest-1"),
    Hello(7, 65536, 2**64 - 1, "ü" * 127),
    Heartbeat(0),
    Heartbeat(2**64 - 1),
    CheckpointReady(),
    CheckpointRequest(1),
    CheckpointReply(2**63),
    VmstateSend(5),
    VmstateSize(5, 0),
    VmstateSize(5, 2**40),
    VmstateData(b"\x00"),
    VmstateData(bytes(range(256)) * 10),
    VmstateReceived(9, bytes(range(32))),
    VmstateLoaded(9),
    GuestShutdown(""),
    GuestShutdown("guest powered off"),
]


def raw_header(
    magic: bytes = MAGIC,
    version: int = 1,
    kind: int = MessageKind.HEARTBEAT,
    flags: int = 0,
    length: int = 8,
    crc: int | None = None,
    payload: bytes = bytes(8),
) -> bytes:
    crc = zlib.crc32(payload) if crc is None else crc
    return struct.pack("!4sBBHII", magic, version, kind, flags, length, crc)


def test_header_layout_is_network_order_and_sixteen_bytes() -> None:
    frame = encode_frame(MessageKind.VMSTATE_SIZE, b"abc")
    assert HEADER_SIZE == 16
    assert frame[:4] == b"CLNT"
    assert frame[4:8] == bytes([1, MessageKind.VMSTATE_SIZE, 0, 0])
    assert frame[8:12] == (3).to_bytes(4, "big")
    assert frame[12:16] == zlib.crc32(b"abc").to_bytes(4, "big")
    assert frame[16:] == b"abc"


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    decoder = FrameDecoder()
    (frame,) = decoder.feed(encode_message(message))
    assert frame.kind is message.kind
    assert decode_message(frame) == message
    assert decoder.pending == 0


def test_every_kind_has_a_sample() -> None:
    assert {m.kind for m in SAMPLES} == set(MessageKind)


def test_frames_split_at_every_byte_come_out_whole_and_in_order() -> None:
    stream = b"".join(encode_message(m) for m in SAMPLES)
    decoder = FrameDecoder()
    frames = [f for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
    assert [decode_message(f) for f in frames] == SAMPLES
    decoder.close()


def test_a_short_read_waits_and_pending_counts_the_bytes() -> None:
    frame = encode_message(Heartbeat(3))
    decoder = FrameDecoder()
    assert decoder.feed(frame[:10]) == []
    assert decoder.pending == 10
    assert decoder.feed(frame[10:20]) == []
    assert decoder.pending == 20
    assert decoder.feed(frame[20:]) == [Frame(MessageKind.HEARTBEAT, (3).to_bytes(8, "big"))]
    assert decoder.pending == 0


# -- malformed frames ---------------------------------------------------------


def feed_raises(data: bytes, match: str, max_payload: int = DEFAULT_MAX_PAYLOAD) -> FrameDecoder:
    decoder = FrameDecoder(max_payload)
    with pytest.raises(RemoteProtocolError, match=match):
        decoder.feed(data)
    return decoder


def test_bad_magic() -> None:
    feed_raises(raw_header(magic=b"XXXX"), r"^bad magic b'XXXX' at frame start")


def test_bad_magic_is_caught_as_soon_as_four_bytes_are_in() -> None:
    feed_raises(b"CLNX", r"bad magic b'CLNX'")


def test_bad_magic_after_a_good_frame() -> None:
    feed_raises(encode_message(Heartbeat(1)) + b"GET / HTTP/1.1\r\n", r"bad magic b'GET '")


def test_bad_version() -> None:
    feed_raises(raw_header(version=2), r"unsupported frame version 2, this end speaks 1")


@pytest.mark.parametrize("kind", [0, 12, 99, 255])
def test_unknown_kind(kind: int) -> None:
    feed_raises(raw_header(kind=kind), rf"^unknown message kind {kind}$")


def test_reserved_flags_set() -> None:
    feed_raises(raw_header(flags=1), r"reserved flags 0x0001 set in HEARTBEAT frame")


def test_length_over_the_maximum_raises_on_the_header_alone() -> None:
    header = raw_header(kind=MessageKind.VMSTATE_DATA, length=DEFAULT_MAX_PAYLOAD + 1)
    decoder = feed_raises(header, r"^payload length 10485761 over the maximum 10485760")
    assert decoder.pending == 0


def test_length_of_exactly_the_maximum_is_accepted() -> None:
    decoder = FrameDecoder(max_payload=64)
    (frame,) = decoder.feed(encode_frame(MessageKind.VMSTATE_DATA, bytes(64)))
    assert frame.payload == bytes(64)
    feed_raises(encode_frame(MessageKind.VMSTATE_DATA, bytes(65)), r"65 over the maximum 64", 64)


def test_bad_checksum() -> None:
    frame = bytearray(encode_message(VmstateSend(4)))
    frame[-1] ^= 0x01
    feed_raises(bytes(frame), r"^checksum mismatch in VMSTATE_SEND frame")


def test_close_mid_frame_is_a_short_read() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_message(Heartbeat(1))[:10])
    decoder.feed(encode_message(Heartbeat(1))[10:20])
    with pytest.raises(RemoteProtocolError, match=r"closed mid-frame: 20 of 24 bytes of a HEART"):
        decoder.close()


def test_close_mid_header_is_a_short_read() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"CLNT\x01")
    with pytest.raises(RemoteProtocolError, match=r"closed mid-frame: 5 of 16 header bytes"):
        decoder.close()


def test_close_between_frames_is_clean_and_spends_the_decoder() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_message(Heartbeat(1)))
    decoder.close()
    decoder.close()
    with pytest.raises(LocalProtocolError, match=r"spent: the stream was closed"):
        decoder.feed(b"")


def test_a_decoder_that_raised_is_poisoned() -> None:
    decoder = feed_raises(b"XXXX", r"bad magic")
    with pytest.raises(LocalProtocolError, match=r"spent: it raised bad magic"):
        decoder.feed(encode_message(Heartbeat(1)))
    assert decoder.pending == 0


def test_error_classes_say_who_broke_the_rules() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(ProtocolError, ColonetError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert RemoteProtocolError("x").exit_code == 6


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True])
def test_decoder_rejects_a_bad_maximum(bad: object) -> None:
    with pytest.raises(LocalProtocolError, match="max_payload"):
        FrameDecoder(bad)  # type: ignore[arg-type]


def test_encode_frame_refuses_what_is_not_a_kind_or_bytes() -> None:
    with pytest.raises(LocalProtocolError, match="MessageKind"):
        encode_frame(4, b"")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="payload must be bytes"):
        encode_frame(MessageKind.HEARTBEAT, "text")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="not a protocol message"):
        encode_message(object())  # type: ignore[arg-type]


# -- malformed payloads ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload", "match"),
    [
        (MessageKind.HEARTBEAT, b"abc", r"^HEARTBEAT payload is 3 bytes, expected 8$"),
        (MessageKind.CHECKPOINT_REQUEST, bytes(9), r"CHECKPOINT_REQUEST payload is 9 bytes"),
        (MessageKind.CHECKPOINT_REQUEST, bytes(8), r"^bad CHECKPOINT_REQUEST message: .*epoch"),
        (MessageKind.VMSTATE_SIZE, bytes(8), r"VMSTATE_SIZE payload is 8 bytes, expected 16"),
        (MessageKind.VMSTATE_RECEIVED, bytes(39), r"VMSTATE_RECEIVED payload is 39 bytes"),
        (MessageKind.CHECKPOINT_READY, b"x", r"CHECKPOINT_READY payload is 1 bytes, expected 0"),
        (MessageKind.VMSTATE_DATA, b"", r"bad VMSTATE_DATA message: .*must not be empty"),
        (MessageKind.HELLO, bytes(13), r"HELLO payload is 13 bytes, expected at least 14"),
        (MessageKind.HELLO, struct.pack("!HIQ", 1, 4096, 1), r"bad HELLO message: .*guest_name"),
        (MessageKind.HELLO, struct.pack("!HIQ", 1, 4095, 1) + b"g", r"power of two"),
        (MessageKind.HELLO, struct.pack("!HIQ", 1, 4096, 0) + b"g", r"ram_pages"),
        (MessageKind.HELLO, struct.pack("!HIQ", 1, 4096, 1) + b"\xff", r"HELLO text is not"),
        (MessageKind.GUEST_SHUTDOWN, b"\xc3", r"GUEST_SHUTDOWN text is not valid UTF-8"),
        (MessageKind.GUEST_SHUTDOWN, b"x" * 1025, r"bad GUEST_SHUTDOWN message: .*1025"),
    ],
)
def test_malformed_payload_is_the_peers_fault(
    kind: MessageKind, payload: bytes, match: str
) -> None:
    (frame,) = FrameDecoder().feed(encode_frame(kind, payload))
    with pytest.raises(RemoteProtocolError, match=match):
        decode_message(frame)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Heartbeat(-1),
        lambda: Heartbeat(2**64),
        lambda: CheckpointRequest(0),
        lambda: CheckpointReply(True),
        lambda: VmstateSize(1, -1),
        lambda: VmstateReceived(1, bytes(31)),
        lambda: VmstateData(b""),
        lambda: Hello(1, 3000, 1, "g"),
        lambda: Hello(1, 4096, 1, ""),
        lambda: Hello(1, 4096, 1, "x" * 256),
        lambda: Hello(1, 4096, 1, "\udc80"),
        lambda: GuestShutdown("x" * 1025),
    ],
)
def test_building_a_bad_message_is_a_local_error(build) -> None:
    with pytest.raises(LocalProtocolError):
        build()


# -- fuzzing --------------------------------------------------------------------

FUZZ_MAX = 64


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    """Frames from every chunk; the only exception allowed is RemoteProtocolError."""
    frames: list[Frame] = []
    try:
        for chunk in chunks:
            frames += decoder.feed(chunk)
            assert decoder.pending <= HEADER_SIZE + FUZZ_MAX
        decoder.close()
    except RemoteProtocolError:
        assert decoder.pending == 0
    return frames


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=12))
def test_fuzz_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    feed_all(FrameDecoder(FUZZ_MAX), chunked(data, cuts))


frame_parts = st.one_of(
    st.builds(encode_frame, st.sampled_from(list(MessageKind)), st.binary(max_size=FUZZ_MAX + 8)),
    st.binary(min_size=1, max_size=20),
    st.builds(raw_header, kind=st.integers(0, 255), length=st.integers(0, 2**32 - 1)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(frame_parts, max_size=8), st.lists(st.integers(0, 1000), max_size=12))
def test_fuzz_frames_mixed_with_garbage(parts: list[bytes], cuts: list[int]) -> None:
    feed_all(FrameDecoder(FUZZ_MAX), chunked(b"".join(parts), cuts))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(list(MessageKind)), st.binary(max_size=FUZZ_MAX)), max_size=8
    ),
    st.lists(st.integers(0, 1000), max_size=12),
)
def test_fuzz_valid_frames_survive_any_chunking(
    frames: list[tuple[MessageKind, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(kind, payload) for kind, payload in frames)
    decoder = FrameDecoder(FUZZ_MAX)
    got = [f for chunk in chunked(stream, cuts) for f in decoder.feed(chunk)]
    assert got == [Frame(kind, payload) for kind, payload in frames]
    decoder.close()


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.builds(
            Hello,
            st.integers(0, 2**16 - 1),
            st.integers(0, 31).map(lambda b: 1 << b),
            st.integers(1, 2**64 - 1),
            st.text(min_size=1, max_size=60),
        ),
        st.builds(Heartbeat, st.integers(0, 2**64 - 1)),
        st.builds(VmstateSize, st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1)),
        st.builds(VmstateReceived, st.integers(1, 2**64 - 1), st.binary(min_size=32, max_size=32)),
        st.builds(VmstateData, st.binary(min_size=1, max_size=100)),
        st.builds(GuestShutdown, st.text(max_size=100)),
    )
)
def test_fuzz_messages_round_trip(message: Message) -> None:
    (frame,) = FrameDecoder().feed(encode_message(message))
    assert decode_message(frame) == message
