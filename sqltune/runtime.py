"""Process-level tuning that is not a hyperparameter: it changes speed, never results."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed memory to the OS after every training step.

    CPU training allocates and frees multi-hundred-MB tensors (logits over a 49k vocabulary) each
    step; by default glibc unmaps them and the next step page-faults them back in, which spent much
    of a small CPU run in the kernel and slowed each step. Returns
    whether the allocator could be tuned (not glibc: a no-op).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        # Big tensors come from the heap (kept) instead of fresh mmaps (unmapped on free).
        ok = libc.mallopt(M_MMAP_THRESHOLD, 2**31 - 1)
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        ok &= libc.mallopt(M_TOP_PAD, 512 * 1024 * 1024)
        return bool(ok)
    except (OSError, AttributeError):
        return False
