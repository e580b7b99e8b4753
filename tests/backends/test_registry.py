"""A third backend is one module plus one registry line: here, a test double
registered from the test, attached, chosen by `auto`, offered by the CLI
and cleaned up by `colonet cleanup`. No root."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from colonet.backends import attach, registry
from colonet.backends.attach import attach_filters
from colonet.buffer.backend import Backend, BackendOptions
from colonet.buffer.epoch_queue import BufferLimits
from colonet.buffer.hooks import CommitResult
from colonet.cli.main import build_parser
from colonet.errors import KernelSetupError, NetdevBusyError, UnknownNetdevError, UsageError
from colonet.net.owner import RUN_DIR_ENV, NetdevClaims
from tests.buffer.test_filter import FakeBackend

NETDEVS = {"gst0", "gst1"}


class RefusingBackend(FakeBackend):
    def start(self, deliver):  # type: ignore[no-untyped-def]
        raise KernelSetupError(f"{self.name}: the kernel says no")


class Double:
    """A backend kind for tests: records what it opened and cleaned."""

    def __init__(self, name: str, backend_class: type[FakeBackend] = FakeBackend) -> None:
        self.name = name
        self.backend_class = backend_class
        self.opened: list[tuple[str, BackendOptions]] = []
        self.cleaned: list[bool] = []
        self.kind = registry.BackendKind(name, f"{name}: a test double", self.open, self.cleanup)

    def open(self, netdev: str, limits: BufferLimits, options: BackendOptions) -> Backend:
        if netdev not in NETDEVS:  # looked up before anything is installed
            raise UnknownNetdevError(f"netdev {netdev!r} does not exist")
        self.opened.append((netdev, options))
        return self.backend_class(self.name, fd=100 + len(self.opened))

    def cleanup(self, force: bool) -> list[str]:
        self.cleaned.append(force)
        return [f"{self.name} leftovers"]


class Claims:
    """Stands in for the netdev locks (colonet.net.owner): records who
    claimed what and when it was let go, or refuses a netdev as taken."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.taken: set[str] = set()

    def __call__(self, netdevs: list[str]) -> NetdevClaims:
        busy = [n for n in netdevs if n in self.taken]
        if busy:
            raise NetdevBusyError(f"netdev {busy[0]} is already buffered by another colonet")
        self.log.append(f"claim {','.join(netdevs)}")
        claims = NetdevClaims([])
        claims.release = lambda: self.log.append(f"release {','.join(netdevs)}")  # type: ignore[method-assign]
        return claims


@pytest.fixture(autouse=True)
def claims(monkeypatch, tmp_path) -> Claims:  # type: ignore[no-untyped-def]
    fake = Claims([])
    monkeypatch.setattr(attach, "claim_netdevs", fake)
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))  # what cleanup sweeps
    return fake


@pytest.fixture
def double() -> Iterator[Double]:
    d = Double("double")
    with registry.registered(d.kind):
        yield d


def test_a_registered_backend_is_attached_and_driven_through_the_hooks(double) -> None:
    fs = attach_filters(["gst0", "gst1"], backend="double", options=BackendOptions(False, True))
    assert [f.backend.name for f in fs.filters] == ["double", "double"]
    assert double.opened == [
        ("gst0", BackendOptions(False, True)),
        ("gst1", BackendOptions(False, True)),
    ]
    fs.filters[0].backend.emit("p1", 60)
    assert fs.begin_checkpoint(1) == 1
    assert fs.commit(1) == CommitResult(1, 1)
    assert fs.filters[0].backend.released == ["p1"]
    fs.stop()


def test_an_unknown_netdev_installs_nothing(double) -> None:
    with pytest.raises(UnknownNetdevError, match="'nope0'"):
        attach_filters(["gst0", "nope0"], backend="double")
    assert double.opened == [("gst0", BackendOptions())]  # opened, never started


def test_auto_falls_back_along_the_registry_order(double, monkeypatch) -> None:
    with registry.registered(Double("refusing", RefusingBackend).kind):
        monkeypatch.setattr(registry, "AUTO_ORDER", ("refusing", "double"))
        fs = attach_filters(["gst0"])
        assert fs.filters[0].backend.name == "double"
        fs.stop()


def test_auto_reports_the_last_backend_refusal(monkeypatch) -> None:
    with registry.registered(Double("refusing", RefusingBackend).kind):
        monkeypatch.setattr(registry, "AUTO_ORDER", ("refusing",))
        with pytest.raises(KernelSetupError, match="the kernel says no"):
            attach_filters(["gst0"])


def test_an_unknown_backend_name_is_a_usage_error() -> None:
    with pytest.raises(
        UsageError, match=r"unknown backend 'warp' \(choose from auto, tap, nfqueue"
    ):
        attach_filters(["gst0"], backend="warp")


def test_the_cli_offers_a_registered_backend(double) -> None:
    args = build_parser().parse_args(
        ["filter", "run", "--netdev", "x", "--socket", "/s", "--backend", "double"]
    )
    assert args.backend == "double"
    args = build_parser().parse_args(["primary", "--peer", "h:1", "--backend", "double"])
    assert args.backend == "double"


def test_cleanup_asks_every_registered_backend(double, monkeypatch) -> None:
    monkeypatch.setattr(registry.KINDS, "builtin", {})  # the kernel ones need root
    assert registry.cleanup_all(force=True) == ["double leftovers"]
    assert double.cleaned == [True]


def test_the_builtin_backends_come_from_their_modules() -> None:
    assert registry.names()[:2] == ("tap", "nfqueue")
    assert registry.get("tap").name == "tap"
    assert registry.get("nfqueue").name == "nfqueue"
    assert registry.choices()[0] == "auto"


# -- ownership: a netdev another colonet holds is refused first --------------


class LoggingBackend(FakeBackend):
    """Logs its start into the shared claims log, to see the order."""

    journal: list[str] = []

    def start(self, deliver):  # type: ignore[no-untyped-def]
        LoggingBackend.journal.append(f"start {self.name}")
        super().start(deliver)


def test_every_netdev_is_claimed_before_any_backend_starts(claims) -> None:  # type: ignore[no-untyped-def]
    LoggingBackend.journal = claims.log
    with registry.registered(Double("logging", LoggingBackend).kind):
        fs = attach_filters(["gst0", "gst1"], backend="logging")
        assert claims.log == ["claim gst0,gst1", "start logging", "start logging"]
        fs.stop()
    assert claims.log[-1] == "release gst0,gst1"


def test_a_held_netdev_is_refused_and_nothing_is_started(claims, double) -> None:  # type: ignore[no-untyped-def]
    claims.taken.add("gst1")
    with pytest.raises(NetdevBusyError, match="netdev gst1 is already buffered"):
        attach_filters(["gst0", "gst1"], backend="double")
    assert claims.log == []
    assert NetdevBusyError.exit_code == 2


def test_a_failed_start_lets_the_claims_go(claims) -> None:  # type: ignore[no-untyped-def]
    refusing = Double("refusing", RefusingBackend).kind
    with registry.registered(refusing), pytest.raises(KernelSetupError):
        attach_filters(["gst0"], backend="refusing")
    assert claims.log == ["claim gst0", "release gst0"]


def test_cleanup_sweeps_stale_lock_files_too(double, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(registry.KINDS, "builtin", {})
    (tmp_path / "net1-if2.lock").write_text('{"pid": 7, "netdev": "gst0"}')
    assert registry.cleanup_all() == [
        "double leftovers",
        f"stale lock file {tmp_path / 'net1-if2.lock'} (netdev gst0, pid 7, no longer running)",
    ]
