"""Attach, stop, crash and clean up; and every kind of bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile

import pytest

from colonet.net.netns import socket_in_netns
from tests.netns.harness import (
    PORT,
    FilterProcess,
    client_receiver,
    colonet_argv,
    colonet_footprint,
    guest_sender,
    host_kernel_state,
    in_ns,
    receive_numbers,
    send_numbered,
)


def test_stop_removes_everything_it_installed(topology, start_filter):
    before = host_kernel_state(topology)
    filt = start_filter(topology)
    during = host_kernel_state(topology)
    if filt.backend == "nfqueue":
        assert len(during["rules"]) == 2, "one rule per IP family"
        assert all("colonet" in r and "NFQUEUE" in r for r in during["rules"])
        assert len(during["queues"]) == 1
    else:
        assert during["rules"] == [] and during["queues"] == []
        assert {link[:3] for link in during["links"] if link.startswith("cn")} == {"cnc", "cnr"}
        assert any("colonet" in line for line in during["filters"])
    out = filt.terminate()
    assert filt.proc.returncode == 0
    assert json.loads(out.splitlines()[-1])["event"] == "stopped"
    assert host_kernel_state(topology) == before
    assert not os.path.exists(filt.socket_path)


def test_held_packets_are_dropped_not_released_on_stop(veth_topology, start_filter):
    filt = start_filter(veth_topology)
    rx = client_receiver(veth_topology, socket.AF_INET)
    tx = guest_sender(veth_topology, socket.AF_INET)
    send_numbered(tx, (veth_topology.client_ip4, PORT), range(50), filt)
    filt.call("checkpoint")
    filt.terminate()
    assert receive_numbers(rx) == []


def test_crashed_filter_fails_closed_until_cleanup(topology, start_filter):
    before = host_kernel_state(topology)
    filt = start_filter(topology)
    filt.proc.kill()
    filt.proc.wait()
    rx = client_receiver(topology, socket.AF_INET)
    tx = guest_sender(topology, socket.AF_INET)
    dest = (topology.client_ip4, PORT)
    send_numbered(tx, dest, range(20))
    assert receive_numbers(rx) == [], "a dead filter must keep its netdev closed"
    assert colonet_footprint(host_kernel_state(topology))

    done = subprocess.run(
        in_ns(topology.host_ns, colonet_argv("cleanup", "--json")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["removed"]
    assert host_kernel_state(topology) == before
    send_numbered(tx, dest, range(20, 30))
    assert receive_numbers(rx) == list(range(20, 30))


def test_cleanup_spares_a_running_filter_unless_forced(veth_topology, start_filter):
    start_filter(veth_topology)
    running = colonet_footprint(host_kernel_state(veth_topology))
    argv = in_ns(veth_topology.host_ns, colonet_argv("cleanup", "--json"))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["result"]["removed"] == []
    assert colonet_footprint(host_kernel_state(veth_topology)) == running
    done = subprocess.run([*argv, "--force"], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["result"]["removed"]


def test_one_epoch_spans_every_netdev_of_the_set(veth_topology, start_filter):
    """Two netdevs in one set: one checkpoint seals both, one commit
    releases both (here the client's link stands in for a second NIC)."""
    topo = veth_topology
    filt = start_filter(topo, netdevs=(topo.netdev, "cli0"))
    to_client = client_receiver(topo, socket.AF_INET)
    to_guest = socket_in_netns(topo.guest_ns, socket.AF_INET, socket.SOCK_DGRAM)
    to_guest.bind((topo.guest_ip4, PORT))
    to_guest.setblocking(False)
    send_numbered(guest_sender(topo, socket.AF_INET), (topo.client_ip4, PORT), range(10))
    send_numbered(
        socket_in_netns(topo.client_ns, socket.AF_INET, socket.SOCK_DGRAM),
        (topo.guest_ip4, PORT),
        range(100, 110),
    )
    status = filt.status()
    assert [n["netdev"] for n in status["netdevs"]] == [topo.netdev, "cli0"]
    assert receive_numbers(to_client, 0.2) == [] and receive_numbers(to_guest, 0.2) == []
    assert filt.call("checkpoint")["epoch"] == 1
    assert {n["last_sealed"] for n in filt.status()["netdevs"]} == {1}
    filt.call("commit", epoch=1)
    assert receive_numbers(to_client) == list(range(10))
    assert receive_numbers(to_guest) == list(range(100, 110))


# -- bad input ------------------------------------------------------------


def _run_filter(topo, *args: str, user: list[str] | None = None):
    argv = colonet_argv("filter", "run", *args)
    return subprocess.run(
        in_ns(topo.host_ns, [*(user or []), *argv]), capture_output=True, text=True, timeout=60
    )


def test_unknown_netdev_is_refused_and_nothing_installed(veth_topology):
    before = host_kernel_state(veth_topology)
    with tempfile.TemporaryDirectory(prefix="cn") as tmp:
        done = _run_filter(
            veth_topology,
            "--netdev",
            veth_topology.netdev,
            "--netdev",
            "nosuch0",
            "--socket",
            os.path.join(tmp, "s"),
            "--json",
        )
    assert done.returncode == 2
    assert "unknown netdev 'nosuch0'" in done.stderr
    assert json.loads(done.stdout)["error"]["kind"] == "UnknownNetdevError"
    assert host_kernel_state(veth_topology) == before


@pytest.mark.parametrize("backend", ["auto", "tap", "nfqueue"])
def test_loopback_is_refused_by_name_not_a_traceback(veth_topology, backend):
    """Issue 15 item 10: `--netdev lo` gave a netlink traceback."""
    before = host_kernel_state(veth_topology)
    with tempfile.TemporaryDirectory(prefix="cn") as tmp:
        done = _run_filter(
            veth_topology,
            *("--netdev", "lo", "--backend", backend, "--socket", os.path.join(tmp, "s")),
        )
    assert done.returncode == 2, done.stderr
    assert "lo is a loopback device" in done.stderr
    assert "Traceback" not in done.stderr
    assert host_kernel_state(veth_topology) == before


def test_missing_privilege_is_refused(veth_topology):
    nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]
    with tempfile.TemporaryDirectory(prefix="cn") as tmp:
        os.chmod(tmp, 0o777)
        done = _run_filter(
            veth_topology,
            "--netdev",
            veth_topology.netdev,
            "--socket",
            os.path.join(tmp, "s"),
            user=nobody,
        )
    assert done.returncode == 3, done.stderr
    assert "CAP_NET_ADMIN" in done.stderr
    assert colonet_footprint(host_kernel_state(veth_topology)) == []


