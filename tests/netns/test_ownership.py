"""Who owns a netdev's buffering (docs/DESIGN.md invariant 7): a lock held
while a filter steers answers across PID namespaces, so `colonet cleanup`
never takes a live filter for a dead one, and a second colonet on the same
netdev is refused before it installs anything; every stop signal removes
what the filter installed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile

import pytest

from tests.netns.harness import (
    PORT,
    FilterProcess,
    client_receiver,
    colonet_argv,
    colonet_footprint,
    guest_sender,
    host_kernel_state,
    in_ns,
    lock_files,
    receive_numbers,
    send_numbered,
)

OTHER_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _released_on_commit(filt: FilterProcess, first: int = 0) -> list[int]:
    topo = filt.topo
    rx = client_receiver(topo, socket.AF_INET)
    tx = guest_sender(topo, socket.AF_INET)
    try:
        send_numbered(tx, (topo.client_ip4, PORT), range(first, first + 10), filt)
        filt.call("commit", epoch=filt.call("checkpoint")["epoch"])
        return receive_numbers(rx)
    finally:
        rx.close()
        tx.close()


def _cleanup_from_another_pid_namespace(filt_topo) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    argv = [*OTHER_PID_NAMESPACE, *in_ns(filt_topo.host_ns, colonet_argv("cleanup", "--json"))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_cleanup_from_another_pid_namespace_spares_a_live_filter(veth_topology, start_filter):
    """There the owner's pid names nobody: only the lock tells it lives."""
    filt = start_filter(veth_topology)
    running = colonet_footprint(host_kernel_state(veth_topology))
    assert lock_files(veth_topology), "a running filter holds its netdev's lock file"
    done = _cleanup_from_another_pid_namespace(veth_topology)
    assert json.loads(done.stdout)["result"]["removed"] == []
    assert colonet_footprint(host_kernel_state(veth_topology)) == running
    st = filt.netdev_status()
    assert (st["state"], st["steering_losses"]) == ("buffering", 0)
    assert _released_on_commit(filt) == list(range(10))


def test_cleanup_from_another_pid_namespace_removes_a_dead_filters_state(veth_topology, backend):
    before = host_kernel_state(veth_topology)
    filt = FilterProcess.start(veth_topology, "--backend", backend)
    try:
        filt.proc.kill()
        filt.proc.wait()
        done = _cleanup_from_another_pid_namespace(veth_topology)
        removed = json.loads(done.stdout)["result"]["removed"]
        assert any("stale lock file" in r for r in removed)
        assert host_kernel_state(veth_topology) == before
    finally:
        filt.kill()


@pytest.mark.parametrize(
    ("first", "second"),
    [("nfqueue", "nfqueue"), ("tap", "nfqueue"), ("nfqueue", "tap"), ("auto", "auto")],
)
def test_a_second_colonet_on_a_held_netdev_is_refused(veth_topology, first, second, request):
    topo = veth_topology
    filt = FilterProcess.start(topo, "--backend", first)
    request.addfinalizer(filt.kill)
    running = colonet_footprint(host_kernel_state(topo))
    with tempfile.TemporaryDirectory(prefix="cn") as tmp:
        argv = colonet_argv(
            "filter", "run", "--netdev", topo.netdev, "--backend", second,
            "--socket", os.path.join(tmp, "second.sock"), "--json",
        )  # fmt: skip
        try:
            done = subprocess.run(
                in_ns(topo.host_ns, argv), capture_output=True, text=True, timeout=20
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"a second filter ({second}) started on a netdev {first} holds")
    assert done.returncode == 2, done.stderr
    assert (
        f"netdev {topo.netdev} is already buffered by another colonet (pid {filt.proc.pid}"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["error"]["kind"] == "NetdevBusyError"
    assert colonet_footprint(host_kernel_state(topo)) == running
    # The first one was not disturbed: it still holds, and still releases.
    assert filt.netdev_status()["state"] == "buffering"
    assert _released_on_commit(filt) == list(range(10))


def test_the_netdev_is_free_again_once_its_filter_stopped(veth_topology):
    topo = veth_topology
    for backend in ("nfqueue", "tap"):
        filt = FilterProcess.start(topo, "--backend", backend)
        try:
            assert _released_on_commit(filt) == list(range(10))
        finally:
            filt.terminate()
        assert lock_files(topo) == []


@pytest.mark.parametrize(
    "signum", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name
)
def test_stop_signals_leave_the_host_clean(veth_topology, start_filter, signum):
    before = host_kernel_state(veth_topology)
    filt = start_filter(veth_topology)
    filt.proc.send_signal(signum)
    out, _ = filt.proc.communicate(timeout=30)
    assert filt.proc.returncode == 0, f"{signal.Signals(signum).name} killed the filter"
    assert json.loads(out.splitlines()[-1])["event"] == "stopped"
    assert host_kernel_state(veth_topology) == before


def test_a_dead_filters_leftovers_are_named_not_a_traceback(veth_topology, request):
    """The netdev is free (its owner died), but its tap steering is still
    there, closing it: a new filter says to run cleanup, and `auto` does not
    fall back to nfqueue behind the dead redirect."""
    topo = veth_topology
    before = host_kernel_state(topo)
    dead = FilterProcess.start(topo, "--backend", "tap")
    request.addfinalizer(dead.kill)
    dead.proc.kill()
    dead.proc.wait()
    # The lock file is stale: a new claim takes it over, then removes it.
    left = [x for x in colonet_footprint(host_kernel_state(topo)) if not x.endswith(".lock")]
    for backend in ("tap", "auto"):
        with tempfile.TemporaryDirectory(prefix="cn") as tmp:
            argv = colonet_argv(
                "filter", "run", "--netdev", topo.netdev, "--backend", backend,
                "--socket", os.path.join(tmp, "s"),
            )  # fmt: skip
            done = subprocess.run(
                in_ns(topo.host_ns, argv), capture_output=True, text=True, timeout=30
            )
        assert done.returncode == 2, done.stderr
        assert "left its steering of gst0; run `colonet cleanup` first" in done.stderr
        assert "Traceback" not in done.stderr
        assert colonet_footprint(host_kernel_state(topo)) == left
    done = subprocess.run(
        in_ns(topo.host_ns, colonet_argv("cleanup")), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert host_kernel_state(topo) == before
