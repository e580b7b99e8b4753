"""The PSK record layer: who may talk, and what a forged byte does. No I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colonet.checkpoint.auth import (
    MAX_RECORD_BYTES,
    AuthError,
    PskSession,
    load_psk,
)

KEY = bytes(range(32))


def greeted(key_p: bytes = KEY, key_s: bytes = KEY) -> tuple[PskSession, PskSession]:
    primary, secondary = PskSession("primary", key_p), PskSession("secondary", key_s)
    assert secondary.receive(primary.greeting()) == b""
    assert primary.receive(secondary.greeting()) == b""
    assert primary.keys_ready and secondary.keys_ready
    return primary, secondary


def pair() -> tuple[PskSession, PskSession]:
    primary, secondary = greeted()
    assert secondary.receive(primary.confirmation()) == b""
    assert primary.receive(secondary.confirmation()) == b""
    assert primary.established and secondary.established
    return primary, secondary


def test_record_0_must_be_the_confirmation():
    primary, secondary = greeted()
    with pytest.raises(AuthError, match="not colonet's key confirmation"):
        secondary.receive(primary.seal(b"HELLO straight away"))


def test_payload_crosses_both_ways_in_any_pieces():
    primary, secondary = pair()
    wire = primary.seal(b"HELLO frames") + primary.seal(b"x" * (MAX_RECORD_BYTES + 5))
    got = b"".join(secondary.receive(wire[i : i + 7]) for i in range(0, len(wire), 7))
    assert got == b"HELLO frames" + b"x" * (MAX_RECORD_BYTES + 5)
    assert primary.receive(secondary.seal(b"RECEIVED")) == b"RECEIVED"


def test_a_wrong_key_fails_the_confirmation_naming_the_key():
    primary, secondary = greeted(key_s=bytes(32))
    with pytest.raises(AuthError, match=r"record 0 from the peer failed authentication \(wrong"):
        secondary.receive(primary.confirmation())
    assert not secondary.established
    with pytest.raises(AuthError, match="already failed"):
        secondary.receive(b"more")


def test_a_peer_without_the_key_is_named():
    secondary = PskSession("secondary", KEY)
    with pytest.raises(AuthError, match="without the pre-shared key"):
        secondary.receive(b"\xc0\x10\x0e\x70plain colonet frames....")


@pytest.mark.parametrize("offset", [0, 3, 4, 10, -1])
def test_any_altered_byte_is_refused(offset):
    primary, secondary = pair()
    secondary.receive(primary.seal(b"first"))
    wire = bytearray(primary.seal(b"checkpoint body"))
    wire[offset] ^= 0x01
    with pytest.raises(AuthError):
        secondary.receive(bytes(wire))


def test_a_replayed_or_dropped_record_is_refused():
    primary, secondary = pair()
    one, two = primary.seal(b"one"), primary.seal(b"two")
    assert secondary.receive(one) == b"one"
    with pytest.raises(AuthError, match=r"record 2 .* \(altered or replayed\)"):
        secondary.receive(one)
    primary, secondary = pair()
    one, two = primary.seal(b"one"), primary.seal(b"two")
    with pytest.raises(AuthError):
        secondary.receive(two)  # record 0 went missing


def test_a_recorded_session_does_not_replay_into_a_new_one():
    primary, secondary = pair()
    recorded = primary.greeting() + primary.seal(b"HELLO")
    fresh = PskSession("secondary", KEY)  # new nonce
    fresh.greeting()
    with pytest.raises(AuthError):
        fresh.receive(recorded)


def test_an_absurd_length_is_refused_before_buffering():
    primary, secondary = pair()
    with pytest.raises(AuthError, match="claims 4294967295 bytes"):
        secondary.receive(b"\xff\xff\xff\xff")


def test_sending_before_the_greeting_is_a_local_error():
    with pytest.raises(AuthError, match="before the peer's greeting"):
        PskSession("primary", KEY).seal(b"x")


def test_key_files(tmp_path):
    hexfile = tmp_path / "k.hex"
    hexfile.write_text(KEY.hex() + "\n")
    assert load_psk(str(hexfile)) == KEY
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(AuthError, match="has 3 bytes, under 16"):
        load_psk(str(short))
    with pytest.raises(AuthError, match="cannot read the pre-shared key"):
        load_psk(str(tmp_path / "missing"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_end_in_payload_need_more_or_auth_error(data):
    secondary = PskSession("secondary", KEY)
    try:
        out = secondary.receive(data)
    except AuthError:
        return
    assert out == b""  # nothing passes without the key
