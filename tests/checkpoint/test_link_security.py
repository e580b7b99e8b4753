"""Replication link security end to end, on loopback: who is let in, who is
refused and why, and the warning when nothing protects the link."""

from __future__ import annotations

import socket
import subprocess

import pytest

from colonet.demo.actors import EventProcess
from tests.netns.harness import colonet_argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    other = tmp_path_factory.mktemp("other")
    for folder in (out / "k", other / "k"):
        done = subprocess.run(
            colonet_argv("keys", "--out", str(folder), "--tls"), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    return out / "k", other / "k"


class Pair:
    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.port = _free_port()
        self.procs: list[EventProcess] = []
        request.addfinalizer(self.close)

    def secondary(self, *security: str) -> EventProcess:
        proc = EventProcess.spawn(
            None, "secondary", "--listen", f"127.0.0.1:{self.port}", "--no-takeover", *security
        )
        self.procs.append(proc)
        assert proc.wait_for("listening", 30)
        return proc

    def primary(self, *security: str, duration: float = 1.5) -> subprocess.CompletedProcess:
        return subprocess.run(
            colonet_argv(
                "primary",
                "--peer",
                f"127.0.0.1:{self.port}",
                "--guest-ip",
                "127.0.0.1",
                "--guest-port",
                "0",
                "--checkpoint-delay-ms",
                "50",
                "--duration",
                str(duration),
                "--json",
                *security,
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def pair(request):
    return Pair(request)


def _psk(folder) -> list[str]:
    return ["--psk-file", str(folder / "psk")]


def _tls(folder, end: str) -> list[str]:
    return [
        "--tls-cert",
        str(folder / f"{end}.pem"),
        "--tls-key",
        str(folder / f"{end}.key"),
        "--tls-ca",
        str(folder / "ca.pem"),
    ]


def test_psk_peers_replicate_without_a_warning(pair, keys):
    secondary = pair.secondary(*_psk(keys[0]))
    done = pair.primary(*_psk(keys[0]))
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr
    assert secondary.wait_for("exit", 10)["reason"] == "shutdown"
    assert len(secondary.of("applied")) >= 2


def test_a_wrong_key_is_refused_before_anything_is_staged(pair, keys):
    secondary = pair.secondary(*_psk(keys[0]))
    wrong = pair.primary(*_psk(keys[1]))
    assert wrong.returncode == 9, wrong.stderr
    assert "wrong pre-shared key" in wrong.stderr
    refused = secondary.wait_for("refused", 10)
    assert refused is not None and "wrong pre-shared key" in refused["reason"]
    assert not secondary.of("applied")
    # The secondary is still there for the real primary.
    assert pair.primary(*_psk(keys[0])).returncode == 0
    assert secondary.wait_for("applied", 10) is not None


def test_a_peer_without_a_key_is_refused_and_warned(pair, keys):
    secondary = pair.secondary(*_psk(keys[0]))
    plain = pair.primary(duration=1.0)
    assert "neither authenticated nor encrypted" in plain.stderr
    refused = secondary.wait_for("refused", 10)
    assert refused is not None and "without the pre-shared key" in refused["reason"]
    assert not secondary.of("applied")


def test_tls_peers_with_certificates_from_the_ca_replicate(pair, keys):
    secondary = pair.secondary(*_tls(keys[0], "secondary"))
    done = pair.primary(*_tls(keys[0], "primary"))
    assert done.returncode == 0, done.stderr
    assert secondary.wait_for("exit", 10)["reason"] == "shutdown"
    assert len(secondary.of("applied")) >= 2


def test_tls_peer_from_another_ca_is_refused(pair, keys):
    secondary = pair.secondary(*_tls(keys[0], "secondary"))
    stranger = pair.primary(*_tls(keys[1], "primary"))
    assert stranger.returncode != 0
    refused = secondary.wait_for("refused", 10)
    assert refused is not None and "TLS handshake with the peer failed" in refused["reason"]
    assert not secondary.of("applied")


def test_half_a_tls_configuration_is_a_usage_error(pair, keys):
    done = subprocess.run(
        colonet_argv("secondary", "--listen", "127.0.0.1:9", "--tls-cert", str(keys[0] / "ca.pem")),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "TLS needs all three of --tls-cert, --tls-key and --tls-ca" in done.stderr


def test_keys_are_private_and_never_overwritten(keys):
    folder = keys[0]
    for name in ("psk", "primary.key", "secondary.key"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    done = subprocess.run(
        colonet_argv("keys", "--out", str(folder)), capture_output=True, text=True
    )
    assert done.returncode == 2 and "never overwritten" in done.stderr
