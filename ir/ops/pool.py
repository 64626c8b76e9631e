"""Pooling: MaxPool (with optional Indices), AveragePool, LpPool and their Global forms.

Windows follow onnxruntime's rules (which the ONNX spec and node tests share): a window starts at
``o * stride - pad_begin`` and reads ``kernel`` positions ``dilation`` apart; positions outside
the input are skipped (MaxPool, LpPool) or, for AveragePool with count_include_pad, counted in
the divisor while they lie in the declared pads. With ceil_mode the last window may run past the
end pad, but must start inside the input or the begin pad.
"""
from __future__ import annotations

from math import prod

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, register
from .spatial import WINDOW_ATTRS, Window, acc_dtype, check_input, kernel_from_attr, \
    pad_spatial, resolve_window


def _axis_positions(win: Window, axis: int) -> np.ndarray:
    """(out, kernel) matrix of the unpadded input coordinates each window reads along ``axis``."""
    return win.input_coords(axis, 0)[:, None] \
        + np.arange(win.kernel[axis])[None, :] * win.dilations[axis]


def _axis_counts(win: Window, axis: int, size: int, include_pad: bool) -> np.ndarray:
    """Per output index along ``axis``: how many window positions count (input, or pads too)."""
    pos = _axis_positions(win, axis)
    lo, hi = (-win.begin(axis), size + win.end(axis)) if include_pad else (0, size)
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def _window(ctx: OpContext, shape: tuple[int, ...]) -> Window:
    ceil_mode = ctx["ceil_mode"]
    ctx.check(ceil_mode in (0, 1), f"ceil_mode must be 0 or 1, got {ceil_mode}")
    kernel = kernel_from_attr(ctx, len(shape) - 2, None)
    return resolve_window(ctx, shape, kernel, bool(ceil_mode))


def _infer_pool(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X", float_only=ctx.op.name != "MaxPool")
    ctx.check(x.dtype is not DType.bool, "input X must be numeric, got bool")
    win = _window(ctx, x.shape)
    for axis, size in enumerate(x.shape[2:]):
        empty = np.flatnonzero(_axis_counts(win, axis, size, False) == 0)
        ctx.check(not len(empty), f"windows {empty[:8].tolist()} along spatial axis {axis} "
                  "cover only "
                  f"padding (pads {list(win.pads)}, kernel {list(win.kernel)}, dilations "
                  f"{list(win.dilations)}, input size {size}): pads must be smaller than the "
                  "kernel")
    if ctx.op.name == "MaxPool":
        ctx.check(ctx["storage_order"] in (0, 1), f"storage_order must be 0 (row major) or 1 "
                  f"(column major), got {ctx['storage_order']}")
    if ctx.op.name == "LpPool":
        ctx.check(ctx["p"] >= 1, f"p must be >= 1, got {ctx['p']}")
    if ctx.op.name == "AveragePool":
        ctx.check(ctx["count_include_pad"] in (0, 1), "count_include_pad must be 0 or 1, got "
                  f"{ctx['count_include_pad']}")
    out = TensorType(x.dtype, x.shape[:2] + win.out)
    return [out, TensorType(DType.int64, out.shape)]


def _lowest(dtype: np.dtype):
    if np.issubdtype(dtype, np.floating):
        return -np.inf
    return np.iinfo(dtype).min


def _max_indices(x: np.ndarray, xp: np.ndarray, win: Window, column_major: bool) -> np.ndarray:
    """ONNX MaxPool Indices: flat index (over N, C and the spatial axes) of the first maximum."""
    spatial = x.shape[2:]
    nd = win.nd
    # Spatial strides of the flat index: row major, or column major within each (n, c) image.
    if column_major:
        steps = [prod(spatial[:a]) for a in range(nd)]
    else:
        steps = [prod(spatial[a + 1:]) for a in range(nd)]
    best = np.full(x.shape[:2] + win.out, _lowest(x.dtype), x.dtype)
    found = np.zeros(best.shape, bool)
    flat = np.zeros(best.shape, np.int64)
    for pos in win.positions():
        cand = xp[win.slices(pos)]
        index = np.zeros(win.out, np.int64)
        valid = np.ones(win.out, bool)
        for a in range(nd):
            coord = win.input_coords(a, pos[a]).reshape([-1 if i == a else 1 for i in range(nd)])
            index = index + coord * steps[a]
            valid = valid & (coord >= 0) & (coord < spatial[a])
        better = valid & ((cand > best) | ~found)
        best = np.where(better, cand, best)
        flat = np.where(better, index, flat)
        found |= valid
    images = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[:2]
                                                                       + (1,) * nd)
    return flat + images * prod(spatial)


