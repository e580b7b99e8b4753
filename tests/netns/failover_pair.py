"""A primary and a secondary around the failover topology, for trigger tests.

Built like `colonet demo` (switch, client, primary host with the guest,
secondary host with a standby guest NIC) but driven step by step by a test.
`close()` stops every process and removes every namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from typing import Any

from colonet.demo.actors import Client, EventProcess
from colonet.demo.consistency import Reply
from colonet.demo.run import PRIMARY_SOCKET, SECONDARY_SOCKET, DemoConfig, start_pair
from colonet.net.topology import Topology, run_prefix
from colonet.workdir import sweep_stale_workdirs
from tests.control.raw import raw_request as request


class FailoverPair:
    def __init__(
        self,
        *,
        buffered: bool = True,
        heartbeat_timeout_ms: int = 400,
        primary_args: tuple[str, ...] = (),
        period_ms: int = 50,
    ) -> None:
        self.topo = Topology(
            run_prefix(),
            link="tap",
            static_neighbours=False,
            with_secondary=True,
            standby_guest=True,
        )
        self.tmp = tempfile.mkdtemp(prefix="cnfo")
        self.primary_sock = os.path.join(self.tmp, PRIMARY_SOCKET)
        self.secondary_sock = os.path.join(self.tmp, SECONDARY_SOCKET)
        self.buffered = buffered
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.primary_args = primary_args
        self.period_ms = period_ms
        self.procs: list[EventProcess] = []
        self.client: Client | None = None

    def start(self) -> FailoverPair:
        topo = self.topo.build()
        config = DemoConfig(
            period_ms=self.period_ms,
            buffered=self.buffered,
            heartbeat_timeout_ms=self.heartbeat_timeout_ms,
            primary_args=self.primary_args,
        )
        self.secondary, self.primary = start_pair(topo, config, self.tmp, self.procs)
        self.client = Client(topo, 0.005)
        self.client.start()
        return self

    def replies_after(self, at: float) -> list[Reply]:
        assert self.client is not None
        return [r for r in self.client.replies if r.at >= at]

    def wait_replies_after(self, at: float, count: int = 20, timeout_s: float = 10) -> list[Reply]:
        deadline = time.monotonic() + timeout_s
        while len(self.replies_after(at)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.replies_after(at)

    def ask(self, which: str, op: str) -> dict[str, Any]:
        path = self.primary_sock if which == "primary" else self.secondary_sock
        return request(path, {"op": op})

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
            proc.stop()
        self.topo.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)
        sweep_stale_workdirs()  # a killed primary's dirs
