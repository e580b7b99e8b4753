"""Where `colonet demo` leaves its run: the event log and its timeline.

The verdict is the point of a run and is known only at its end. So the out
dir is checked before anything starts (a bad one fails at once, exit 2,
naming it), and a write that still fails afterwards (the disk filled, the
dir went away) is reported next to the verdict, never instead of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from colonet.errors import UsageError

log = logging.getLogger(__name__)

RUN_LOG, TIMELINE = "run.jsonl", "timeline.png"
# A run writes a few hundred KiB; a dir that cannot take this much is full.
PROBE_BYTES = 64 * 1024


def prepare_out_dir(out_dir: str) -> None:
    """Create `out_dir` if needed and prove a file can be written in it."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"--out-dir {out_dir} exists and is not a directory") from None
    except OSError as exc:
        raise UsageError(f"--out-dir {out_dir} cannot be created: {exc.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".colonet-probe-", dir=out_dir)
    except OSError as exc:
        raise UsageError(f"--out-dir {out_dir} is not writable: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())  # a full disk may only say so here
    except OSError as exc:
        raise UsageError(f"--out-dir {out_dir} cannot take a run's files: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def save_run(out_dir: str, events: list[dict[str, Any]], summary: dict[str, Any]) -> dict:
    """Write the run log and its timeline; what was written, by key (`run_log`,
    `timeline`), and `write_error` if something could not be, never raised."""
    saved: dict[str, str] = {}
    try:
        ordered = sorted(events, key=lambda e: e["t"])
        ordered.append({"t": time.time(), "source": "demo", "event": "summary", **summary})
        saved["run_log"] = _write_log(out_dir, ordered)
        saved["timeline"] = _draw(out_dir, ordered)
    except Exception as exc:  # the verdict outranks any failure to keep its record
        log.debug("saving the run failed", exc_info=True)
        what = "the timeline" if "run_log" in saved else "the run log"
        saved["write_error"] = f"could not write {what} in {out_dir}: {_reason(exc)}"
    return saved


def _write_log(out_dir: str, ordered: list[dict[str, Any]]) -> str:
    def write(path: str) -> None:
        with open(path, "w") as f:
            for event in ordered:
                f.write(json.dumps(event) + "\n")

    os.makedirs(out_dir, exist_ok=True)
    return _replace(out_dir, RUN_LOG, write)


def _draw(out_dir: str, ordered: list[dict[str, Any]]) -> str:
    from colonet.demo.report import render  # matplotlib: only when drawing

    return _replace(out_dir, TIMELINE, lambda path: render(ordered, path))


def _replace(out_dir: str, name: str, write: Callable[[str], None]) -> str:
    """Write `name` in `out_dir` through a new temporary file renamed over it:
    a symlink planted at `name` is replaced, never written through, and a
    reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=os.path.splitext(name)[1], dir=out_dir)
    os.close(fd)
    try:
        write(tmp)
        path = os.path.join(out_dir, name)
        os.replace(tmp, path)
        return path
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