def _max_pool(ctx: OpContext, x: np.ndarray):
    win = _window(ctx, x.shape)
    xp = pad_spatial(x, win, _lowest(x.dtype), extra_end=True)
    y = None
    for pos in win.positions():
        view = xp[win.slices(pos)]
        y = view.copy() if y is None else np.maximum(y, view)
    if ctx.num_outputs < 2:
        return y
    return [y, _max_indices(x, xp, win, ctx["storage_order"] == 1)]


def _window_sum(x: np.ndarray, win: Window, power: int | None = None) -> np.ndarray:
    """Sum (of |x|**power when given) over each window, zero padding, in float64."""
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc, copy=False)
    if power is not None:
        xa = np.abs(xa) ** power
    xp = pad_spatial(xa, win, 0, extra_end=True)
    total = np.zeros(x.shape[:2] + win.out, acc)
    for pos in win.positions():
        total += xp[win.slices(pos)]
    return total


def _average_pool(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    win = _window(ctx, x.shape)
    total = _window_sum(x, win)
    count = np.ones((), np.int64)
    for a, size in enumerate(x.shape[2:]):
        c = _axis_counts(win, a, size, ctx["count_include_pad"] == 1)
        count = np.multiply.outer(count, c)
    return (total / count).astype(x.dtype)


def _lp_pool(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    win = _window(ctx, x.shape)
    p = ctx["p"]
    return (_window_sum(x, win, p) ** (1.0 / p)).astype(x.dtype)


_POOL_ATTRS = {**WINDOW_ATTRS, "ceil_mode": Attr("int", 0)}

register(OpDef("MaxPool", infer=_infer_pool, reference=_max_pool, outputs=(1, 2),
               attrs={**_POOL_ATTRS, "storage_order": Attr("int", 0)},
               doc="N-d max pooling, optionally with the flat indices of the maxima."))
register(OpDef("AveragePool", infer=_infer_pool, reference=_average_pool,
               attrs={**_POOL_ATTRS, "count_include_pad": Attr("int", 0)},
               doc="N-d average pooling."))
register(OpDef("LpPool", infer=_infer_pool, reference=_lp_pool,
               attrs={**_POOL_ATTRS, "p": Attr("int", 2)},
               doc="N-d Lp-norm pooling: (sum |x|^p)^(1/p) over each window."))


# ---- global pools: one window covering all spatial axes -------------------------------------

def _infer_global(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X")
    if ctx.op.name == "GlobalLpPool":
        ctx.check(ctx["p"] >= 1, f"p must be >= 1, got {ctx['p']}")
    return [TensorType(x.dtype, x.shape[:2] + (1,) * (x.rank - 2))]


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _global_average(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    xa = x.astype(acc_dtype(x.dtype), copy=False)
    return xa.mean(axis=_spatial_axes(x), keepdims=True).astype(x.dtype)


def _global_max(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    return x.max(axis=_spatial_axes(x), keepdims=True)


def _global_lp(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    p = ctx["p"]
    xa = np.abs(x.astype(acc_dtype(x.dtype), copy=False)) ** p
    return (xa.sum(axis=_spatial_axes(x), keepdims=True) ** (1.0 / p)).astype(x.dtype)


register(OpDef("GlobalAveragePool", infer=_infer_global, reference=_global_average,
               doc="Mean over all spatial axes (kept as size-1 axes)."))
register(OpDef("GlobalMaxPool", infer=_infer_global, reference=_global_max,
               doc="Max over all spatial axes (kept as size-1 axes)."))
register(OpDef("GlobalLpPool", infer=_infer_global, reference=_global_lp,
               attrs={"p": Attr("int", 2)},
               doc="Lp norm over all spatial axes (kept as size-1 axes)."))
