"""Schedules shared by lowering rules: which loops of a kernel may run in parallel.

Rules state the parallel loops once; the target decides what that means. On a CPU the innermost
loop is vectorized and the outer ones fused into one OpenMP-parallel loop (when the kernel is big
enough to pay for a fork/join); on a GPU (``ctx.gpu``) the parallel loops become the grid (see
gpu_schedule.py), every kernel whatever its size.
"""
from __future__ import annotations

from cnncc.ir.loop_walk import const_value
from cnncc.ir.loop import For, Kernel
from cnncc.ir.schedule import Schedule

from .gpu_schedule import gpu_map

# Below this much work per vector lane (elements, or multiply-adds for convs: a kernel's time
# goes as its work over the lanes) a kernel runs on one thread. A fork costs more than the pool's
# call (0.1-0.5 us): the other core must fetch what this one wrote and vice versa. Measured with
# cnncc's pool at 2 threads (Zen 5 VM, AVX-512, 16 lanes; calls after an idle gap, 40 rounds
# interleaved with onnxruntime, ratio cnncc/onnxruntime at 2^15 / 2^17 / 2^19 units): tiny_c3d
# 0.984 / 0.955 / 0.885 (its 35k-element pads took 6-10 us forked, 1.4-2 alone), tiny_resnet
# 0.814 / 0.758 / 0.778, tiny_unet 0.899 / 0.796 / 0.789, all_conv 0.924 / 0.909 / 0.902,
# MobileNetV2 0.826 / 0.768 / 0.780, MobileNetV3-Small 0.651 / 0.600 / 0.599, SqueezeNet 0.918 /
# 0.864 / 0.853, ShuffleNetV2 0.482 / 0.480 / 0.493, EfficientNet-B0 0.835 / 0.832 / 0.828: 2^17
# (2^13 a lane) is at or near the best for every one. AVX2 code (8 lanes) at 2^15 / 2^16 /
# 2^17, ms: tiny_c3d 0.359 / 0.341 / 0.376, tiny_unet 0.090 / 0.083 / 0.085, ShuffleNetV2 1.82 /
# 1.69 / 1.72: 2^16 (2^13 a lane) again. With libgomp, earlier, 2^17 had made ShuffleNetV2 3.6%
# slower than 2^15.
FORK_WORK_PER_LANE = 1 << 13


def parallel_min_work(lanes: int) -> int:
    """Work a kernel needs to run on several threads (2^17 units with 16 lanes, 2^16 with 8)."""
    return FORK_WORK_PER_LANE * lanes


def band(kernel: Kernel) -> list[str]:
    """Names of the perfectly nested loops at the top of the kernel body."""
    names, s = [], kernel.body
    while isinstance(s, For):
        names.append(s.var.name)
        s = s.body
    return names


def fuse_band(s: Schedule, names: list[str]) -> str:
    """Fuse the perfectly nested loops ``names`` (outer first) into one; its name."""
    fused = names[0]
    for nxt in names[1:]:
        fused = s.fuse(fused, nxt)
    return fused


def schedule_map(kernel: Kernel, ctx, work: int, vector_loop: str | None = None) -> Kernel:
    """Elementwise-style schedule of a perfect nest: the innermost loop (or ``vector_loop``)
    split by the vector width with a scalar tail and vectorized, the loops outside it fused
    into one parallel loop when the kernel is big enough. GPU: the whole band is the grid."""
    if ctx.gpu:
        return gpu_map(kernel, band(kernel))
    lanes, threads = ctx.lanes, ctx.threads
    s = Schedule(kernel)
    loops = band(kernel)
    if not loops:
        return kernel
    inner = vector_loop or loops[-1]
    n = const_value(s.loop(inner).extent)
    outer_loops = loops[:loops.index(inner)]
    if n is not None and n >= lanes:
        factor = lanes * 2 if n >= lanes * 4 else lanes
        o, i = s.split(inner, factor, mode="tail")
        s.vectorize(i)
        if not outer_loops:
            outer_loops = [o]
    if threads > 1 and work >= parallel_min_work(lanes) and outer_loops:
        s.parallel(fuse_band(s, outer_loops))
    return s.kernel


def parallel_outer(k: Kernel, names: list[str], ctx, work: int) -> Kernel:
    """The loops ``names`` (a perfectly nested band, outer first) fused and run in parallel:
    OpenMP threads on a CPU when ``work`` pays for it, the grid on a GPU."""
    if ctx.gpu:
        return gpu_map(k, names)
    if ctx.threads <= 1 or work < parallel_min_work(ctx.lanes):
        return k
    s = Schedule(k)
    s.parallel(fuse_band(s, names))
    return s.kernel


def parallel_contiguous(k: Kernel, names: list[str], ctx, work: int) -> Kernel:
    """Like ``parallel_outer``, but each thread runs one contiguous share of the fused range
    (split into ``threads`` parts, the parts run in parallel): for kernels whose task i
    prefetches what task i + 1 reads, which the dynamic schedule's small chunks would hand to
    the other core. On a GPU, or below the work threshold: ``parallel_outer``."""
    if ctx.gpu or ctx.threads <= 1 or work < parallel_min_work(ctx.lanes):
        return parallel_outer(k, names, ctx, work)
    s = Schedule(k)
    fused = fuse_band(s, names)
    n = const_value(s.loop(fused).extent)
    if n is None or n < 2 * ctx.threads:
        s.parallel(fused)
        return s.kernel
    part, _ = s.split(fused, -(-n // ctx.threads), mode="guard")
    s.parallel(part)
    return s.kernel
