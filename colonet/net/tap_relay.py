"""A stand-in for a VM's NIC: copies frames between two taps.

The guest namespace has a tap as its NIC; the host namespace has the tap a
hypervisor would hold. This process holds both fds, as QEMU would, so the
host-side tap behaves exactly like a VM's: SIGSTOP pauses the "guest NIC",
SIGKILL is a dead VM. Run as:

    python -m colonet.net.tap_relay GUEST_NS GUEST_TAP HOST_NS HOST_TAP
"""

from __future__ import annotations

import os
import sys
import threading

from colonet.net.netns import run_in_netns
from colonet.net.tuntap import open_tap

MAX_FRAME = 65536


def pump(src: int, dst: int) -> None:
    while True:
        frame = os.read(src, MAX_FRAME)
        if not frame:
            return
        try:
            os.write(dst, frame)
        except OSError:
            # A tap whose link is down refuses frames; a NIC would drop too.
            continue


def main(argv: list[str]) -> int:
    guest_ns, guest_tap, host_ns, host_tap = argv
    guest_fd = run_in_netns(guest_ns, lambda: open_tap(guest_tap))
    host_fd = run_in_netns(host_ns, lambda: open_tap(host_tap))
    out = threading.Thread(target=pump, args=(guest_fd, host_fd), daemon=True)
    out.start()
    print("ready", flush=True)
    pump(host_fd, guest_fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
