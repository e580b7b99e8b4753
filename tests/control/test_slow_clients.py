"""A control client that does not read its replies never stalls the loop.

The server shares one loop with the filters (or an engine's control
thread): a blocking reply would starve everything else, as it once starved
a primary's heartbeats into a spurious failover (issue 15 item 6). Real
unix sockets, in process; no root.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from colonet.control.protocol import CommitRequest, Request
from colonet.control.server import ControlServer
from tests.control.raw import raw_request
from tests.control.slow import STATUS, Flooder, read_until_closed


@dataclass(frozen=True)
class Blob:
    """A reply of `size` bytes, to fill socket buffers quickly."""

    size: int

    def to_json(self) -> dict[str, Any]:
        return {"blob": "x" * self.size}


def handler(request: Request) -> Blob:
    # A commit of epoch N answers N KiB: the tests pick reply sizes this way.
    if isinstance(request, CommitRequest) and request.epoch is not None:
        return Blob(request.epoch * 1024)
    return Blob(2048)


@contextlib.contextmanager
def serving(tmp_path, **options: Any) -> Iterator[ControlServer]:  # type: ignore[no-untyped-def]
    """A server on its own loop, swept now and then as its owners do."""
    selector = selectors.DefaultSelector()
    srv = ControlServer(str(tmp_path / "ctl.sock"), handler, **options)
    srv.open(selector)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in selector.select(0.05):
                key.data()
            srv.sweep()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        stop.set()
        thread.join(5)
        srv.close()
        selector.close()


def round_trips(path: str, count: int, give_up_s: float = 1.0) -> list[float]:
    """Seconds each of `count` status requests took; stops after a slow one."""
    took: list[float] = []
    while len(took) < count and (not took or took[-1] < give_up_s):
        start = time.monotonic()
        assert raw_request(path, {"op": "status"}, timeout_s=10)["blob"]
        took.append(time.monotonic() - start)
    return took


def test_clients_that_never_read_do_not_delay_another(tmp_path) -> None:
    with serving(tmp_path) as srv, Flooder(srv.path), Flooder(srv.path):
        time.sleep(0.3)  # both have filled their socket buffers by now
        took = round_trips(srv.path, 40)
    # The old server blocked up to 2 s in a reply to each flooder.
    assert statistics.median(took) < 0.01, took
    assert max(took) < 0.1, took


def test_a_client_that_stops_reading_is_dropped_and_the_server_goes_on(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="colonet.control.server")
    with serving(tmp_path, stall_timeout_s=0.3) as srv:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(srv.path)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.send(STATUS * 1000)
        deadline = time.monotonic() + 3  # nothing read for longer than the stall timeout
        while not srv.dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (srv.dropped, srv.connections) == (1, 0)
        assert read_until_closed(sock, 5) < 5
        sock.close()
        assert round_trips(srv.path, 3)
    assert "has not read its replies for" in caplog.text
    assert "pid" in caplog.text


def test_a_client_with_too_many_reply_bytes_queued_is_dropped_at_once(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="colonet.control.server")
    with serving(tmp_path) as srv:  # 1 MiB bound, 10 s stall timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(srv.path)
        sock.sendall(b'{"op": "commit", "epoch": 4096}\n')  # a 4 MiB reply
        deadline = time.monotonic() + 2  # well before the stall timeout
        while not srv.dropped and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (srv.dropped, srv.connections) == (1, 0)
        assert read_until_closed(sock, 5) < 5  # what the kernel took, then the end
        sock.close()
        assert round_trips(srv.path, 3)
    assert "bytes of replies queued unread (limit 1048576)" in caplog.text


def test_connections_beyond_the_cap_are_refused_with_a_reason(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="colonet.control.server")
    with serving(tmp_path) as srv:
        idle = []
        for _ in range(64):  # the default cap
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(srv.path)
            idle.append(sock)
        deadline = time.monotonic() + 5
        while srv.connections < 64 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.settimeout(5)
        extra.connect(srv.path)
        reply = json.loads(extra.makefile("rb").readline())
        extra.close()
        assert reply["ok"] is False and reply["error"]["kind"] == "ServerBusy"
        assert "at most 64 connections" in reply["error"]["message"]
        assert srv.path in reply["error"]["message"]
        assert srv.busy == 1
        idle.pop().close()
        deadline = time.monotonic() + 5
        while srv.connections > 63 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert round_trips(srv.path, 1)  # a slot freed: served again
        for sock in idle:
            sock.close()
    assert "at most 64 connections" in caplog.text


def test_pipelined_requests_are_answered_in_order_after_a_half_close(tmp_path) -> None:
    with serving(tmp_path) as srv:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(srv.path)
        lines = [f'{{"op": "commit", "epoch": {n}}}\n'.encode() for n in range(1, 101)]
        sock.sendall(b"".join(lines))
        sock.shutdown(socket.SHUT_WR)
        replies = sock.makefile("rb").read().splitlines()
        sock.close()
    assert [len(json.loads(r)["result"]["blob"]) for r in replies] == [
        n * 1024 for n in range(1, 101)
    ]


def test_an_overlong_request_is_answered_then_closed(tmp_path) -> None:
    with serving(tmp_path) as srv:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(srv.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b" " * (70 * 1024))
        reply = json.loads(sock.makefile("rb").readline())
        assert "without a newline; closing" in reply["error"]["message"]
        assert read_until_closed(sock, 5) < 5
        sock.close()
        assert round_trips(srv.path, 1)


def test_the_server_keeps_no_fd_of_a_dropped_client(tmp_path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with serving(tmp_path, stall_timeout_s=0.2) as srv:
        for _ in range(5):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(srv.path)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.send(STATUS * 1000)
            sock.close()
        deadline = time.monotonic() + 5
        while srv.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.connections == 0
    assert len(os.listdir("/proc/self/fd")) <= before
