"""Everything the benchmark takes from colonet and its test harness, in one place.

colonet's package layout is being reorganised; when a module moves, only the
import lines here need to follow it. The rest of the benchmark imports these
names from this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# The repository root: colonet and tests/ import from a checkout without
# an installed package, and `git rev-parse` in the report runs there.
REPO = Path(__file__).resolve().parent.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import colonet  # noqa: E402
from colonet.backends.nfqueue.backend import QUEUE_STATUS  # noqa: E402
from colonet.backends.nfqueue.wire import parse_queue_status  # noqa: E402
from colonet.net.netns import enter_netns, read_proc_net, run_in_netns  # noqa: E402
from colonet.net.topology import Topology, run_prefix  # noqa: E402

__all__ = [
    "QUEUE_STATUS",
    "REPO",
    "Topology",
    "colonet_version",
    "enter_netns",
    "parse_queue_status",
    "read_proc_net",
    "run_in_netns",
    "run_prefix",
    "start_filter_process",
]


def colonet_version() -> str:
    return getattr(colonet, "__version__", "?")


def start_filter_process(topo: Topology, *args: str) -> Any:
    """tests.netns.harness.FilterProcess.start(topo, *args).

    Imported on first use, as before the split: the worker processes, which
    load this module too, never need the test harness.
    """
    from tests.netns.harness import FilterProcess

    return FilterProcess.start(topo, *args)
