"""Ops that only move or relabel data: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Expand,
Identity, Dropout (inference form), and the shape queries Shape and Size.

Shapes must be static, so every shape-determining input (Reshape/Expand shape, Squeeze/Unsqueeze
axes) must be a compile-time constant.
"""
from __future__ import annotations

from math import prod

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import MAX_ELEMENTS, TensorType
from .registry import Attr, OpContext, OpDef, normalize_axis, register, same_as_input


def int_list(ctx: OpContext, i: int, what: str, rank: int | None = 1) -> list[int]:
    """A constant integer input (1-D unless ``rank`` is None) as a list of Python ints."""
    v = ctx.const(i, what)
    ctx.check(v.dtype.kind in "iu", f"{what} must be an integer tensor, got {v.dtype}")
    ctx.check(rank is None or v.ndim == rank, f"{what} must be 1-D, got shape {list(v.shape)}")
    return [int(a) for a in v.reshape(-1)]


def unique_axes(ctx: OpContext, axes: list[int], rank: int, what: str = "axes") -> list[int]:
    out = [normalize_axis(ctx, a, rank, "axis") for a in axes]
    ctx.check(len(set(out)) == len(out), f"{what} {axes} repeat an axis")
    return out


# ---- Flatten -------------------------------------------------------------------------------------

