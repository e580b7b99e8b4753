"""Constants, run parameters and small helpers every measurement shares."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS has the same value (struct timespec, 64-bit)
PAYLOAD = 64
TP_PORT, LAT_PORT, MEM_PORT, ECHO_PORT = 9101, 9102, 9103, 9104
COMMIT_PERIOD_S = 0.010
# Packets sent before waiting for the filter to hold them: a tap's queue in
# front of the relay holds ~1000 frames, a veth has no queue to overflow.
SEND_CHUNK = {"veth": 1000, "tap": 250}
BATCH_FLAG = "--no-batch-release"  # alias --no-batch-verdict (nfqueue's name)


@dataclass
class Params:
    tp_count: int
    tp_long_count: int
    tp_cap_s: float
    lat_count: int
    lat_reps: int
    mem_counts: list[int]
    rtt_n: int
    rtt_filtered_n: int
    rtt_phase_n: int
    rtt_cap_s: float
    rate: int = 0  # sender pacing in packets/s; 0 = as fast as it can


DEFAULT = Params(50_000, 200_000, 20.0, 10_000, 5, [10_000, 50_000], 2_000, 1_000, 300, 30.0)
QUICK = Params(50_000, 0, 10.0, 10_000, 3, [10_000], 500, 200, 100, 10.0)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def seq_payload(n: int) -> bytes:
    return f"seq:{n:08d}".encode().ljust(PAYLOAD, b".")


def release_label(batch: bool) -> str:
    return "batch release (default)" if batch else BATCH_FLAG


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]
