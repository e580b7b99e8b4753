"""How the replication connection is protected: TLS, a pre-shared key, or nothing.

- TLS (stdlib `ssl`): both ends present a certificate signed by the CA they
  were given and require the other's (mutual authentication); traffic is
  encrypted. Any certificate from that CA is accepted: the CA is the trust
  boundary (host names are not checked).
- PSK: `colonet.checkpoint.auth`, per-record HMAC with per-session keys;
  integrity and identity, no confidentiality.
- none: anyone who can reach the port can send the secondary a guest, or
  pose as it; colonet says so on stderr at start.

Keys are "configured" by the options, or by COLONET_PSK_FILE in the
environment; configured keys are always used.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass, field

from colonet.checkpoint.auth import AuthError, PskSession, load_psk
from colonet.errors import UsageError

log = logging.getLogger(__name__)

UNPROTECTED_WARNING = (
    "colonet: WARNING: the replication link is neither authenticated nor encrypted: "
    "anyone who can reach it can feed the secondary a guest or pose as either end. "
    "Configure --psk-file (or COLONET_PSK_FILE) or --tls-cert/--tls-key/--tls-ca; "
    "`colonet keys` makes them."
)


@dataclass(frozen=True)
class SecurityFiles:
    """Where this end's keys are; COLONET_PSK_FILE stands in for `psk_file`."""

    psk_file: str | None = field(default_factory=lambda: os.environ.get("COLONET_PSK_FILE"))
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None


@dataclass(frozen=True)
class LinkSecurity:
    mode: str  # "tls", "psk" or "none"
    psk: bytes | None = None
    context: ssl.SSLContext | None = None

    def wrap(
        self, sock: socket.socket, *, server_side: bool, timeout_s: float = 10.0
    ) -> socket.socket:
        """TLS handshake on a connected socket (other modes: unchanged)."""
        if self.context is None:
            return sock
        try:
            sock.settimeout(timeout_s)
            return self.context.wrap_socket(sock, server_side=server_side)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise AuthError(f"TLS handshake with the peer failed: {exc}") from None

    def session(self, role: str) -> PskSession | None:
        return PskSession(role, self.psk) if self.psk is not None else None


def load_security(files: SecurityFiles, *, server_side: bool) -> LinkSecurity:
    """The link protection `files` configure (mode "none" if they name no key:
    the caller warns a person, see UNPROTECTED_WARNING)."""
    tls = (files.tls_cert, files.tls_key, files.tls_ca)
    if any(tls) and not all(tls):
        raise UsageError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    if all(tls) and files.psk_file:
        raise UsageError("choose one: --psk-file or TLS (--tls-cert/--tls-key/--tls-ca)")
    if all(tls):
        purpose = ssl.Purpose.CLIENT_AUTH if server_side else ssl.Purpose.SERVER_AUTH
        context = ssl.create_default_context(purpose, cafile=files.tls_ca)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED  # both ways: mutual authentication
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            context.load_cert_chain(files.tls_cert, files.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot load the TLS certificate or key: {exc}") from None
        return LinkSecurity("tls", context=context)
    if files.psk_file:
        return LinkSecurity("psk", psk=load_psk(files.psk_file))
    return LinkSecurity("none")
