"""Load an eBPF program with the bpf(2) system call (no libbpf needed)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from colonet.errors import KernelSetupError

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("_rest", ctypes.c_uint8 * 64),  # newer fields, left zero
    ]


def load_sched_cls(program: bytes, name: str) -> int:
    """Load a tc classifier program; return its fd (the caller closes it)."""
    if os.uname().machine != "x86_64":
        raise KernelSetupError("the tap backend's bpf loader supports x86_64 only")
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt=len(program) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        log_level=1,
        log_size=len(log),
        log_buf=ctypes.addressof(log),
        prog_name=name.encode()[:15],
    )
    fd = _libc.syscall(SYS_BPF, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        detail = log.value.decode(errors="replace").strip()
        raise KernelSetupError(
            f"loading the bpf program {name!r} failed: {os.strerror(err)}"
            + (f"; verifier said: {detail}" if detail else "")
        )
    return fd
