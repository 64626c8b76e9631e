"""GPU schedule of the generic lowerings: the loops a rule marks parallel become the grid.

    for i0 in [0, n0) .. for ik in [0, nk) (parallel band): body
      ->  for b in [0, ceil(N / T)) gpu_block:      N = n0 * .. * nk
            for t in [0, T) gpu_thread:             T = threads per block (<= 256)
              if b * T + t < N: body[i0 .. ik := unflatten(b * T + t)]

Consecutive threads take consecutive values of the innermost fused loop, so a rule whose band
ends with the contiguous axis gets coalesced loads and stores. Loops of the band are taken from
the outside in while they are legal to run in parallel (every store depends on them); what is
left of the kernel runs per thread, in order. Convolutions and matmuls have their own tiled GPU
schedules (gpu_conv.py, gpu_gemm.py).
"""
from __future__ import annotations

from cnncc.ir.loop_walk import const_value
from cnncc.ir.loop import For, Kernel
from cnncc.ir.schedule import Schedule, ScheduleError

# Threads per block of a mapped kernel: 8 warps, enough to hide latency on sm_80/sm_90, few
# enough that per-thread loops (pooling windows, softmax rows) keep their registers.
BLOCK_THREADS = 256
WARP = 32


def block_threads(n: int) -> int:
    """Threads per block for ``n`` parallel iterations: whole warps, at most BLOCK_THREADS."""
    return min(BLOCK_THREADS, max(WARP, -(-n // WARP) * WARP))


def gpu_map(kernel: Kernel, names: list[str]) -> Kernel:
    """Fuse the parallel-legal prefix of the band ``names`` and bind it to blocks x threads."""
    s = Schedule(kernel)
    legal: list[str] = []
    for name in names:
        try:
            s.check_parallel(name)
        except ScheduleError:
            break
        if legal and not (isinstance(s.loop(legal[-1]).body, For)
                          and s.loop(legal[-1]).body.var.name == name):
            break
        if legal and const_value(s.loop(name).extent) is None:
            break
        legal.append(name)
    if not legal or any(const_value(s.loop(n).extent) == 0 for n in legal):
        return kernel           # nothing to map (or an empty tensor: the kernel does nothing)
    fused = legal[0]
    for nxt in legal[1:]:
        fused = s.fuse(fused, nxt)
    n = const_value(s.loop(fused).extent)
    if n is None:
        raise ScheduleError(f"kernel {kernel.name}: GPU grid loop '{fused}' needs a constant "
                            f"extent")
    outer, inner = s.split(fused, block_threads(n), mode="guard")
    s.bind(outer, "gpu_block")
    s.bind(inner, "gpu_thread")
    return s.kernel
