"""The memory bandwidth of this machine, measured: GB/s of loop IR kernels that only stream data.

Two kernels, JIT-compiled by the LLVM backend like the FMA kernel of cnncc/peak.py:

    read        acc[c] += x[t, k, c]       (``chains`` vector accumulators: 4-cycle adds do not
                                            bound the loop; bytes = the x swept)
    read+write  y[t, k, c] = x[t, k, c] * a                   (bytes = x read + y written,
                                            as STREAM counts them: write-allocate not included)

each at three working sets: one that fits the L2 cache of the cores running it (every block of
the parallel loop sweeps its own slice of half an L2 many times; the dynamic schedule gives a
block to one thread, so the slice stays in that core's L2), half the last-level cache (several
sweeps: LLC traffic) and one far beyond it (4 x LLC, at least 64 MiB, swept once per call: DRAM
traffic). Cache sizes come from sysfs, with a fallback that keeps the first and the last promise
on any machine (a small L2, a large LLC).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from .ir import DType
from .ir.loop import Allocate, Buffer, Const, For, Kernel, Store, Var, seq
from .peak import BLOCKS_PER_THREAD, REPEAT, fastest_call

F32 = DType.float32
CHAINS = 8
FALLBACK_L2 = 256 * 1024              # smaller than any current x86 L2: the slices still fit
FALLBACK_LLC = 64 * 1024 * 1024       # larger than most LLCs: the DRAM set still spills
DRAM_MIN = 64 * 1024 * 1024
DRAM_MAX = 1024 * 1024 * 1024         # memory of the measurement, whatever the LLC says
CACHE_SECONDS = 2e-3                  # sweeps per call of the L2 kernels: about this long
SYSFS_CACHE = "/sys/devices/system/cpu/cpu0/cache"


@dataclass(frozen=True)
class StreamRates:
    """GB/s of the two kernels at one working set (``bytes``, all arrays of a call)."""
    level: str            # "L2", "LLC" or "DRAM"
    bytes: int
    read_gbs: float
    read_write_gbs: float

    @property
    def roof_gbs(self) -> float:
        """The bandwidth a roofline uses: the faster of the two (a roof is an upper bound)."""
        return max(self.read_gbs, self.read_write_gbs)


@dataclass(frozen=True)
class Bandwidth:
    """Measured streaming rates on ``threads`` threads, in L2, in the last-level cache and in
    DRAM; ``l2_bytes`` / ``llc_bytes``: the cache sizes (per core / of cpu0) they were sized by."""
    threads: int
    lanes: int
    l2_bytes: int
    llc_bytes: int
    l2: StreamRates
    llc: StreamRates
    dram: StreamRates

    @classmethod
    def from_dict(cls, data: dict) -> "Bandwidth":
        """The inverse of ``dataclasses.asdict`` (as a bench report stores it)."""
        rates = {k: StreamRates(**data[k]) for k in ("l2", "llc", "dram")}
        return cls(**{**data, **rates})

    def describe(self) -> str:
        sizes = {"L2": f" (L2 {self.l2_bytes // 1024} KiB per core)",
                 "LLC": f" (LLC {self.llc_bytes // 1024} KiB)"}
        return "\n".join(
            f"{r.level} bandwidth: {r.read_gbs:.1f} GB/s read, {r.read_write_gbs:.1f} GB/s "
            f"read+write on {self.threads} thread(s), {r.bytes / 2**20:.1f} MiB working set"
            + sizes.get(r.level, "") for r in self.levels)

    @property
    def levels(self) -> tuple[StreamRates, StreamRates, StreamRates]:
        """The three measurements, nearest the cores first."""
        return self.l2, self.llc, self.dram


def parse_size(text: str) -> int:
    """Bytes of a sysfs cache size such as ``1024K`` or ``32M``."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def cache_sizes(root: str = SYSFS_CACHE) -> tuple[int, int]:
    """(L2 bytes of one core, last-level cache bytes) from sysfs, or the fallbacks."""
    levels: dict[int, int] = {}
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            path = os.path.join(root, entry)
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(path, "level")) as f:
                level = int(f.read())
            with open(os.path.join(path, "size")) as f:
                levels[level] = parse_size(f.read())
    except (OSError, ValueError):
        levels = {}
    l2 = levels.get(2, FALLBACK_L2)
    llc = levels[max(levels)] if levels and max(levels) >= 2 else FALLBACK_LLC
    return l2, max(llc, l2)


def read_kernel(blocks: int, chunks: int, lanes: int, sweeps: int) -> Kernel:
    """sums[t, c, :] += x[t, k, c, :] over k, ``sweeps`` times, for every block t (parallel);
    x: float32[blocks, chunks, CHAINS, lanes], sums: float32[blocks, CHAINS, lanes]."""
    x = Buffer("x", F32, (blocks, chunks, CHAINS, lanes))
    sums = Buffer("sums", F32, (blocks, CHAINS, lanes))
    acc = Buffer("acc", F32, (CHAINS, lanes), "local")
    t, s, k = Var("t"), Var("s"), Var("k")
    c0, c1, c2, v0, v1, v2 = (Var(q) for q in ("c0", "c1", "c2", "v0", "v1", "v2"))
    load = For(c0, CHAINS, For(v0, lanes, Store(acc, (c0, v0), sums[t, c0, v0]), "vectorized"),
               "unrolled")
    add = Store(acc, (c1, v1), acc[c1, v1] + x[t, k, c1, v1])
    sweep = For(s, sweeps, For(k, chunks, For(c1, CHAINS, For(v1, lanes, add, "vectorized"),
                                              "unrolled")))
    save = For(c2, CHAINS, For(v2, lanes, Store(sums, (t, c2, v2), acc[c2, v2]), "vectorized"),
               "unrolled")
    return Kernel("stream_read", [x, sums],
                  For(t, blocks, Allocate(acc, seq(load, sweep, save)), "parallel"))


