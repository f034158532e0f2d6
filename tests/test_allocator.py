"""latency/allocator.py: on glibc, the heap keeps activation-sized blocks after the thresholds are fixed,
so a network's tensors come from warm heap pages instead of fresh mmaps (docs/latency.md section 1)."""

from __future__ import annotations

import ctypes
import platform
import sys

import pytest
import torch

from mdp_cli.latency.allocator import steady_allocator
from mdp_cli.latency.timing import cpu_clock


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mmapped_bytes() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblkhd)


glibc = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                           reason="glibc only")


@glibc
def test_cpu_timing_fixes_the_thresholds_so_activations_stay_in_the_heap():
    cpu_clock()  # every CPU timing goes through it
    assert steady_allocator() == "glibc: mmap >= 32 MiB, trim > 1 GiB"
    before = _mmapped_bytes()
    # an activation of a CNN at 224 px (96 x 112 x 112 floats: 4.8 MB), far above glibc's default 128 KiB
    tensors = [torch.empty(96 * 112 * 112) for _ in range(4)]
    assert _mmapped_bytes() == before
    del tensors
    big = torch.empty(40 << 20 >> 2)  # above the fixed 32 MiB: still mmapped (the heap is not grown for it)
    assert _mmapped_bytes() > before
    del big


def test_steady_allocator_is_idempotent():
    assert steady_allocator() == steady_allocator()
