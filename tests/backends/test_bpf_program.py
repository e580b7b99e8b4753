"""The steering program's bytes, checked without loading it."""

from __future__ import annotations

import struct

import pytest

from colonet.backends.tap.bpf_program import (
    BPF_FUNC_REDIRECT,
    RELEASE_MARK,
    SKB_MARK_OFFSET,
    steer_program,
)


def _decode(program: bytes) -> list[tuple[int, int, int, int, int]]:
    out = []
    for i in range(0, len(program), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", program, i)
        out.append((code, regs & 0x0F, regs >> 4, off, imm))
    return out


def test_program_redirects_to_the_capture_link_unless_marked():
    insns = _decode(steer_program(capture_ifindex=42))
    assert len(insns) == 10
    # r2 = skb->mark; if r2 != RELEASE_MARK jump to the redirect
    assert insns[0] == (0x61, 2, 1, SKB_MARK_OFFSET, 0)
    code, dst, _, off, imm = insns[1]
    assert (code, dst, imm) == (0x55, 2, RELEASE_MARK)
    assert 1 + 1 + off == 6, "the jump must land on the redirect block"
    # marked: clear the mark, return TC_ACT_OK
    assert insns[3] == (0x63, 1, 3, SKB_MARK_OFFSET, 0)
    assert insns[4][0] == 0xB7 and insns[4][4] == 0
    assert insns[5][0] == 0x95
    # not marked: bpf_redirect(42, 0)
    assert insns[6] == (0xB7, 1, 0, 0, 42)
    assert insns[7] == (0xB7, 2, 0, 0, 0)
    assert insns[8] == (0x85, 0, 0, 0, BPF_FUNC_REDIRECT)
    assert insns[9][0] == 0x95


@pytest.mark.parametrize("index", [0, -1, 2**31])
def test_bad_capture_index_is_refused(index):
    with pytest.raises(ValueError, match="capture ifindex"):
        steer_program(index)


def test_bad_mark_is_refused():
    with pytest.raises(ValueError, match="release mark"):
        steer_program(3, release_mark=0)
