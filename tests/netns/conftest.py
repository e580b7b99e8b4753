"""Fixtures that build namespaces and run `colonet filter run` inside them.

Each topology is created with a per-run prefix and destroyed by a finalizer,
whatever the test did; each filter process is killed and its host namespace
cleaned of colonet rules at teardown.
"""

from __future__ import annotations

import os

import pytest

from colonet.net.privilege import has_net_admin
from colonet.net.topology import Topology, run_prefix
from tests.netns.harness import FilterProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/netns/" in str(item.path):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(autouse=True)
def _needs_net_admin() -> None:
    if has_net_admin():
        return
    if os.environ.get("CI"):
        pytest.fail("namespace tests need CAP_NET_ADMIN, and under CI they must run")
    pytest.skip("needs CAP_NET_ADMIN (run as root); skipped outside CI")


@pytest.fixture(params=["veth", "tap"], ids=["routed-veth", "bridged-tap"])
def topology(request: pytest.FixtureRequest) -> Topology:
    topo = Topology(run_prefix(), link=request.param)
    request.addfinalizer(topo.destroy)
    return topo.build()


@pytest.fixture
def veth_topology(request: pytest.FixtureRequest) -> Topology:
    topo = Topology(run_prefix(), link="veth")
    request.addfinalizer(topo.destroy)
    return topo.build()


@pytest.fixture(params=["nfqueue", "tap"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every filter test runs against both buffer backends."""
    return request.param


@pytest.fixture
def start_filter(request: pytest.FixtureRequest, backend: str):
    """start_filter(topology, *extra_args) -> FilterProcess, stopped at teardown."""
    started: list[FilterProcess] = []

    def start(topo: Topology, *extra: str, netdevs: tuple[str, ...] | None = None):
        proc = FilterProcess.start(topo, "--backend", backend, *extra, netdevs=netdevs)
        started.append(proc)
        return proc

    def stop_all() -> None:
        for proc in started:
            proc.kill()

    request.addfinalizer(stop_all)
    return start