def test_socket_path_taken_is_refused(veth_topology, start_filter):
    filt = start_filter(veth_topology)
    running = colonet_footprint(host_kernel_state(veth_topology))
    done = _run_filter(veth_topology, "--netdev", "cli0", "--socket", filt.socket_path)
    assert done.returncode == 4
    assert "is taken: another process is listening" in done.stderr
    with tempfile.NamedTemporaryFile(prefix="cn") as plain:
        done = _run_filter(veth_topology, "--netdev", "cli0", "--socket", plain.name)
    assert done.returncode == 4
    assert "is not a socket" in done.stderr
    # The running filter was not disturbed.
    assert filt.status()["netdevs"][0]["state"] == "buffering"
    assert colonet_footprint(host_kernel_state(veth_topology)) == running


def test_control_socket_is_private(veth_topology, start_filter):
    filt = start_filter(veth_topology)
    assert os.stat(filt.socket_path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("line", "fault"),
    [
        (b"not json\n", "not valid JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"op": "explode"}\n', "unknown op"),
        (b'{"op": "commit", "epoch": "seven"}\n', "epoch must be a positive integer"),
        (b'{"op": "failover", "role": "tertiary"}\n', "failover role"),
    ],
)
def test_malformed_control_request_gets_an_error_not_a_crash(
    veth_topology, start_filter, line, fault
):
    filt = start_filter(veth_topology)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(filt.socket_path)
        conn.sendall(line)
        reply = json.loads(conn.makefile("rb").readline())
    assert reply["ok"] is False
    assert fault in reply["error"]["message"]
    assert reply["error"]["kind"] == "RemoteRequestError"
    assert filt.status()["netdevs"][0]["state"] == "buffering"


def test_failover_without_a_role_is_refused_by_a_filter_process(veth_topology, start_filter):
    filt = start_filter(veth_topology)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(filt.socket_path)
        conn.sendall(b'{"op": "failover"}\n')
        reply = json.loads(conn.makefile("rb").readline())
    assert reply["ok"] is False and reply["error"]["kind"] == "UsageError"
    assert "needs role primary or secondary" in reply["error"]["message"]
    assert filt.status()["netdevs"][0]["state"] == "buffering"


def test_oversized_control_request_is_refused(veth_topology, start_filter):
    filt = start_filter(veth_topology)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(filt.socket_path)
        conn.sendall(b"x" * (200 * 1024))
        reply = json.loads(conn.makefile("rb").readline())
    assert "over 65536 bytes" in reply["error"]["message"]
    assert filt.status()["netdevs"][0]["state"] == "buffering"


def test_cli_commands_and_their_errors(veth_topology, start_filter):
    filt = start_filter(veth_topology)
    done = filt.cli("commit", "5")
    assert done.returncode == 2
    assert "epoch 5 does not exist" in done.stderr
    done = filt.cli("checkpoint")
    assert done.returncode == 0 and done.stdout.strip() == "1"
    done = filt.cli("checkpoint", "--json")
    assert json.loads(done.stdout) == {"ok": True, "result": {"epoch": 2}}
    done = filt.cli("status")
    assert done.returncode == 0
    assert "gst0" in done.stdout and "epoch 3" in done.stdout and "open" in done.stdout
    done = filt.cli("commit", "--json")
    assert json.loads(done.stdout)["result"]["epoch"] == 2
    done = filt.cli("failover", "--role", "secondary")
    assert done.returncode == 0 and "discarded" in done.stdout
    done = filt.cli("checkpoint")
    assert done.returncode == 2 and "not buffering" in done.stderr


def test_cli_without_a_running_filter(tmp_path):
    done = subprocess.run(
        colonet_argv("filter", "status", "--socket", str(tmp_path / "none.sock")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4
    assert "no control socket" in done.stderr


def test_invalid_limits_are_refused(veth_topology):
    done = _run_filter(
        veth_topology, "--netdev", "gst0", "--socket", "/tmp/x", "--max-packets", "0"
    )
    assert done.returncode == 2
    assert "max_held_packets" in done.stderr


@pytest.mark.parametrize("existing", ["clsact", "ingress"])
def test_tap_backend_puts_an_existing_qdisc_back_as_it_was(veth_topology, existing, request):
    """A netdev that already had an ingress/clsact qdisc keeps it, with only
    colonet's filter added while running and removed afterwards."""
    host = veth_topology.host_ns
    subprocess.run(in_ns(host, ["tc", "qdisc", "add", "dev", "gst0", existing]), check=True)
    before = host_kernel_state(veth_topology)
    filt = FilterProcess.start(veth_topology, "--backend", "tap")
    request.addfinalizer(filt.kill)
    assert any("colonet" in line for line in host_kernel_state(veth_topology)["filters"])
    rx = client_receiver(veth_topology, socket.AF_INET)
    tx = guest_sender(veth_topology, socket.AF_INET)
    send_numbered(tx, (veth_topology.client_ip4, PORT), range(20), filt)
    filt.call("checkpoint")
    filt.call("commit")
    assert receive_numbers(rx) == list(range(20))
    filt.terminate()
    assert host_kernel_state(veth_topology) == before