def _infer_flatten(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    axis = ctx["axis"]
    ctx.check(-t.rank <= axis <= t.rank, f"axis {axis} out of range for rank {t.rank}")
    if axis < 0:
        axis += t.rank
    return [TensorType(t.dtype, (prod(t.shape[:axis]), prod(t.shape[axis:])))]


register(OpDef("Flatten", infer=_infer_flatten, attrs={"axis": Attr("int", 1)},
               reference=lambda ctx, x: x.reshape(_infer_flatten(ctx)[0].shape)))


# ---- Reshape -------------------------------------------------------------------------------------

def reshape_target(ctx: OpContext, shape: tuple[int, ...], spec: list[int],
                   allowzero: int) -> tuple[int, ...]:
    """Resolve a Reshape shape spec (0 copies a dim unless allowzero, one -1 is inferred)."""
    ctx.check(allowzero in (0, 1), f"allowzero must be 0 or 1, got {allowzero}")
    out: list[int] = []
    infer_at = -1
    for i, d in enumerate(spec):
        if d == -1:
            ctx.check(infer_at < 0, f"shape {spec} has more than one -1")
            infer_at = i
            out.append(1)
        elif d == 0 and not allowzero:
            ctx.check(i < len(shape), f"shape {spec}: 0 at position {i} copies a dimension "
                                      f"the input (rank {len(shape)}) does not have")
            out.append(shape[i])
        else:
            ctx.check(d >= 0, f"shape {spec} has a negative dimension {d}")
            ctx.check(d <= MAX_ELEMENTS, f"shape {spec} has an absurd dimension {d}")
            out.append(d)
    total = prod(shape)
    if infer_at >= 0:
        ctx.check(not (allowzero and 0 in spec), f"shape {spec} combines -1 with 0 "
                                                 "under allowzero=1")
        rest = prod(out)
        ctx.check(rest > 0 and total % rest == 0,
                  f"cannot reshape {list(shape)} ({total} elements) to {spec}")
        out[infer_at] = total // rest
    ctx.check(prod(out) == total, f"cannot reshape {list(shape)} ({total} elements) to "
                                  f"{spec} ({prod(out)} elements)")
    return tuple(out)


def _infer_reshape(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    spec = int_list(ctx, 1, "shape")
    return [TensorType(t.dtype, reshape_target(ctx, t.shape, spec, ctx["allowzero"]))]


register(OpDef("Reshape", infer=_infer_reshape, inputs=(2, 2),
               attrs={"allowzero": Attr("int", 0)},
               reference=lambda ctx, x, s: x.reshape(_infer_reshape(ctx)[0].shape)))


# ---- Transpose -----------------------------------------------------------------------------------

def _perm(ctx: OpContext, rank: int) -> list[int]:
    perm = ctx["perm"]
    if perm is None:
        return list(range(rank))[::-1]
    ctx.check(sorted(perm) == list(range(rank)),
              f"perm {perm} is not a permutation of the {rank} axes")
    return perm


def _infer_transpose(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    return [TensorType(t.dtype, tuple(t.shape[p] for p in _perm(ctx, t.rank)))]


register(OpDef("Transpose", infer=_infer_transpose, attrs={"perm": Attr("ints", None)},
               reference=lambda ctx, x: np.ascontiguousarray(
                   np.transpose(x, _perm(ctx, x.ndim)))))


# ---- Squeeze / Unsqueeze -------------------------------------------------------------------------

def _squeeze_shape(ctx: OpContext) -> tuple[int, ...]:
    t = ctx.type(0)
    if ctx.has(1):
        axes = unique_axes(ctx, int_list(ctx, 1, "axes"), t.rank)
        for a in axes:
            ctx.check(t.shape[a] == 1, f"cannot squeeze axis {a} of size {t.shape[a]} "
                                       f"(shape {list(t.shape)})")
    else:
        axes = [i for i, d in enumerate(t.shape) if d == 1]
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _unsqueeze_shape(ctx: OpContext) -> tuple[int, ...]:
    t = ctx.type(0)
    axes = int_list(ctx, 1, "axes")
    rank = t.rank + len(axes)
    axes = unique_axes(ctx, axes, rank)
    rest = iter(t.shape)
    return tuple(1 if i in axes else next(rest) for i in range(rank))


register(OpDef("Squeeze", inputs=(1, 2),
               infer=lambda ctx: [TensorType(ctx.type(0).dtype, _squeeze_shape(ctx))],
               reference=lambda ctx, x, a=None: x.reshape(_squeeze_shape(ctx))))
register(OpDef("Unsqueeze", inputs=(2, 2),
               infer=lambda ctx: [TensorType(ctx.type(0).dtype, _unsqueeze_shape(ctx))],
               reference=lambda ctx, x, a: x.reshape(_unsqueeze_shape(ctx))))


# ---- Expand --------------------------------------------------------------------------------------

def _expand_shape(ctx: OpContext) -> tuple[int, ...]:
    t = ctx.type(0)
    spec = int_list(ctx, 1, "shape")
    for d in spec:
        ctx.check(0 <= d <= MAX_ELEMENTS, f"shape {spec} has an invalid dimension {d}")
    # Bidirectional broadcast: a 1 in the requested shape keeps the input's dimension.
    rank = max(t.rank, len(spec))
    a = (1,) * (rank - t.rank) + t.shape
    b = (1,) * (rank - len(spec)) + tuple(spec)
    out = []
    for x, y in zip(a, b):
        ctx.check(x == y or x == 1 or y == 1,
                  f"input shape {list(t.shape)} cannot expand to {spec}")
        out.append(x if y == 1 else y)
    return tuple(out)


register(OpDef("Expand", inputs=(2, 2),
               infer=lambda ctx: [TensorType(ctx.type(0).dtype, _expand_shape(ctx))],
               reference=lambda ctx, x, s: np.broadcast_to(x, _expand_shape(ctx)).copy()))


# ---- Identity / Dropout --------------------------------------------------------------------------

register(OpDef("Identity", infer=same_as_input(0), reference=lambda ctx, x: x.copy()))


def _infer_dropout(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    ctx.check(t.dtype.is_float, f"element type {t.dtype} not supported (needs float)")
    ratio = 0.5
    if ctx.has(1):
        ctx.check(ctx.type(1).size == 1, "ratio must be a scalar")
        r = ctx.const_or_none(1)
        ratio = 0.5 if r is None else float(r.reshape(-1)[0])
        ctx.check(0.0 <= ratio < 1.0, f"ratio must be in [0, 1), got {ratio}")
    if ctx.has(2):
        ctx.check(ctx.type(2).dtype is DType.bool and ctx.type(2).size == 1,
                  "training_mode must be a bool scalar")
        training = bool(ctx.const(2, "training_mode").reshape(-1)[0])
        # Training mode drops random elements: only the trivial ratio 0 is deterministic.
        ctx.check(not training or (ctx.const_or_none(1) is not None and ratio == 0.0),
                  "training-mode Dropout (random masking) is not supported for inference")
    return [t, TensorType(DType.bool, t.shape)]


def _dropout(ctx: OpContext, x: np.ndarray, ratio=None, training=None) -> list[np.ndarray]:
    outs = [x.copy(), np.ones(x.shape, dtype=bool)]
    return outs[: ctx.num_outputs]


register(OpDef("Dropout", infer=_infer_dropout, reference=_dropout, inputs=(1, 3),
               outputs=(1, 2), attrs={"seed": Attr("int", 0)},
               doc="inference form: the identity; the optional mask is all True"))


# ---- Shape / Size --------------------------------------------------------------------------------

def _shape_range(ctx: OpContext, rank: int) -> tuple[int, int]:
    def clamp(v: int) -> int:
        return min(max(v + rank if v < 0 else v, 0), rank)
    end = ctx["end"]
    return clamp(ctx["start"]), rank if end is None else clamp(end)


def _infer_shape(ctx: OpContext) -> list[TensorType]:
    lo, hi = _shape_range(ctx, ctx.type(0).rank)
    return [TensorType(DType.int64, (max(hi - lo, 0),))]


def _shape(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    lo, hi = _shape_range(ctx, x.ndim)
    return np.array(x.shape[lo:hi], dtype=np.int64)


register(OpDef("Shape", infer=_infer_shape, reference=_shape,
               attrs={"start": Attr("int", 0), "end": Attr("int", None)}))
register(OpDef("Size", infer=lambda ctx: [TensorType(DType.int64, ())],
               reference=lambda ctx, x: np.array(x.size, dtype=np.int64)))
