"""The FMA peak of this machine, measured: GFLOP/s of a loop IR kernel that only does FMAs.

Each thread keeps ``chains`` vector accumulators (one vector of ``lanes`` floats each) and runs

    for n in range(iterations):  acc[c] = acc[c] * a + b   for every chain c

The chains are independent, so with chains >= FMA latency x FMA ports (4 cycles x 2 ports = 8
on AVX-512 cores) the FMA ports, not the latency of one chain, bound the loop; 24 chains plus the
two coefficient vectors fit in the 32 vector registers (12 + 2 of 16 without AVX-512), so the
accumulators stay in registers. A multiply-add counts as 2 FLOP (as in cnncc.analysis): the
kernel does 2 * iterations * chains * lanes * threads FLOP, and the peak of the cores running it
is that over the time of the fastest call. a < 1 and b > 0 keep the values near b / (1 - a): no
overflow and no denormals (which would take a slow path).

The fastest call, not the median, as STREAM reports its best trial: a peak is what the cores do
when nothing else runs, and on a shared machine a ~3 ms call is often cut by another process's
time slice (measured with 4 processes per core: median 112, fastest 276 GFLOP/s; with 0.75 ms
calls both 271). The kernels it is compared with (`bench --per-layer`) are mostly shorter than
a time slice, so their medians are mostly undisturbed runs as well.

The work is split in 4 blocks per thread, handed out by the dynamic schedule of cnncc's parallel
loops, as in the model kernels: a thread preempted by another process (shared machines) does not
hold up the whole measurement.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from .ir import DType
from .ir.loop import Allocate, Buffer, For, Kernel, Store, Var, fma, seq

F32 = DType.float32
# Long enough (~3 ms per call at ~250 GFLOP/s) that call overhead, timer resolution and the
# fork/join of threads hardly count.
ITERATIONS = 1_000_000
BLOCKS_PER_THREAD = 4
REPEAT = 15                                           # timed calls; the fastest counts
COEFFICIENTS = (1.0 - 2.0 ** -10, 2.0 ** -10)         # a, b: fixed point b / (1 - a) = 1


@dataclass(frozen=True)
class Peak:
    """A measured peak: ``gflops`` over ``threads`` threads of ``chains`` x ``lanes`` FMAs
    (``iterations`` per thread and call)."""
    gflops: float
    threads: int
    lanes: int
    chains: int
    iterations: int

    def describe(self) -> str:
        return (f"FMA peak: {self.gflops:.1f} GFLOP/s on {self.threads} thread(s) "
                f"({self.chains} chains x {self.lanes} fp32 lanes, fastest of {REPEAT} calls)")


def chains_for(lanes: int) -> int:
    """Independent accumulators per thread: fill the register file (32 vector registers with
    AVX-512, 16 below) but for the two coefficient vectors and room for the loop's own values."""
    return 24 if lanes >= 16 else 12


def fma_kernel(iterations: int, lanes: int, chains: int, blocks: int) -> Kernel:
    """x[t, c, :] <- x[t, c, :] * ab[0] + ab[1], ``iterations`` times, for every block t (the
    parallel loop) and chain c; x: float32[blocks, chains, lanes], ab: float32[2, lanes]."""
    x = Buffer("x", F32, (blocks, chains, lanes))
    ab = Buffer("ab", F32, (2, lanes))
    acc = Buffer("acc", F32, (chains, lanes), "local")
    t, n = Var("t"), Var("n")
    c0, c1, c2, v0, v1, v2 = (Var(q) for q in ("c0", "c1", "c2", "v0", "v1", "v2"))
    # Unrolled over chains, vectorized over lanes: every chain is one vector register.
    load = For(c0, chains, For(v0, lanes, Store(acc, (c0, v0), x[t, c0, v0]), "vectorized"),
               "unrolled")
    update = Store(acc, (c1, v1), fma(acc[c1, v1], ab[0, v1], ab[1, v1]))
    step = For(c1, chains, For(v1, lanes, update, "vectorized"), "unrolled")
    save = For(c2, chains, For(v2, lanes, Store(x, (t, c2, v2), acc[c2, v2]), "vectorized"),
               "unrolled")
    body = Allocate(acc, seq(load, For(n, iterations, step), save))
    return Kernel("fma_peak", [x, ab], For(t, blocks, body, "parallel"))


@functools.lru_cache(maxsize=None)
def compiled_fma_kernel(iterations: int, lanes: int, chains: int, blocks: int, threads: int):
    """``fma_kernel`` JIT-compiled by the LLVM backend for ``threads`` threads (kept for the
    process: compiled once)."""
    from .backends.llvm.kernels import compile_kernel

    return compile_kernel(fma_kernel(iterations, lanes, chains, blocks), threads=threads,
                          lanes=lanes)


def run_fma(x: np.ndarray, ab: np.ndarray, iterations: int, threads: int = 1) -> None:
    """Run the compiled kernel in place on ``x`` float32[blocks, chains, lanes] (``ab``:
    float32[2, lanes], the multiplier and addend of every lane)."""
    blocks, chains, lanes = x.shape
    compiled_fma_kernel(iterations, lanes, chains, blocks, threads)({"x": x, "ab": ab})


def fastest_call(kernel, arrays: dict, repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``kernel(arrays)`` after a warm-up call
    (the best trial, as STREAM reports: on a shared machine slower calls measure the others)."""
    kernel(arrays)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        kernel(arrays)
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_peak(threads: int = 1, iterations: int = ITERATIONS, repeat: int = REPEAT) -> Peak:
    """Time the FMA kernel ``repeat`` times (after one warm-up call) and return the peak of
    the fastest call."""
    from .backends.llvm import jit

    lanes = jit.vector_lanes()
    chains = chains_for(lanes)
    blocks = BLOCKS_PER_THREAD * threads
    per_block = max(1, iterations // BLOCKS_PER_THREAD)
    kernel = compiled_fma_kernel(per_block, lanes, chains, blocks, threads)
    x = np.ones((blocks, chains, lanes), np.float32)
    ab = np.array([[COEFFICIENTS[0]] * lanes, [COEFFICIENTS[1]] * lanes], np.float32)
    seconds = fastest_call(kernel, {"x": x, "ab": ab}, repeat)
    flops = 2 * per_block * chains * lanes * blocks
    return Peak(flops / seconds / 1e9, threads, lanes, chains,
                per_block * BLOCKS_PER_THREAD)


def fma_peak(threads: int = 1) -> float:
    """GFLOP/s of ``threads`` threads doing nothing but independent vector FMAs."""
    return measure_peak(threads).gflops
