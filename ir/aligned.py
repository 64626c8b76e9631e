"""64-byte alignment of native buffers: the weight blob, the arena and every offset in them
(a cache line, and the widest vector load, AVX-512's, never splits one)."""
from __future__ import annotations

import numpy as np

ALIGN = 64


def align(n: int) -> int:
    """``n`` rounded up to a multiple of ALIGN."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def aligned_zeros(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array whose data pointer is ALIGN-byte aligned."""
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + nbytes]
