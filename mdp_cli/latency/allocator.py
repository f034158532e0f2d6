"""A steady heap for CPU timing (glibc): without it, the same network times up to 1.5x slower depending on
what the process allocated before.

glibc's malloc serves large blocks (a CNN's activations at 224 px: megabytes) by mmap and adapts that
threshold to what was freed, and it returns the top of the heap to the system whenever more than a
threshold is free. Both depend on the process's history, and a block that comes from fresh pages pays a
page fault per 4 KiB on every inference. Measured on EfficientNet-Lite0 at 224 px, 1 thread: the dense
model 34.6 ms after the calibration's exports were built, 22.7 ms with the thresholds fixed (and 22.9 ms
in another process), while small models did not move (docs/latency.md section 1). Fixing both
thresholds keeps freed activations in the heap, so every call reuses warm pages, as a long-running
server does. Other C libraries (musl, macOS) are left as they are."""

from __future__ import annotations

import ctypes
import functools
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30


@functools.cache
def steady_allocator() -> str:
    """Fix glibc's mmap and trim thresholds, once per process; says what was done: 'glibc: mmap >= 32
    MiB, trim > 1 GiB', or why nothing was."""
    if not sys.platform.startswith("linux"):
        return "not glibc: left as is"
    libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return "not glibc: left as is"
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        return "glibc: mmap >= 32 MiB, trim > 1 GiB"
    return "glibc: mallopt refused, left as is"


__all__ = ["steady_allocator"]
