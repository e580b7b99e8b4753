"""What the filter holds, written to pcapng and read back; what it released,
captured per epoch; its metrics scraped from inside its namespace."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import urllib.request

from scapy.layers.inet import UDP
from scapy.utils import PcapNgReader

from colonet.net.netns import run_in_netns
from tests.netns.harness import (
    PORT,
    client_receiver,
    colonet_argv,
    guest_sender,
    receive_numbers,
    send_numbered,
)


def _payloads(path: str) -> list[tuple[bytes, bytes]]:
    """Our numbered datagrams (the guest's stack may add its own packets)."""
    return [
        (bytes(p[UDP].payload), p.comment)
        for p in PcapNgReader(path)
        if p.haslayer(UDP) and p[UDP].dport == PORT
    ]


def test_held_packets_dump_to_pcapng_that_scapy_and_tcpdump_read(topology, start_filter):
    filt = start_filter(topology, "--retain-payloads")
    receiver = client_receiver(topology, socket.AF_INET)
    sender = guest_sender(topology, socket.AF_INET)
    dest = (topology.client_ip4, PORT)
    send_numbered(sender, dest, range(0, 30), filt)
    epoch = filt.call("checkpoint")["epoch"]
    send_numbered(sender, dest, range(30, 50), filt)
    with tempfile.TemporaryDirectory(prefix="cn") as tmp:
        out = os.path.join(tmp, "held.pcapng")
        done = filt.cli("dump", "--out", out)
        assert done.returncode == 0, done.stderr
        held = int(done.stdout.split()[0])  # ours, and what the guest's stack added
        assert held >= 50 and "held packet(s) written" in done.stdout
        assert os.stat(out).st_mode & 0o777 == 0o600
        read = _payloads(out)
        sent = [f"seq:{n:08d}".encode().ljust(64, b".") for n in range(50)]
        assert [p for p, _ in read] == sent  # byte for byte, in order
        nd = topology.netdev
        assert {c for _, c in read[:30]} == {f"epoch={epoch} netdev={nd} state=held".encode()}
        assert {c for _, c in read[30:]} == {f"epoch={epoch + 1} netdev={nd} state=held".encode()}
        shown = subprocess.run(["tcpdump", "-nn", "-r", out], capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert len(shown.stdout.splitlines()) == held
    # Dumping changed nothing: everything is still held, then released once.
    assert filt.netdev_status()["held_packets"] >= held
    filt.call("checkpoint")
    filt.call("commit")
    assert receive_numbers(receiver) == list(range(50))
    receiver.close()
    sender.close()


def test_released_epochs_are_captured_as_they_go(veth_topology, start_filter):
    with tempfile.TemporaryDirectory(prefix="cn") as tmp:
        capture = os.path.join(tmp, "released.pcapng")
        filt = start_filter(veth_topology, "--capture-released", capture)
        receiver = client_receiver(veth_topology, socket.AF_INET)
        sender = guest_sender(veth_topology, socket.AF_INET)
        dest = (veth_topology.client_ip4, PORT)
        for first in (0, 10):
            send_numbered(sender, dest, range(first, first + 10), filt)
            filt.call("commit", epoch=filt.call("checkpoint")["epoch"])
        assert receive_numbers(receiver) == list(range(20))
        read = _payloads(capture)
        assert [int(p[4:12]) for p, _ in read] == list(range(20))
        comments = [c.decode() for _, c in read]
        assert comments[0].startswith("epoch=1 ") and comments[-1].startswith("epoch=2 ")
        assert all(c.endswith("state=released") for c in comments)
        receiver.close()
        sender.close()
        filt.terminate()


def test_nfqueue_without_payloads_says_how_to_dump(veth_topology):
    from tests.netns.harness import FilterProcess

    filt = FilterProcess.start(veth_topology, "--backend", "nfqueue")
    try:
        sender = guest_sender(veth_topology, socket.AF_INET)
        send_numbered(sender, (veth_topology.client_ip4, PORT), range(3), filt)
        sender.close()
        with tempfile.TemporaryDirectory(prefix="cn") as tmp:
            done = filt.cli("dump", "--out", os.path.join(tmp, "x.pcapng"))
        assert done.returncode == 2
        assert "--retain-payloads" in done.stderr
        assert filt.netdev_status()["held_packets"] >= 3  # nothing lost (more may arrive)
    finally:
        filt.kill()


def test_filter_metrics_are_scraped_in_its_namespace(veth_topology, start_filter):
    filt = start_filter(veth_topology, "--metrics", "127.0.0.1:9466")
    sender = guest_sender(veth_topology, socket.AF_INET)
    send_numbered(sender, (veth_topology.client_ip4, PORT), range(12), filt)
    sender.close()

    def scrape() -> str:
        with urllib.request.urlopen("http://127.0.0.1:9466/metrics", timeout=5) as r:
            return r.read().decode()

    text = run_in_netns(veth_topology.host_ns, scrape)
    nd = veth_topology.netdev
    assert f'colonet_filter_held_packets{{netdev="{nd}"}} 12.0' in text
    assert f'colonet_filter_released_packets_total{{netdev="{nd}"}} 0.0' in text
    assert "colonet_filter_oldest_epoch_age_seconds" in text
    filt.call("commit", epoch=filt.call("checkpoint")["epoch"])
    text = run_in_netns(veth_topology.host_ns, scrape)
    assert f'colonet_filter_released_packets_total{{netdev="{nd}"}} 12.0' in text


def test_primary_metrics_and_dump_through_the_engine_socket(request):
    from tests.netns.failover_pair import FailoverPair

    pair = FailoverPair(primary_args=("--metrics", "127.0.0.1:9467"))
    request.addfinalizer(pair.close)
    pair.start()
    pair.wait_replies_after(0, count=20)

    def scrape() -> str:
        with urllib.request.urlopen("http://127.0.0.1:9467/metrics", timeout=5) as r:
            return r.read().decode()

    text = run_in_netns(pair.topo.host_ns, scrape)
    count = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("colonet_checkpoint_pause_seconds_count")
    )
    assert count >= 1
    assert f'colonet_filter_held_packets{{netdev="{pair.topo.netdev}"}}' in text
    assert "colonet_checkpoint_dirty_pages_total" in text
    with tempfile.TemporaryDirectory(prefix="cn") as tmp:
        out = os.path.join(tmp, "held.pcapng")
        done = subprocess.run(
            colonet_argv("filter", "dump", "--socket", pair.primary_sock, "--out", out),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert os.path.getsize(out) > 0
