"""Guest kinds by name.

Each kind is one module exposing `KIND: GuestKind`; `BUILTIN` names it, one
line per kind. A kind declares its own options (the CLI turns them into
`--flags`, so the kind imports no argument parser) and builds a guest from
`GuestSettings`: the settings every guest shares plus its own options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from colonet.errors import UsageError
from colonet.guest.base import Guest
from colonet.registry import Registry

# name -> module exposing KIND. Adding a guest kind: one module, one line here.
BUILTIN: dict[str, str] = {
    "embedded": "colonet.guest.embedded",
    "qemu": "colonet.guest.qemu",
}
DEFAULT = "embedded"


@dataclass(frozen=True)
class GuestOption:
    """One setting of a kind, given on the command line as `--name VALUE`."""

    name: str  # e.g. "qemu-kernel"
    help: str
    default: str | None = None
    required: bool = False
    metavar: str | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class GuestSettings:
    """What every guest kind is built from."""

    ram_mib: int = 16
    ram_pages: int | None = None  # the secondary's, from the primary's HELLO
    service_ip: str = "0.0.0.0"
    service_port: int = 7070
    netns: str | None = None  # where the guest's service / NIC lives
    nic: str | None = None  # the guest's own NIC: up and announced when it runs
    netdevs: tuple[str, ...] = ()  # host netdevs carrying its traffic
    options: Mapping[str, str | None] = field(default_factory=dict)  # the kind's own, by key


@dataclass(frozen=True)
class GuestKind:
    name: str
    summary: str
    build: Callable[[GuestSettings], Guest]
    options: tuple[GuestOption, ...] = ()
    # Checks, without starting anything, that a guest could be built and
    # run from these settings on this host (a secondary checks at start,
    # long before a takeover needs it). Raises UsageError naming the fault.
    check: Callable[[GuestSettings], None] | None = None


KINDS: Registry[GuestKind] = Registry("guest kind", BUILTIN)
register = KINDS.register
unregister = KINDS.unregister
registered = KINDS.registered
names = KINDS.names
get = KINDS.get


def check_guest(name: str, settings: GuestSettings) -> GuestKind:
    """Everything a guest of kind `name` needs from `settings` and this host,
    checked now without starting it; a UsageError names what is missing."""
    kind = get(name)
    missing = [
        f"--{o.name}" for o in kind.options if o.required and not settings.options.get(o.key)
    ]
    if missing:
        raise UsageError(f"--guest {name} needs {', '.join(missing)}")
    if kind.check is not None:
        try:
            kind.check(settings)
        except ValueError as exc:
            raise UsageError(f"guest {name}: {exc}") from None
    return kind


def make_guest(name: str, settings: GuestSettings) -> Guest:
    """The guest of kind `name`; a missing or bad option is a UsageError."""
    kind = check_guest(name, settings)
    try:
        return kind.build(settings)
    except ValueError as exc:
        raise UsageError(f"guest {name}: {exc}") from None