def scale_kernel(blocks: int, chunks: int, lanes: int, sweeps: int) -> Kernel:
    """y[t, k, :] = x[t, k, :] * a, ``sweeps`` times, for every block t (parallel);
    x, y: float32[blocks, chunks, CHAINS * lanes], a: float32[1]."""
    width = CHAINS * lanes
    x = Buffer("x", F32, (blocks, chunks, width))
    y = Buffer("y", F32, (blocks, chunks, width))
    a = Buffer("a", F32, (1,))
    t, s, k, v = Var("t"), Var("s"), Var("k"), Var("v")
    body = For(v, width, Store(y, (t, k, v), x[t, k, v] * a[Const(0)]), "vectorized")
    return Kernel("stream_scale", [x, y, a],
                  For(t, blocks, For(s, sweeps, For(k, chunks, body)), "parallel"))


@functools.lru_cache(maxsize=None)
def compiled_stream_kernel(kind: str, blocks: int, chunks: int, lanes: int, sweeps: int,
                           threads: int):
    """``read_kernel`` or ``scale_kernel`` (``kind`` "read" / "scale") JIT-compiled for
    ``threads`` threads (kept for the process)."""
    from .backends.llvm.kernels import compile_kernel

    make = read_kernel if kind == "read" else scale_kernel
    return compile_kernel(make(blocks, chunks, lanes, sweeps), threads=threads, lanes=lanes)


def stream_arrays(kind: str, blocks: int, chunks: int, lanes: int) -> dict[str, np.ndarray]:
    """The arguments of a stream kernel: x all ones (finite sums, no denormals)."""
    if kind == "read":
        return {"x": np.ones((blocks, chunks, CHAINS, lanes), np.float32),
                "sums": np.zeros((blocks, CHAINS, lanes), np.float32)}
    return {"x": np.ones((blocks, chunks, CHAINS * lanes), np.float32),
            "y": np.zeros((blocks, chunks, CHAINS * lanes), np.float32),
            "a": np.array([0.5], np.float32)}


def time_stream(kind: str, total_bytes: int, sweeps: int, threads: int, lanes: int,
                repeat: int) -> float:
    """GB/s of the ``kind`` kernel over ``total_bytes`` (all its arrays) swept ``sweeps`` times
    per call: the fastest of ``repeat`` calls after a warm-up call (as STREAM reports its best
    trial, and for the reason cnncc/peak.py gives)."""
    blocks = BLOCKS_PER_THREAD * threads
    arrays_swept = 1 if kind == "read" else 2
    chunk_bytes = CHAINS * lanes * 4 * arrays_swept
    chunks = max(1, total_bytes // (blocks * chunk_bytes))
    kernel = compiled_stream_kernel(kind, blocks, chunks, lanes, sweeps, threads)
    seconds = fastest_call(kernel, stream_arrays(kind, blocks, chunks, lanes), repeat)
    return blocks * chunks * chunk_bytes * sweeps / seconds / 1e9


def working_sets(threads: int, l2: int, llc: int) -> tuple[int, int, int]:
    """Bytes of the L2, LLC and DRAM measurements on ``threads`` threads: a block's slice is
    half an L2; the LLC set half the LLC but at least twice the threads' L2s; the DRAM set
    4 x LLC within [DRAM_MIN, DRAM_MAX]."""
    in_l2 = BLOCKS_PER_THREAD * threads * (l2 // 2)
    return (in_l2, max(llc // 2, 2 * threads * l2), min(DRAM_MAX, max(DRAM_MIN, 4 * llc)))


def measure_bandwidth(threads: int = 1, repeat: int = REPEAT) -> Bandwidth:
    """Read and read+write GB/s in L2, in the LLC and in DRAM on ``threads`` threads."""
    from .backends.llvm import jit

    lanes = jit.vector_lanes()
    l2, llc = cache_sizes()
    l2_set, llc_set, dram_set = working_sets(threads, l2, llc)
    # Per core, L2 streams at ~100 GB/s and more on current x86, an LLC at ~50: enough sweeps
    # for ~CACHE_SECONDS a call.
    plan = (("L2", l2_set, max(1, int(CACHE_SECONDS * 100e9 * threads / l2_set))),
            ("LLC", llc_set, max(1, int(CACHE_SECONDS * 50e9 * threads / llc_set))),
            ("DRAM", dram_set, 1))
    rates = []
    for level, size, n in plan:
        rates.append(StreamRates(level, size,
                                 time_stream("read", size, n, threads, lanes, repeat),
                                 time_stream("scale", size, n, threads, lanes, repeat)))
    return Bandwidth(threads, lanes, l2, llc, *rates)


def bandwidth(threads: int = 1) -> Bandwidth:
    """The measured streaming bandwidths (L2, LLC, DRAM; read and read+write) at ``threads``."""
    return measure_bandwidth(threads)
