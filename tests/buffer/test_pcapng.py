"""The pcapng writer's output reads back in scapy (and tcpdump, in the
namespace tests) with every packet, its netdev and its epoch comment."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgReader

from colonet.buffer.pcapng import PcapngWriter, ethernet_from_ip


def _written() -> tuple[bytes, list[bytes]]:
    eth = bytes(Ether(src="02:00:00:00:00:01") / IP(dst="10.0.0.1") / UDP(dport=7) / b"eth")
    raw4 = bytes(IP(dst="10.0.0.2") / UDP(dport=9) / b"raw")
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    tap = w.interface("tap0")
    nfq = w.interface("veth0")
    assert w.interface("tap0") == tap  # declared once
    w.packet(tap, eth, comment="epoch=3 netdev=tap0 state=held", timestamp_ns=1_000_000_123)
    w.packet(nfq, ethernet_from_ip(raw4), comment="epoch=4 netdev=veth0 state=held")
    w.packet(tap, b"\x01" * 61, comment="")  # odd length: padded
    return buf.getvalue(), [eth, ethernet_from_ip(raw4), b"\x01" * 61]


def test_scapy_reads_back_every_packet_with_its_comment():
    data, packets = _written()
    read = list(PcapNgReader(io.BytesIO(data)))
    assert [bytes(p) for p in read] == packets
    assert read[0].comment == b"epoch=3 netdev=tap0 state=held"
    assert read[1].comment == b"epoch=4 netdev=veth0 state=held"
    assert read[0][UDP].dport == 7 and read[1][UDP].dport == 9
    assert float(read[0].time) == pytest.approx(1.000000123)


def test_tcpdump_reads_it(tmp_path):
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (tools/bootstrap.sh installs it)")
    data, _ = _written()
    path = tmp_path / "held.pcapng"
    path.write_bytes(data)
    done = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert "10.0.0.1.7" in lines[0].replace(" > ", " ") or "10.0.0.1.7:" in lines[0]
