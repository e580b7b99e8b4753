"""Is the process that installed a piece of kernel state still running?

`colonet cleanup` removes only what a dead process left, unless forced, so
it never pulls the buffering out from under a live filter.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import FrameType
from typing import Any


def owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child about to exec: be SIGKILLed when the parent dies.

    A filter process outliving a killed engine would hold the guest's
    packets with nobody to commit them; dying instead closes its netdev
    (fail-closed) until `colonet cleanup` or a new engine takes it.
    """
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def only_in_this_process(handler: Callable[[int, FrameType | None], Any]) -> Callable:
    """Wrap a signal handler so that only this process runs it.

    pyroute2 forks short-lived helpers (to enter a namespace) and stops them
    with SIGTERM. A forked child inherits our handlers; one that raises
    (KeyboardInterrupt, SystemExit) would unwind the parent's stack *in the
    child* and run its cleanups there: unlink the control socket, delete the
    namespaces. A child just exits instead.
    """
    owner = os.getpid()

    def guarded(signum: int, frame: FrameType | None) -> Any:
        if os.getpid() != owner:
            os._exit(128 + signum)
        return handler(signum, frame)

    return guarded
