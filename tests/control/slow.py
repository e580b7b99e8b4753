"""Control clients that misbehave: they send requests and never read replies."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

STATUS = b'{"op": "status"}\n'


class Flooder:
    """Sends status requests as fast as the socket takes them; never reads.

    Reconnects when dropped, so it keeps hammering for as long as it runs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flooder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        burst = STATUS * 1000
        while not self._stop.is_set():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                sock.setblocking(False)
                while not self._stop.is_set():
                    try:
                        sock.send(burst)
                    except BlockingIOError:
                        time.sleep(0.002)
            except OSError:
                self.dropped += 1
                time.sleep(0.01)
            finally:
                sock.close()


def read_until_closed(sock: socket.socket, timeout_s: float) -> float:
    """Seconds until the server closed `sock` (its queued replies read first)."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(1 << 20):
            pass
    return time.monotonic() - start
