"""Pre-shared-key authentication of the replication stream (pure, no I/O).

Before HELLO each end sends a 32-byte greeting: a magic and a fresh random
nonce. Both then derive one key per direction from the PSK and both nonces
(HMAC-SHA256), so a recorded session cannot be replayed into a new one.
From then on every byte travels in records:

    length  u32, 1..MAX_RECORD_BYTES
    payload `length` bytes (checkpoint protocol frames, unchanged)
    tag     HMAC-SHA256(direction key, u64 record number || length || payload)

The record number is implicit and counts up per direction, so a dropped,
repeated or reordered record fails its tag. Record 0 each way is a fixed
key confirmation, so the handshake itself proves both ends hold the key: a
peer without it is refused before any of its frames reaches the protocol,
and nothing is staged. The payload is not encrypted: the PSK mode protects integrity
and the peer's identity; use TLS (transport) for confidentiality.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from colonet.errors import ColonetError

MAGIC = b"COLONET-PSK-1\0\0\0"  # 16 bytes
NONCE_BYTES = 16
GREETING_BYTES = len(MAGIC) + NONCE_BYTES
TAG_BYTES = 32
MAX_RECORD_BYTES = 1 << 20
MIN_PSK_BYTES = 16
CONFIRMATION = b"colonet: I hold the replication key"
_LEN = struct.Struct("!I")
_SEQ = struct.Struct("!Q")


class AuthError(ColonetError):
    """The peer could not prove it holds the key (or broke the record layer)."""

    exit_code = 9


def load_psk(path: str) -> bytes:
    """A key file: hex (as `colonet keys` writes) or raw bytes, at least 16 bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise AuthError(f"cannot read the pre-shared key {path}: {exc.strerror}") from None
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) < MIN_PSK_BYTES:
        raise AuthError(f"the pre-shared key in {path} has {len(key)} bytes, under {MIN_PSK_BYTES}")
    return key


class PskSession:
    """One end's record layer. `role` is "primary" or "secondary"."""

    def __init__(self, role: str, psk: bytes, nonce: bytes | None = None) -> None:
        if role not in ("primary", "secondary"):
            raise ValueError(f"role must be primary or secondary, not {role!r}")
        if len(psk) < MIN_PSK_BYTES:
            raise ValueError(f"a pre-shared key needs at least {MIN_PSK_BYTES} bytes")
        self.role = role
        self._psk = psk
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        if len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        self._key_out: bytes | None = None
        self._key_in: bytes | None = None
        self._seq_out = 0
        self._seq_in = 0
        self._buffer = bytearray()
        self._confirmed = False  # the peer's record 0 proved its key
        self.failed: str | None = None

    @property
    def keys_ready(self) -> bool:
        """The greetings crossed: `confirmation()` may be sent."""
        return self._key_in is not None

    @property
    def established(self) -> bool:
        return self._confirmed

    def confirmation(self) -> bytes:
        """Record 0 of this end: proves it holds the key."""
        if self._seq_out != 0:
            raise AuthError("the key confirmation was already sent")
        return self.seal(CONFIRMATION)

    def greeting(self) -> bytes:
        return MAGIC + self.nonce

    def _derive(self, peer_nonce: bytes) -> None:
        if self.role == "primary":
            nonces = self.nonce + peer_nonce
            out_label, in_label = b"primary->secondary", b"secondary->primary"
        else:
            nonces = peer_nonce + self.nonce
            out_label, in_label = b"secondary->primary", b"primary->secondary"
        self._key_out = hmac.new(self._psk, out_label + nonces, hashlib.sha256).digest()
        self._key_in = hmac.new(self._psk, in_label + nonces, hashlib.sha256).digest()

    def _tag(self, key: bytes, seq: int, header: bytes, payload: bytes | memoryview) -> bytes:
        mac = hmac.new(key, _SEQ.pack(seq), hashlib.sha256)
        mac.update(header)
        mac.update(payload)
        return mac.digest()

    def seal(self, data: bytes | memoryview) -> bytes:
        """`data` as records for the peer (only once the greetings crossed)."""
        if self._key_out is None:
            raise AuthError("cannot send before the peer's greeting arrived")
        view = memoryview(data).cast("B")
        out = bytearray()
        for start in range(0, len(view), MAX_RECORD_BYTES):
            chunk = view[start : start + MAX_RECORD_BYTES]
            header = _LEN.pack(len(chunk))
            out += header
            out += chunk
            out += self._tag(self._key_out, self._seq_out, header, chunk)
            self._seq_out += 1
        return bytes(out)

    def receive(self, data: bytes) -> bytes:
        """Feed bytes from the peer; the authenticated payload they complete."""
        if self.failed is not None:
            raise AuthError(f"the record layer already failed: {self.failed}")
        self._buffer += data
        try:
            if self._key_in is None:
                if len(self._buffer) < GREETING_BYTES:
                    if not MAGIC.startswith(bytes(self._buffer[: len(MAGIC)])):
                        raise AuthError(self._no_greeting())
                    return b""
                greeting = bytes(self._buffer[:GREETING_BYTES])
                del self._buffer[:GREETING_BYTES]
                if greeting[: len(MAGIC)] != MAGIC:
                    raise AuthError(self._no_greeting())
                self._derive(greeting[len(MAGIC) :])
            return self._open_records()
        except AuthError as exc:
            self.failed = str(exc)
            self._buffer.clear()
            raise

    def _no_greeting(self) -> str:
        return (
            "the peer did not open with colonet's authenticated greeting: it runs without "
            "the pre-shared key (no --psk-file), or is not colonet"
        )

    def _open_records(self) -> bytes:
        assert self._key_in is not None
        out = bytearray()
        while len(self._buffer) >= _LEN.size:
            (length,) = _LEN.unpack_from(self._buffer)
            if not 0 < length <= MAX_RECORD_BYTES:
                raise AuthError(
                    f"record {self._seq_in} claims {length} bytes (allowed 1..{MAX_RECORD_BYTES})"
                )
            end = _LEN.size + length + TAG_BYTES
            if len(self._buffer) < end:
                break
            first = self._seq_in == 0
            header = bytes(self._buffer[: _LEN.size])
            payload = bytes(self._buffer[_LEN.size : _LEN.size + length])
            tag = bytes(self._buffer[_LEN.size + length : end])
            expected = self._tag(self._key_in, self._seq_in, header, payload)
            if not hmac.compare_digest(tag, expected):
                what = "wrong pre-shared key?" if self._seq_in == 0 else "altered or replayed"
                raise AuthError(
                    f"record {self._seq_in} from the peer failed authentication ({what})"
                )
            del self._buffer[:end]
            self._seq_in += 1
            if first:
                if payload != CONFIRMATION:
                    raise AuthError("the peer's record 0 is not colonet's key confirmation")
                self._confirmed = True
                continue
            out += payload
        return bytes(out)
