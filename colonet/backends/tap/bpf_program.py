"""The eBPF program that steers a netdev's guest output to colonet.

Attached to the netdev's ingress (tc, direct action). Every frame the
guest sends is redirected to colonet's capture tap, except frames colonet
itself re-injects on release: those carry a socket mark (SO_MARK on the
release socket), which the program clears before letting the frame go on as
if it had just arrived from the guest. The kernel here lacks sch_plug, gact,
skbedit and u32 mark matching, so this small program is the one way to tell
the two apart at ingress.

Hand-assembled: nine instructions do not justify a compiler toolchain.
Pure: produces bytes, loads nothing.
"""

from __future__ import annotations

import struct

# struct __sk_buff field offset (include/uapi/linux/bpf.h)
SKB_MARK_OFFSET = 8
BPF_FUNC_REDIRECT = 23
TC_ACT_OK = 0

# Opcodes: class | size/op | source
_LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
_STX_MEM_W = 0x63  # *(u32 *)(dst + off) = src
_JNE_K = 0x55  # if dst != imm goto +off
_MOV64_K = 0xB7  # dst = imm
_CALL = 0x85
_EXIT = 0x95

# A mark no guest frame carries: frames from a guest arrive with mark 0.
RELEASE_MARK = 0x0C010E70


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def steer_program(capture_ifindex: int, release_mark: int = RELEASE_MARK) -> bytes:
    """Redirect every frame to `capture_ifindex`, except marked re-injections."""
    if not 0 < capture_ifindex < 2**31:
        raise ValueError(f"capture ifindex {capture_ifindex} is out of range")
    if not 0 < release_mark < 2**31:
        raise ValueError(f"release mark {release_mark:#x} must be in 1..2**31-1")
    return b"".join(
        [
            _insn(_LDX_MEM_W, dst=2, src=1, off=SKB_MARK_OFFSET),  # r2 = skb->mark
            _insn(_JNE_K, dst=2, off=4, imm=release_mark),  # not ours -> capture
            _insn(_MOV64_K, dst=3, imm=0),
            _insn(_STX_MEM_W, dst=1, src=3, off=SKB_MARK_OFFSET),  # skb->mark = 0
            _insn(_MOV64_K, dst=0, imm=TC_ACT_OK),  # go on, as from the guest
            _insn(_EXIT),
            _insn(_MOV64_K, dst=1, imm=capture_ifindex),
            _insn(_MOV64_K, dst=2, imm=0),  # flags 0: to the tap's egress
            _insn(_CALL, imm=BPF_FUNC_REDIRECT),  # returns TC_ACT_REDIRECT
            _insn(_EXIT),
        ]
    )
