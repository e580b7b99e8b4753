"""Build the guest the engine commands were asked for: embedded or QEMU."""

from __future__ import annotations

import argparse

from colonet.errors import UsageError
from colonet.guest.embedded import EmbeddedGuest, EmbeddedGuestConfig
from colonet.guest.qemu import QemuGuest, QemuGuestConfig


def add_guest_kind_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guest", choices=("embedded", "qemu"), default="embedded")
    p.add_argument("--ram-mib", type=int, default=16, help="guest RAM (QEMU: -m)")
    q = p.add_argument_group("QEMU guest (--guest qemu; see tools/build_guest.sh)")
    q.add_argument("--qemu-kernel", metavar="FILE")
    q.add_argument("--qemu-initrd", metavar="FILE")
    q.add_argument("--qemu-tap", metavar="IF", help="host tap QEMU opens for the VM's NIC")
    q.add_argument("--qemu-ip", default="10.201.0.2/24", metavar="A.B.C.D/NN")
    q.add_argument("--qemu-mac", default="52:54:00:c0:10:01")


def make_guest(
    args: argparse.Namespace, *, ram_pages: int | None = None
) -> EmbeddedGuest | QemuGuest:
    """The guest of `args`; `ram_pages` (the secondary's) overrides --ram-mib."""
    if args.guest == "qemu":
        missing = [
            f"--{name.replace('_', '-')}"
            for name in ("qemu_kernel", "qemu_initrd", "qemu_tap")
            if not getattr(args, name)
        ]
        if missing:
            raise UsageError(f"--guest qemu needs {', '.join(missing)}")
        try:
            config = QemuGuestConfig(
                kernel=args.qemu_kernel,
                initrd=args.qemu_initrd,
                tap=args.qemu_tap,
                guest_ip=args.qemu_ip,
                mac=args.qemu_mac,
                ram_mib=args.ram_mib,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return QemuGuest(config)
    return EmbeddedGuest(
        EmbeddedGuestConfig(
            ram_pages=ram_pages or args.ram_mib * 256,
            service_ip=args.guest_ip,
            service_port=args.guest_port,
            netns=args.guest_netns,
            netdevs=tuple(getattr(args, "netdev", ())),
            nic=args.guest_nic,
        )
    )
