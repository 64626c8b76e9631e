"""Ops that select, join or rearrange tensors: Concat, Split, Slice, Gather, GatherElements, Tile,
DepthToSpace, SpaceToDepth.

Inputs that determine the output shape (Split split, Slice starts/ends/axes/steps, Tile repeats)
must be compile-time constants.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.types import MAX_ELEMENTS, TensorType
from .registry import Attr, OpContext, OpDef, normalize_axis, register
from .shape import int_list, unique_axes


# ---- Concat --------------------------------------------------------------------------------------

def _infer_concat(ctx: OpContext) -> list[TensorType]:
    types = [ctx.type(i) for i in range(len(ctx.types))]
    first = types[0]
    ctx.check(first.rank >= 1, "cannot concatenate scalars")
    axis = normalize_axis(ctx, ctx["axis"], first.rank)
    total = 0
    for i, t in enumerate(types):
        ctx.check(t.dtype == first.dtype, f"input {i} is {t.dtype}, input 0 is {first.dtype}")
        same = t.rank == first.rank and all(
            a == b for j, (a, b) in enumerate(zip(t.shape, first.shape)) if j != axis)
        ctx.check(same, f"input {i} shape {list(t.shape)} does not match input 0 "
                        f"{list(first.shape)} outside axis {axis}")
        total += t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    return [TensorType(first.dtype, tuple(shape))]


register(OpDef("Concat", infer=_infer_concat, inputs=(1, -1), attrs={"axis": Attr("int")},
               reference=lambda ctx, *xs: np.concatenate(xs, axis=ctx["axis"])))


# ---- Split ---------------------------------------------------------------------------------------

def _split_sizes(ctx: OpContext) -> tuple[int, list[int]]:
    t = ctx.type(0)
    ctx.check(t.rank >= 1, "cannot split a scalar")
    axis = normalize_axis(ctx, ctx["axis"], t.rank)
    dim, n = t.shape[axis], ctx.num_outputs
    if ctx.has(1):
        sizes = int_list(ctx, 1, "split")
        ctx.check(ctx["num_outputs"] is None, "give either the split input or num_outputs")
        ctx.check(len(sizes) == n, f"split {sizes} has {len(sizes)} parts for {n} outputs")
        ctx.check(all(s >= 0 for s in sizes), f"split {sizes} has a negative size")
        ctx.check(sum(sizes) == dim, f"split {sizes} sums to {sum(sizes)}, but axis {axis} "
                                     f"has size {dim}")
        return axis, sizes
    if ctx["num_outputs"] is not None:
        k = ctx["num_outputs"]
        ctx.check(k == n, f"num_outputs={k} but the node has {n} outputs")
        ctx.check(k <= dim or dim == 0, f"cannot split size {dim} into {k} parts")
        chunk = -(-dim // k)        # ceil: the last part is smaller when uneven
        return axis, [min(chunk, max(dim - i * chunk, 0)) for i in range(k)]
    ctx.check(dim % n == 0, f"axis {axis} of size {dim} does not split evenly into {n} outputs")
    return axis, [dim // n] * n


def _infer_split(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    axis, sizes = _split_sizes(ctx)
    out = []
    for s in sizes:
        shape = list(t.shape)
        shape[axis] = s
        out.append(TensorType(t.dtype, tuple(shape)))
    return out


def _split(ctx: OpContext, x: np.ndarray, split=None) -> list[np.ndarray]:
    axis, sizes = _split_sizes(ctx)
    return [p.copy() for p in np.split(x, np.cumsum(sizes)[:-1], axis=axis)]


register(OpDef("Split", infer=_infer_split, reference=_split, inputs=(1, 2), outputs=(1, -1),
               attrs={"axis": Attr("int", 0), "num_outputs": Attr("int", None)}))


# ---- Slice ---------------------------------------------------------------------------------------

def slice_ranges(ctx: OpContext) -> list[slice]:
    """Per-axis Python slices with ONNX clamping (negative indices count from the end)."""
    t = ctx.type(0)
    starts = int_list(ctx, 1, "starts")
    ends = int_list(ctx, 2, "ends")
    ctx.check(len(starts) == len(ends), f"starts {starts} and ends {ends} differ in length")
    axes = int_list(ctx, 3, "axes") if ctx.has(3) else list(range(len(starts)))
    steps = int_list(ctx, 4, "steps") if ctx.has(4) else [1] * len(starts)
    ctx.check(len(axes) == len(starts) and len(steps) == len(starts),
              f"starts, ends, axes, steps lengths differ: {len(starts)}, {len(ends)}, "
              f"{len(axes)}, {len(steps)}")
    axes = unique_axes(ctx, axes, t.rank)
    out = [slice(None)] * t.rank
    for a, lo, hi, step in zip(axes, starts, ends, steps):
        ctx.check(step != 0, f"step for axis {a} is 0")
        dim = t.shape[a]
        if dim == 0:
            out[a] = slice(0, 0, 1)
            continue
        lo = lo + dim if lo < 0 else lo
        hi = hi + dim if hi < 0 else hi
        if step > 0:
            lo, hi = min(max(lo, 0), dim), min(max(hi, 0), dim)
        else:
            lo, hi = min(max(lo, 0), dim - 1), min(max(hi, -1), dim - 1)
        out[a] = slice(lo, None if hi < 0 else hi, step)
    return out


def _infer_slice(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    ranges = slice_ranges(ctx)
    shape = tuple(len(range(*s.indices(d))) for s, d in zip(ranges, t.shape))
    return [TensorType(t.dtype, shape)]


register(OpDef("Slice", infer=_infer_slice, inputs=(3, 5),
               reference=lambda ctx, x, *rest: x[tuple(slice_ranges(ctx))].copy()))


# ---- Gather --------------------------------------------------------------------------------------

def _infer_gather(ctx: OpContext) -> list[TensorType]:
    t, idx = ctx.type(0), ctx.type(1)
    ctx.check(t.rank >= 1, "cannot gather from a scalar")
    ctx.check(idx.dtype.np.kind == "i", f"indices must be int32/int64, got {idx.dtype}")
    axis = normalize_axis(ctx, ctx["axis"], t.rank)
    values = ctx.const_or_none(1)
    if values is not None and values.size:
        dim = t.shape[axis]
        ctx.check(int(values.min()) >= -dim and int(values.max()) < dim,
                  f"indices out of range [{-dim}, {dim - 1}] for axis {axis}")
    return [TensorType(t.dtype, t.shape[:axis] + idx.shape + t.shape[axis + 1:])]


def _gather(ctx: OpContext, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    axis = ctx["axis"] % x.ndim
    dim = x.shape[axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise IndexError(f"Gather index out of range [{-dim}, {dim - 1}]")
    return np.take(x, np.where(idx < 0, idx + dim, idx).astype(np.int64), axis=axis)


register(OpDef("Gather", infer=_infer_gather, reference=_gather, inputs=(2, 2),
               attrs={"axis": Attr("int", 0)}))


def _infer_gather_elements(ctx: OpContext) -> list[TensorType]:
    t, idx = ctx.type(0), ctx.type(1)
    ctx.check(t.rank >= 1 and idx.rank == t.rank,
              f"indices rank {idx.rank} must equal data rank {t.rank} (>= 1)")
    ctx.check(idx.dtype.np.kind == "i", f"indices must be int32/int64, got {idx.dtype}")
    axis = normalize_axis(ctx, ctx["axis"], t.rank)
    ok = all(i <= d for k, (i, d) in enumerate(zip(idx.shape, t.shape)) if k != axis)
    ctx.check(ok, f"indices shape {list(idx.shape)} exceeds data shape {list(t.shape)} "
                  f"outside axis {axis}")
    return [TensorType(t.dtype, idx.shape)]


def _gather_elements(ctx: OpContext, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    axis = ctx["axis"] % x.ndim
    dim = x.shape[axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise IndexError(f"GatherElements index out of range [{-dim}, {dim - 1}]")
    idx = np.where(idx < 0, idx + dim, idx).astype(np.int64)
    # Indices may be smaller than the data on the other axes: take the leading block.
    block = x[tuple(slice(0, n) if k != axis else slice(None) for k, n in enumerate(idx.shape))]
    return np.take_along_axis(block, idx, axis=axis)


register(OpDef("GatherElements", infer=_infer_gather_elements, reference=_gather_elements,
               inputs=(2, 2), attrs={"axis": Attr("int", 0)}))


# ---- Tile ----------------------------------------------------------------------------------------

def _tile_shape(ctx: OpContext) -> tuple[int, ...]:
    t = ctx.type(0)
    reps = int_list(ctx, 1, "repeats")
    ctx.check(len(reps) == t.rank, f"repeats {reps} must have one entry per axis ({t.rank})")
    ctx.check(all(0 <= r <= MAX_ELEMENTS for r in reps), f"repeats {reps} has an invalid entry")
    return tuple(d * r for d, r in zip(t.shape, reps))


register(OpDef("Tile", inputs=(2, 2),
               infer=lambda ctx: [TensorType(ctx.type(0).dtype, _tile_shape(ctx))],
               reference=lambda ctx, x, r: np.tile(x, [int(v) for v in r.reshape(-1)])))


# ---- DepthToSpace / SpaceToDepth -----------------------------------------------------------------

def _infer_d2s(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    b = ctx["blocksize"]
    ctx.check(t.rank == 4, f"input must be 4-D NCHW, got shape {list(t.shape)}")
    ctx.check(b >= 1, f"blocksize must be >= 1, got {b}")
    ctx.check(ctx["mode"] in ("DCR", "CRD"), f"mode must be DCR or CRD, got {ctx['mode']!r}")
    n, c, h, w = t.shape
    ctx.check(c % (b * b) == 0, f"channels {c} not divisible by blocksize^2 = {b * b}")
    return [TensorType(t.dtype, (n, c // (b * b), h * b, w * b))]


def _d2s(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    b = ctx["blocksize"]
    if ctx["mode"] == "DCR":      # channel index = (bh * b + bw) * C' + c'
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:                         # CRD: channel index = c' * b * b + bh * b + bw
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(y.reshape(n, c // (b * b), h * b, w * b))


register(OpDef("DepthToSpace", infer=_infer_d2s, reference=_d2s,
               attrs={"blocksize": Attr("int"), "mode": Attr("str", "DCR")}))


def _infer_s2d(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    b = ctx["blocksize"]
    ctx.check(t.rank == 4, f"input must be 4-D NCHW, got shape {list(t.shape)}")
    ctx.check(b >= 1, f"blocksize must be >= 1, got {b}")
    ctx.check(ctx["mode"] in ("DCR", "CRD"), f"mode must be DCR or CRD, got {ctx['mode']!r}")
    n, c, h, w = t.shape
    ctx.check(h % b == 0 and w % b == 0, f"spatial size {h}x{w} not divisible by blocksize {b}")
    return [TensorType(t.dtype, (n, c * b * b, h // b, w // b))]


def _s2d(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    b = ctx["blocksize"]
    y = x.reshape(n, c, h // b, b, w // b, b)
    # The inverse of DepthToSpace in the same mode.
    y = y.transpose(0, 3, 5, 1, 2, 4) if ctx["mode"] == "DCR" else y.transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(y.reshape(n, c * b * b, h // b, w // b))


register(OpDef("SpaceToDepth", infer=_infer_s2d, reference=_s2d,
               attrs={"blocksize": Attr("int"), "mode": Attr("str", "DCR")}))
