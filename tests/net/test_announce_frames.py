import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from colonet.net.announce import announcement_frames, gratuitous_arp, unsolicited_na

MAC = "02:11:22:33:44:55"


def test_gratuitous_arp_claims_our_own_address_to_everyone():
    frame = Ether(gratuitous_arp(MAC, "10.201.0.2"))
    assert frame.dst == "ff:ff:ff:ff:ff:ff" and frame.src == MAC
    arp = frame[ARP]
    assert arp.op == 1 and arp.hwsrc == MAC
    assert arp.psrc == arp.pdst == "10.201.0.2"


def test_unsolicited_na_overrides_caches_and_has_a_valid_checksum():
    raw = unsolicited_na(MAC, "fd01:201::2")
    frame = Ether(raw)
    assert frame.dst == "33:33:00:00:00:01" and frame.src == MAC
    ip6 = frame[IPv6]
    assert ip6.src == "fd01:201::2" and ip6.dst == "ff02::1" and ip6.hlim == 255
    na = frame[ICMPv6ND_NA]
    assert na.tgt == "fd01:201::2" and na.O == 1 and na.S == 0 and na.R == 0
    assert frame[ICMPv6NDOptDstLLAddr].lladdr == MAC
    sent = na.cksum
    del na.cksum
    assert Ether(bytes(frame))[ICMPv6ND_NA].cksum == sent


def test_one_frame_per_address():
    frames = announcement_frames(MAC, ["10.0.0.1", "10.0.0.2"], ["fd00::1"])
    assert [Ether(f).type for f in frames] == [0x0806, 0x0806, 0x86DD]


@pytest.mark.parametrize(
    ("mac", "ip", "error"),
    [("02:11:22", "10.0.0.1", "6-byte MAC"), (MAC, "10.0.0.300", "Octet 300")],
)
def test_bad_identity_is_refused(mac, ip, error):
    with pytest.raises(ValueError, match=error):
        gratuitous_arp(mac, ip)
