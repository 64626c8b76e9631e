"""64-byte alignment of native buffers: the weight blob, the arena and every offset in them
(a cache line, and the widest vector load, AVX-512's, never splits one)."""
from __future__ import annotations

import ctypes
import mmap

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


class GrowingBlob:
    """Arrays placed at ALIGN-aligned offsets in one anonymous mapping reserved up front (a
    page costs memory only once written; page aligned; transparent huge pages asked for, as
    numpy does for its large arrays). Lowering places each packed weight as it makes it and
    copies it in once the node's unpacked arrays are released (``reserve``, then ``write``):
    the packed arrays are never all alive beside the blob (listing them and copying the list
    into a second blob kept both resident, ResNet-50 +90 MB), nor is the blob's copy of a
    weight beside both its unpacked and packed arrays (VGG-11's 411 MB matrix). Outgrowing
    the reservation maps one twice as large and moves the bytes."""

    def __init__(self, reserve: int):
        self.nbytes = 0
        self._data = self._mapping(reserve)

    @staticmethod
    def _mapping(nbytes: int) -> np.ndarray:
        size = max(-(-nbytes // mmap.PAGESIZE), 1) * mmap.PAGESIZE
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                m.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        return np.frombuffer(m, np.uint8)

    def reserve(self, nbytes: int) -> int:
        """The offset of the next ``nbytes`` (ALIGN-aligned), now taken."""
        offset, end = self.nbytes, self.nbytes + nbytes
        if end > self._data.nbytes:
            grown = self._mapping(max(2 * self._data.nbytes, end))
            grown[:offset] = self._data[:offset]
            self._data = grown
        self.nbytes = align(end)
        return offset

    def write(self, offset: int, array: np.ndarray) -> None:
        """Copy ``array``'s bytes to ``offset`` (reserved for them)."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self._data[offset:offset + data.nbytes] = data

    def append(self, array: np.ndarray) -> int:
        """Reserve room for ``array`` and copy it in; returns its offset."""
        offset = self.reserve(np.asarray(array).nbytes)
        self.write(offset, array)
        return offset

    def array(self) -> np.ndarray:
        """The blob: the bytes placed (at least ALIGN of them), zero between arrays."""
        return self._data[:max(self.nbytes, ALIGN)]


_LIBC: list = []


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere).
    numpy arrays under 32 MB live in the C heap, and glibc keeps what they free there: when
    lowering drops the folded weights it has packed (lower/program.py), their pages would stay
    resident while the weight blob grows (ResNet-50 from a DSL net: +90 MB at the peak)."""
    if not _LIBC:
        # The process's own symbols: the C library it runs on (no ldconfig lookup).
        _LIBC.append(getattr(ctypes.CDLL(None), "malloc_trim", None))
    if _LIBC[0] is not None:
        _LIBC[0](0)
