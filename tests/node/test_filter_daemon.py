"""The filter process's loop and control socket, in process, on backend
doubles; and the `colonet filter ...` commands against it. No root."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from scapy.all import Ether, rdpcap

from colonet.buffer.epoch_queue import BufferLimits
from colonet.buffer.filter import Filter
from colonet.buffer.filter_set import FilterSet
from colonet.buffer.hooks import CommitResult, EpochMismatchError, FailoverResult, FailoverRole
from colonet.cli.main import main
from colonet.control.client import FilterClient
from colonet.control.protocol import RemoteError
from colonet.node.filter_daemon import FilterDaemon
from tests.buffer.test_filter import FakeBackend
from tests.control.slow import STATUS, Flooder, read_until_closed

FRAME = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / (b"x" * 50))


@pytest.fixture
def daemon(tmp_path) -> Iterator[tuple[FilterDaemon, list[FakeBackend], str]]:  # type: ignore[no-untyped-def]
    pipes = [os.pipe() for _ in range(2)]  # real fds for the selector
    fakes = [FakeBackend(f"fake{i}", fd=r) for i, (r, _) in enumerate(pipes)]
    filters = [Filter(f"tap{i}", fake, BufferLimits()) for i, fake in enumerate(fakes)]
    for f in filters:
        f.start()
    path = str(tmp_path / "ctl.sock")
    d = FilterDaemon(FilterSet(filters), path)
    d.open()
    thread = threading.Thread(target=lambda: d.run(handle_signals=False), daemon=True)
    thread.start()
    try:
        yield d, fakes, path
    finally:
        d.stop_soon()
        thread.join(5)
        d.close()
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_the_hooks_over_the_socket_are_typed(daemon) -> None:
    d, fakes, path = daemon
    client = FilterClient(path)
    fakes[0].emit(FRAME, len(FRAME))
    fakes[1].emit(FRAME, len(FRAME))
    assert client.begin_checkpoint(1) == 1
    fakes[0].emit(FRAME, len(FRAME))  # epoch 2
    assert client.commit(1) == CommitResult(1, 2)
    status = client.status()
    assert (status.open_epoch, status.last_sealed, status.last_released) == (2, 1, 1)
    assert [n.queue.held_packets for n in status.netdevs] == [1, 0]
    assert client.failover(FailoverRole.PRIMARY) == FailoverResult(FailoverRole.PRIMARY, 1)


def test_a_checkpoint_of_another_epoch_is_refused_over_the_socket(daemon) -> None:
    _, fakes, path = daemon
    client = FilterClient(path)
    fakes[0].emit(FRAME, len(FRAME))
    with pytest.raises(RemoteError, match="asked to seal epoch 5") as info:
        client.begin_checkpoint(5)
    assert info.value.kind == EpochMismatchError.__name__
    assert client.status().last_sealed == 0  # nothing sealed, nothing releasable
    with pytest.raises(RemoteError, match="no epoch is sealed yet"):
        client.commit(1)


def test_a_filter_failover_needs_a_role(daemon) -> None:
    from tests.control.raw import raw_request

    with pytest.raises(RemoteError, match="needs role primary or secondary"):
        raw_request(daemon[2], {"op": "failover"})


def test_dump_writes_the_held_frames(daemon, tmp_path) -> None:
    _, fakes, path = daemon
    fakes[0].emit(FRAME, len(FRAME))
    out = str(tmp_path / "held.pcapng")
    result = FilterClient(path).dump(out)
    assert (result.packets, dict(result.per_netdev)) == (1, {"tap0": 1})
    assert [bytes(p) for p in rdpcap(out)] == [FRAME]


def test_dump_never_overwrites_a_file_or_follows_a_symlink(daemon, tmp_path, capsys) -> None:
    _, fakes, path = daemon
    fakes[0].emit(FRAME, len(FRAME))
    old = tmp_path / "old.pcapng"
    old.write_bytes(b"an earlier capture")
    old.chmod(0o644)
    link = tmp_path / "link.pcapng"
    link.symlink_to(old)
    for out in (old, link):
        assert main(["filter", "dump", "--socket", path, "--out", str(out)]) == 2
        assert f"{out} exists; colonet never overwrites a capture" in capsys.readouterr().err
    assert old.read_bytes() == b"an earlier capture"
    assert os.stat(old).st_mode & 0o777 == 0o644
    new = tmp_path / "new.pcapng"
    assert main(["filter", "dump", "--socket", path, "--out", str(new)]) == 0
    assert os.stat(new).st_mode & 0o777 == 0o600
    assert [bytes(p) for p in rdpcap(str(new))] == [FRAME]


# -- the commands a person types ---------------------------------------------


def test_filter_commands_print_for_people_and_for_scripts(daemon, capsys) -> None:
    _, fakes, path = daemon
    fakes[1].emit(FRAME, len(FRAME))
    assert main(["filter", "checkpoint", "--socket", path]) == 0
    assert capsys.readouterr().out == "1\n"
    assert main(["filter", "status", "--socket", path]) == 0
    out = capsys.readouterr().out
    assert "open epoch 2, last sealed 1, last released 0" in out
    assert "epoch 1      sealed          1 pkts" in out
    assert main(["filter", "commit", "--socket", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "result": {"epoch": 1, "released_packets": 1},
    }
    assert main(["filter", "failover", "--socket", path, "--role", "secondary"]) == 0
    assert "0 held packet(s) discarded" in capsys.readouterr().out


def test_a_refused_command_exits_with_the_servers_code(daemon, capsys) -> None:
    _, _, path = daemon
    assert main(["filter", "commit", "--socket", path, "9", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["exit_code"] == 2 and "epoch 9 does not exist" in error["message"]


def test_a_command_without_a_server_names_the_socket(tmp_path, capsys) -> None:
    path = str(tmp_path / "none.sock")
    assert main(["filter", "status", "--socket", path]) == 4
    assert f"no control socket at {path}" in capsys.readouterr().err


# -- clients that do not read their replies (issue 15 item 6) ----------------


def test_checkpoints_stay_quick_while_clients_that_never_read_hammer_status(daemon) -> None:
    _, _, path = daemon
    client = FilterClient(path)
    took = []
    with Flooder(path), Flooder(path):
        time.sleep(0.3)  # both have filled their socket buffers by now
        for _ in range(30):
            start = time.monotonic()
            epoch = client.begin_checkpoint()
            assert client.commit(epoch).epoch == epoch
            took.append(time.monotonic() - start)
            if took[-1] > 0.25:
                break  # failed already; do not wait out 30 slow rounds
    # The old loop blocked 2 s in a reply to each flooder: an engine waiting
    # for its commit missed heartbeats and its secondary took over.
    assert max(took) < 0.25, took


def test_the_daemon_drops_a_client_that_stopped_reading_on_its_own(daemon, caplog) -> None:
    d, _, path = daemon
    assert d.control is not None
    d.control.stall_timeout_s = 0.3
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.setblocking(False)
    try:
        while True:
            sock.send(STATUS * 1000)
    except BlockingIOError:
        pass
    # Nothing else happens on the socket: the daemon's own timer drops it.
    deadline = time.monotonic() + 3
    while not d.control.dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (d.control.dropped, d.control.connections) == (1, 0)
    assert read_until_closed(sock, 5) < 5  # queued replies, then the end
    sock.close()
    assert "has not read its replies for" in caplog.text
    assert FilterClient(path).status().open_epoch == 1


# -- steering lost, and stop signals ------------------------------------------


def test_a_steering_loss_is_an_event_line_an_error_and_metrics(tmp_path, caplog) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from colonet.node.events import EventSink
    from colonet.node.metrics import FilterCollector

    fakes = [FakeBackend(f"fake{i}", fd=100 + i) for i in range(2)]
    filters = [Filter(f"tap{i}", fake, BufferLimits()) for i, fake in enumerate(fakes)]
    for f in filters:
        f.start()
    out = io.StringIO()
    d = FilterDaemon(FilterSet(filters), None, EventSink(json_lines=True, out=out))
    fakes[1].missing = ["the clsact qdisc on tap1"]
    with caplog.at_level(logging.ERROR):
        d.check_steering()
        d.check_steering()  # put back meanwhile: said once
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "steering-lost" and event["netdev"] == "tap1"
    assert event["detail"] == "vanished: the clsact qdisc on tap1"
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "steering lost" in caplog.records[0].getMessage()
    registry = CollectorRegistry()
    registry.register(FilterCollector(d.status))
    text = generate_latest(registry).decode()
    assert 'colonet_filter_steering_lost{netdev="tap0"} 0.0' in text
    assert 'colonet_filter_steering_lost{netdev="tap1"} 1.0' in text
    assert 'colonet_filter_steering_losses_total{netdev="tap1"} 1.0' in text
    assert "vanished" in d.status().netdevs[1].reason


def test_the_loop_checks_the_steering_on_a_timer(daemon) -> None:
    d, fakes, path = daemon
    fakes[0].missing = ["x"]
    deadline = time.monotonic() + 2
    while not d.steering_losses and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [loss.netdev for loss in d.steering_losses] == ["tap0"]
    with pytest.raises(RemoteError, match="removed from outside colonet") as refused:
        FilterClient(path).commit()
    assert refused.value.kind == "SteeringLostError" and refused.value.exit_code == 5


def test_the_text_form_of_the_event_names_the_netdev_and_what_vanished() -> None:
    from colonet.node.events import EventSink

    fake = FakeBackend(fd=100)
    f = Filter("tap0", fake, BufferLimits())
    f.start()
    out = io.StringIO()
    d = FilterDaemon(FilterSet([f]), None, EventSink(out=out))
    fake.missing = ["colonet's bpf filter on tap0's ingress"]
    d.check_steering()
    assert out.getvalue() == (
        "colonet: tap0: steering lost (vanished: colonet's bpf filter on tap0's ingress); "
        "steering re-installed so the netdev stays closed; nothing more is released, "
        "new output is dropped\n"
    )


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_stop_signals_end_the_loop_instead_of_the_process(signum) -> None:  # type: ignore[no-untyped-def]
    r, w = os.pipe()
    try:
        f = Filter("tap0", FakeBackend(fd=r), BufferLimits())
        f.start()
        d = FilterDaemon(FilterSet([f]), None)
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signum))
        timer.start()
        started = time.monotonic()
        d.run(duration_s=10)  # the main thread: handlers installed
        assert time.monotonic() - started < 5
        assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)
    finally:
        os.close(r)
        os.close(w)
