"""The primary and secondary nodes in one process, over loopback, with the
embedded guest and no netdevs: orchestration without root or namespaces."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from colonet.checkpoint.auth import PskSession, load_psk
from colonet.checkpoint.keys import make_psk, make_tls
from colonet.checkpoint.link_security import SecurityFiles
from colonet.checkpoint.messages import HelloReceived
from colonet.checkpoint.protocol import PrimaryProtocol
from colonet.checkpoint.transport import Channel
from colonet.control.client import EngineClient
from colonet.control.protocol import RemoteError
from colonet.errors import UsageError
from colonet.guest.registry import GuestSettings
from colonet.node.config import NodeConfig, PrimaryConfig, SecondaryConfig
from colonet.node.events import EventSink
from colonet.node.primary import PrimaryNode
from colonet.node.secondary import SecondaryNode


@dataclass
class Running:
    node: PrimaryNode | SecondaryNode
    thread: threading.Thread
    result: list[int | BaseException] = field(default_factory=list)

    def join(self, timeout_s: float = 15) -> int | BaseException:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"{type(self.node).__name__} did not stop"
        return self.result[0]


def _start(node: PrimaryNode | SecondaryNode) -> Running:
    running = Running(node, threading.Thread(target=lambda: None, daemon=True))

    def run() -> None:
        try:
            running.result.append(node.run())
        except BaseException as exc:  # reported by join()
            running.result.append(exc)

    running.thread = threading.Thread(target=run, daemon=True)
    running.thread.start()
    return running


def _wait(predicate, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _events(sink: EventSink, kind: str) -> list[dict]:
    return [e for e in sink.history if e.get("event") == kind]


@pytest.fixture
def pair(tmp_path) -> Iterator[tuple[Running, Running, str, str]]:  # type: ignore[no-untyped-def]
    psk = make_psk(str(tmp_path / "keys"))
    guest = GuestSettings(ram_mib=1, service_ip="127.0.0.1", service_port=0)
    sockets = str(tmp_path / "p.sock"), str(tmp_path / "s.sock")

    def node(control: str) -> NodeConfig:
        return NodeConfig(
            guest=guest,
            heartbeat_timeout_ms=300,
            control_socket=control,
            ram_digests=True,
            security=SecurityFiles(psk_file=psk),
        )

    devnull = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    secondary = SecondaryNode(
        SecondaryConfig(node(sockets[1]), listen=("127.0.0.1", 0)), EventSink(True, devnull)
    )
    s = _start(secondary)
    assert secondary.listening.wait(5)
    assert secondary.address is not None
    primary = PrimaryNode(
        PrimaryConfig(node(sockets[0]), peer=secondary.address, checkpoint_delay_ms=20),
        EventSink(True, devnull),
    )
    p = _start(primary)
    try:
        yield p, s, *sockets
    finally:
        primary.stop()
        secondary.stop()
        for running in (p, s):
            running.thread.join(10)
        devnull.close()


def test_checkpoints_flow_and_the_secondary_holds_the_primarys_ram(pair) -> None:
    p, s, p_sock, s_sock = pair
    _wait(lambda: len(_events(s.node.events, "applied")) >= 5)
    checkpoints = {e["epoch"]: e["ram_sha256"] for e in _events(p.node.events, "checkpoint")}
    applied = {e["epoch"]: e["ram_sha256"] for e in _events(s.node.events, "applied")}
    # The secondary reports an apply before the primary hears it was loaded.
    both = sorted(set(checkpoints) & set(applied))
    assert len(both) >= 4
    assert all(checkpoints[n] == applied[n] for n in both)
    status = EngineClient(p_sock).status()
    assert status.role == "primary" and status.checkpoints >= 5
    assert status.last_checkpoint is not None and status.filters is None
    assert EngineClient(s_sock).status().last_applied >= 5
    p.node.stop()  # an orderly stop: the secondary hears GUEST_SHUTDOWN
    assert p.join() == 0
    assert s.join() == 0
    assert _events(s.node.events, "exit")[0]["reason"] == "shutdown"
    assert _events(s.node.events, "failover") == []


def test_a_manual_failover_on_the_secondary_fences_the_primary(pair) -> None:
    p, s, p_sock, s_sock = pair
    _wait(lambda: len(_events(s.node.events, "applied")) >= 3)
    accepted = EngineClient(s_sock).request_failover()
    assert (accepted.accepted, accepted.mode) == (True, "secondary")
    _wait(lambda: _events(s.node.events, "failover"))
    taken = _events(s.node.events, "failover")[0]
    assert (taken["mode"], taken["reason"], taken["state"]) == ("secondary", "request", "completed")
    assert "guest_counter" in taken  # the embedded guest's takeover details
    assert s.node.guest is not None
    assert p.join() == 0  # it read the takeover notice and stood down
    fenced = _events(p.node.events, "failover")[0]
    assert fenced["mode"] == "fenced"
    assert EngineClient(s_sock).status().failover["state"] == "completed"


def test_a_manual_failover_on_the_primary_goes_on_alone(pair) -> None:
    p, s, p_sock, s_sock = pair
    _wait(lambda: len(_events(p.node.events, "checkpoint")) >= 3)
    accepted = EngineClient(p_sock).request_failover()
    assert (accepted.accepted, accepted.mode) == (True, "primary")
    _wait(lambda: _events(p.node.events, "failover"))
    alone = _events(p.node.events, "failover")[0]
    assert (alone["mode"], alone["reason"]) == ("primary", "request")
    assert s.join() == 0  # told to stand down: no takeover
    assert _events(s.node.events, "failover") == []
    assert EngineClient(p_sock).status().failover["mode"] == "primary"


@pytest.mark.parametrize(
    ("kw", "fault"),
    [
        ({"heartbeat_timeout_ms": 0}, "--heartbeat-timeout-ms 0 must be between"),
        ({"heartbeat_timeout_ms": 40_000}, "--heartbeat-timeout-ms 40000 must be between"),
        ({"guest": GuestSettings(ram_mib=0)}, "--ram-mib 0 must be positive"),
    ],
)
def test_node_config_names_the_bad_option(kw, fault) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=fault):
        NodeConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "fault"),
    [
        ({"checkpoint_delay_ms": -1}, "--checkpoint-delay-ms -1 must be positive"),
        ({"release_at": "sent"}, "--release-at must be received or loaded"),
        ({"duration_s": 0}, "--duration 0 must be positive"),
    ],
)
def test_primary_config_names_the_bad_option(kw, fault) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=fault):
        PrimaryConfig(NodeConfig(), peer=("127.0.0.1", 1), **kw)


def test_a_primary_without_a_secondary_says_where_it_looked(tmp_path) -> None:
    from colonet.checkpoint.transport import PeerLost

    node = PrimaryNode(
        PrimaryConfig(
            NodeConfig(guest=GuestSettings(ram_mib=1, service_ip="127.0.0.1", service_port=0)),
            peer=("127.0.0.1", 1),
        ),
        EventSink(True, open(os.devnull, "w")),  # noqa: SIM115
    )
    with pytest.raises(PeerLost, match="cannot reach the secondary at 127.0.0.1:1"):
        node.run()


def _secondary_alone(tmp_path, psk: str | None) -> Running:  # type: ignore[no-untyped-def]
    devnull = open(os.devnull, "w")  # noqa: SIM115 (a daemon thread's sink)
    node = SecondaryNode(
        SecondaryConfig(
            NodeConfig(
                guest=GuestSettings(ram_mib=1, service_ip="127.0.0.1", service_port=0),
                heartbeat_timeout_ms=300,
                security=SecurityFiles(psk_file=psk),
            ),
            listen=("127.0.0.1", 0),
        ),
        EventSink(True, devnull),
    )
    running = _start(node)
    assert node.listening.wait(5)
    return running


def _primary_for(secondary: SecondaryNode, psk: str | None) -> Running:
    assert secondary.address is not None
    guest = GuestSettings(ram_mib=1, service_ip="127.0.0.1", service_port=0)
    return _start(
        PrimaryNode(
            PrimaryConfig(
                NodeConfig(guest=guest, heartbeat_timeout_ms=300, security=SecurityFiles(psk)),
                peer=secondary.address,
                checkpoint_delay_ms=20,
            ),
            EventSink(True, open(os.devnull, "w")),  # noqa: SIM115
        )
    )


@pytest.mark.parametrize("keyed", [False, True], ids=["no-keys", "psk"])
def test_garbage_before_the_first_checkpoint_does_not_end_the_secondary(tmp_path, keyed) -> None:
    """Issue 15 item 4: a port scan or a peer sending garbage must not kill a
    secondary that has nothing yet: it listens again for the real primary."""
    psk = make_psk(str(tmp_path / "keys")) if keyed else None
    s = _secondary_alone(tmp_path, psk)
    node = s.node
    assert isinstance(node, SecondaryNode) and node.address is not None
    for junk in (b"", b"GET / HTTP/1.0\r\n\r\n", os.urandom(64)):
        with socket.create_connection(node.address) as scan:
            scan.sendall(junk)
    p = _primary_for(node, psk)
    try:
        _wait(lambda: len(_events(node.events, "applied")) >= 3)
        assert s.thread.is_alive()
    finally:
        p.node.stop()
        p.join()
        node.stop()
        s.join()
    if not keyed:  # with a key the junk is refused before it reaches the protocol
        assert len(_events(node.events, "session-ended")) >= 2


def test_a_primary_lost_during_its_full_sync_leaves_the_secondary_listening(tmp_path) -> None:
    psk = make_psk(str(tmp_path / "keys"))
    s = _secondary_alone(tmp_path, psk)
    node = s.node
    assert isinstance(node, SecondaryNode) and node.address is not None
    # A primary that says HELLO and starts checkpoint 1, then dies.
    sock = socket.create_connection(node.address)
    channel = Channel(sock, PrimaryProtocol(), auth=PskSession("primary", load_psk(psk)))
    channel.handshake()
    channel.proto.send_hello(4096, 256, "doomed")
    channel.flush()
    assert isinstance(channel.next_event(5), HelloReceived)
    channel.proto.request_checkpoint(1)
    channel.flush()
    sock.close()
    _wait(lambda: _events(node.events, "session-ended"))
    assert _events(node.events, "session-ended")[0]["reason"] in ("closed", "error")
    p = _primary_for(node, psk)
    try:
        _wait(lambda: _events(node.events, "applied"))
    finally:
        p.node.stop()
        p.join()
        node.stop()
        s.join()


@pytest.mark.parametrize("mode", ["psk", "tls"])
def test_idle_connections_do_not_lock_the_primary_out(tmp_path, mode) -> None:
    """Issue 15 item 5: connections that never say a word (from anyone) must
    not keep the real primary from proving itself and replicating."""
    keys = str(tmp_path / "keys")
    psk = make_psk(keys)
    if mode == "tls":
        make_tls(keys, 1)
        files = {
            end: SecurityFiles(None, f"{keys}/{end}.pem", f"{keys}/{end}.key", f"{keys}/ca.pem")
            for end in ("primary", "secondary")
        }
    else:
        files = {end: SecurityFiles(psk_file=psk) for end in ("primary", "secondary")}
    devnull = open(os.devnull, "w")  # noqa: SIM115
    guest = GuestSettings(ram_mib=1, service_ip="127.0.0.1", service_port=0)
    secondary = SecondaryNode(
        SecondaryConfig(
            NodeConfig(guest=guest, heartbeat_timeout_ms=300, security=files["secondary"]),
            listen=("127.0.0.1", 0),
        ),
        EventSink(True, devnull),
    )
    s = _start(secondary)
    assert secondary.listening.wait(5) and secondary.address is not None
    idle = []
    for source in ("127.0.0.2",) * 6 + ("127.0.0.3",) * 2:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(secondary.address)
        idle.append(sock)
    started = time.monotonic()
    primary = PrimaryNode(
        PrimaryConfig(
            NodeConfig(guest=guest, heartbeat_timeout_ms=300, security=files["primary"]),
            peer=secondary.address,
            checkpoint_delay_ms=20,
        ),
        EventSink(True, devnull),
    )
    p = _start(primary)
    try:
        _wait(lambda: _events(secondary.events, "applied"), timeout_s=5)
        assert time.monotonic() - started < 2.0  # not behind the idle ones' deadlines
        # Two from 127.0.0.2 were refused at once (four handshakes per address).
        refused = [e for e in _events(secondary.events, "refused") if e["peer"][0] == "127.0.0.2"]
        assert any("too many handshakes" in e["reason"] for e in refused)
    finally:
        for sock in idle:
            sock.close()
        primary.stop()
        p.join()
        secondary.stop()
        s.join()
        devnull.close()


def test_a_primary_without_the_key_fails_instead_of_going_on_alone(tmp_path) -> None:
    """Issue 15 item 10: refused by a PSK secondary, a keyless primary was
    never protected: an error (exit 7), not "going on alone" with exit 0."""
    from colonet.node.primary import NeverProtected

    psk = make_psk(str(tmp_path / "keys"))
    s = _secondary_alone(tmp_path, psk)
    node = s.node
    assert isinstance(node, SecondaryNode)
    p = _primary_for(node, None)
    outcome = p.join()
    assert isinstance(outcome, NeverProtected) and outcome.exit_code == 7
    assert "does it expect a key?" in str(outcome)
    assert isinstance(p.node, PrimaryNode) and p.node.failover_event is None
    _wait(lambda: _events(node.events, "refused"))
    assert s.thread.is_alive()  # still waiting for its real primary
    node.stop()
    assert s.join() == 0


def test_a_primary_refuses_checkpoint_and_failover_requests_after_failover(pair) -> None:
    p, s, p_sock, s_sock = pair
    _wait(lambda: len(_events(p.node.events, "checkpoint")) >= 2)
    EngineClient(p_sock).request_failover()
    _wait(lambda: _events(p.node.events, "failover"))
    with pytest.raises(RemoteError, match="cannot checkpoint: failover already completed"):
        EngineClient(p_sock).request_checkpoint()
    with pytest.raises(RemoteError, match="cannot fail over: failover already completed"):
        EngineClient(p_sock).request_failover()
