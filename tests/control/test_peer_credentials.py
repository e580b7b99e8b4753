"""The control socket answers only root and its own user, whatever its mode."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

import pytest

from colonet.control.server import ControlServer
from tests.control.raw import raw_request as request

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@dataclass(frozen=True)
class OpEcho:
    op: str

    def to_json(self) -> dict[str, str]:
        return {"op": self.op}


@pytest.fixture
def server():
    # Not under pytest's tmp_path: its parents are private to root, and the
    # refusal test needs another user to reach the socket file.
    folder = tempfile.mkdtemp(prefix="cnctl")
    path = os.path.join(folder, "ctl.sock")
    selector = selectors.DefaultSelector()
    srv = ControlServer(path, lambda req: OpEcho(req.op))
    srv.open(selector)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in selector.select(0.05):
                key.data()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield srv
    stop.set()
    thread.join(2)
    srv.close()
    selector.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_the_socket_is_private_from_the_start(server):
    assert os.stat(server.path).st_mode & 0o777 == 0o600
    assert request(server.path, {"op": "status"}) == {"op": "status"}


def test_another_user_is_refused_even_if_the_mode_was_loosened(server):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root, and under CI it must run")
        pytest.skip("needs root to connect as another user")
    os.chmod(os.path.dirname(server.path), 0o755)
    os.chmod(server.path, 0o666)  # an operator's mistake
    # The server may answer and close before the request is even sent.
    probe = "\n".join(
        [
            "import contextlib, socket, sys",
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            "with contextlib.suppress(BrokenPipeError, ConnectionResetError):",
            "    s.sendall(b'{}\\n')",
            "print(s.makefile().readline())",
        ]
    )
    done = subprocess.run(
        [*NOBODY, sys.executable, "-c", probe, server.path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"] is False and reply["error"]["kind"] == "PeerRefused"
    assert "uid 65534 may not use this control socket" in reply["error"]["message"]
    assert server.refused == 1
    assert request(server.path, {"op": "status"}) == {"op": "status"}  # root still served
