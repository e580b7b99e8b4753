"""Is the process that installed a piece of kernel state still running?

`colonet cleanup` removes only what a dead process left, unless forced, so
it never pulls the buffering out from under a live filter.
"""

from __future__ import annotations

import os


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
