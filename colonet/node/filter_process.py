"""A primary's filters in their own process: `colonet filter run` as a child.

A separate process keeps packet handling off the engine's thread and makes
the filter fail closed on its own: it dies with its parent (PDEATHSIG), and
its kernel steering without it holds the netdev's output (docs/DESIGN.md
invariant 7).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

from colonet.control.client import FilterClient
from colonet.errors import ColonetError
from colonet.net.owner import die_with_parent
from colonet.node.config import PrimaryConfig


class FilterStartError(ColonetError):
    """`colonet filter run` refused to start; carries its reason and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class FilterProcess:
    def __init__(self, proc: subprocess.Popen, socket_path: str) -> None:
        self.proc = proc
        self.client = FilterClient(socket_path)

    @classmethod
    def start(cls, config: PrimaryConfig, socket_path: str) -> FilterProcess:
        argv = [sys.executable, "-m", "colonet", "filter", "run", "--socket", socket_path]
        argv += ["--backend", config.backend, "--json"]
        for flag, value in (
            ("--max-packets", config.max_packets),
            ("--max-bytes", config.max_bytes),
            ("--high-water", config.high_water),
        ):
            if value is not None:
                argv += [flag, str(value)]
        argv += [a for n in config.netdevs for a in ("--netdev", n)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            first = json.loads(line) if line else {}
        except ValueError:
            first = {"error": {"message": f"unexpected output {line.strip()!r}"}}
        if first.get("event") != "ready":
            cls(proc, socket_path).stop()
            error = first.get("error") or {}
            message = error.get("message") or "it exited without a word (see its error above)"
            raise FilterStartError(
                f"the filter process did not start: {message}", error.get("exit_code", 1)
            )
        return cls(proc, socket_path)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.communicate(timeout=10)
