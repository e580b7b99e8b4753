"""A new guest kind is one module plus one registry line: here a double
registered from the test, with its own option, built through the CLI's
settings. No root."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from colonet.cli.engine import node_config
from colonet.cli.main import build_parser
from colonet.errors import UsageError
from colonet.guest import registry
from colonet.guest.embedded import EmbeddedGuest
from colonet.guest.registry import GuestKind, GuestOption, GuestSettings, make_guest


class ToyGuest(EmbeddedGuest):
    def __init__(self, settings: GuestSettings) -> None:
        self.settings = settings


def _build(settings: GuestSettings) -> ToyGuest:
    if settings.options["toy_size"] == "huge":
        raise ValueError("a huge toy does not fit")
    return ToyGuest(settings)


TOY = GuestKind(
    "toy",
    "a guest double",
    _build,
    (GuestOption("toy-size", "how big", required=True), GuestOption("toy-colour", "", "red")),
)


@pytest.fixture
def toy() -> Iterator[GuestKind]:
    registry.register(TOY)
    try:
        yield TOY
    finally:
        registry.unregister("toy")


def test_the_cli_offers_a_registered_kind_and_its_options(toy) -> None:
    args = build_parser().parse_args(
        ["secondary", "--listen", ":7400", "--guest", "toy", "--toy-size", "3", "--ram-mib", "2"]
    )
    config = node_config(args)
    assert config.guest_kind == "toy"
    assert config.guest.options == {"toy_size": "3", "toy_colour": "red"}
    guest = make_guest(config.guest_kind, config.guest)
    assert isinstance(guest, ToyGuest) and guest.settings.ram_mib == 2


def test_a_missing_required_option_is_named(toy) -> None:
    with pytest.raises(UsageError, match="--guest toy needs --toy-size"):
        make_guest("toy", GuestSettings(options={"toy_size": None}))


def test_a_kind_refusing_its_settings_is_a_usage_error(toy) -> None:
    with pytest.raises(UsageError, match="guest toy: a huge toy does not fit"):
        make_guest("toy", GuestSettings(options={"toy_size": "huge"}))


def test_an_unknown_kind_is_named() -> None:
    with pytest.raises(UsageError, match=r"unknown guest kind 'vax' \(choose from embedded, qemu"):
        make_guest("vax", GuestSettings())


def test_the_builtin_kinds_come_from_their_modules() -> None:
    assert registry.names()[:2] == ("embedded", "qemu")
    assert [o.name for o in registry.get("qemu").options][:3] == [
        "qemu-kernel",
        "qemu-initrd",
        "qemu-tap",
    ]
    guest = make_guest("embedded", GuestSettings(ram_mib=1, netdevs=("gst0",)))
    assert isinstance(guest, EmbeddedGuest)
    assert (guest.ram_pages, guest.netdevs()) == (256, ["gst0"])
    guest.shutdown()


def test_qemu_needs_its_files() -> None:
    with pytest.raises(UsageError, match="--guest qemu needs --qemu-kernel, --qemu-initrd"):
        make_guest("qemu", GuestSettings(options={}))
