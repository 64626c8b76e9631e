"""Reductions along axes: Softmax/LogSoftmax/Hardmax, the Reduce* family, ArgMax/ArgMin, TopK.

The Reduce* ops take their axes as an optional constant input (ONNX opset 18 form), with
``keepdims`` and ``noop_with_empty_axes`` attributes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, normalize_axis, register


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) if x.dtype.kind == "f" else x


# ---- Softmax family ------------------------------------------------------------------------------

def _infer_softmax(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    ctx.check(t.dtype.is_float, f"element type {t.dtype} not supported (needs float)")
    ctx.check(t.rank >= 1, "input must have rank >= 1")
    normalize_axis(ctx, ctx["axis"], t.rank)
    return [t]


def _softmax(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    axis = ctx["axis"]
    xf = _f64(x)
    with np.errstate(all="ignore"):
        e = np.exp(xf - np.max(xf, axis=axis, keepdims=True))
        return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def _log_softmax(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    axis = ctx["axis"]
    xf = _f64(x)
    with np.errstate(all="ignore"):
        s = xf - np.max(xf, axis=axis, keepdims=True)
        return (s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))).astype(x.dtype)


def _hardmax(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    axis = ctx["axis"] % x.ndim
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)     # first maximum wins
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, 1, axis=axis)
    return out


for _name, _ref in (("Softmax", _softmax), ("LogSoftmax", _log_softmax), ("Hardmax", _hardmax)):
    register(OpDef(_name, infer=_infer_softmax, reference=_ref,
                   attrs={"axis": Attr("int", -1)}))


# ---- Reduce* -------------------------------------------------------------------------------------

def reduce_axes(ctx: OpContext, rank: int) -> tuple[int, ...] | None:
    """The normalized axes a Reduce* node reduces over; None when it is the identity."""
    ctx.check(ctx["keepdims"] in (0, 1), f"keepdims must be 0 or 1, got {ctx['keepdims']}")
    ctx.check(ctx["noop_with_empty_axes"] in (0, 1), "noop_with_empty_axes must be 0 or 1")
    axes: list[int] = []
    if ctx.has(1):
        raw = ctx.const(1, "axes")
        ctx.check(raw.dtype.kind == "i" and raw.ndim <= 1,
                  f"axes must be a 1-D integer tensor, got {raw.dtype}{list(raw.shape)}")
        axes = [normalize_axis(ctx, int(a), rank, "reduction axis") for a in raw.reshape(-1)]
        ctx.check(len(set(axes)) == len(axes), f"axes {raw.tolist()} repeat an axis")
    if not axes:
        if ctx["noop_with_empty_axes"]:
            return None
        axes = list(range(rank))
    return tuple(sorted(axes))


def _reduce_shape(shape: tuple[int, ...], axes: tuple[int, ...], keep: bool) -> tuple[int, ...]:
    if keep:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _make_reduce(name: str, fn: Callable[[np.ndarray, tuple[int, ...]], np.ndarray],
                 allow_bool: bool = False) -> None:
    """Register a Reduce* op; ``fn(x, axes)`` reduces with keepdims=True."""

    def infer(ctx: OpContext) -> list[TensorType]:
        t = ctx.type(0)
        ok = t.dtype.is_float or t.dtype.is_int or (allow_bool and t.dtype is DType.bool)
        ctx.check(ok, f"element type {t.dtype} not supported")
        axes = reduce_axes(ctx, t.rank)
        if axes is None:
            return [t]
        return [TensorType(t.dtype, _reduce_shape(t.shape, axes, bool(ctx["keepdims"])))]

    def reference(ctx: OpContext, x: np.ndarray, axes_in: np.ndarray | None = None) -> np.ndarray:
        axes = reduce_axes(ctx, x.ndim)
        if axes is None:
            return x.copy()
        with np.errstate(all="ignore"):
            out = np.asarray(fn(_f64(x), axes))
        if not ctx["keepdims"]:
            out = out.reshape(_reduce_shape(x.shape, axes, False))
        return out.astype(x.dtype)

    register(OpDef(name, infer=infer, reference=reference, inputs=(1, 2),
                   attrs={"keepdims": Attr("int", 1), "noop_with_empty_axes": Attr("int", 0)}))


def _extreme(x: np.ndarray, axes: tuple[int, ...], biggest: bool) -> np.ndarray:
    # An empty reduction gives the identity of max/min: -inf/+inf (the type's limit for ints).
    if x.dtype.kind == "f":
        init = -np.inf if biggest else np.inf
    elif x.dtype.kind == "b":
        init = not biggest
    else:
        init = np.iinfo(x.dtype).min if biggest else np.iinfo(x.dtype).max
    fn = np.max if biggest else np.min
    return fn(x, axis=axes, keepdims=True, initial=init)


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)      # all -inf (or empty) stays -inf, inf stays inf
    return np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m


def _sum(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.sum(x, axis=axes, keepdims=True)


_make_reduce("ReduceSum", _sum)
_make_reduce("ReduceMean", lambda x, a: np.mean(x, axis=a, keepdims=True))
_make_reduce("ReduceMax", lambda x, a: _extreme(x, a, True), allow_bool=True)
_make_reduce("ReduceMin", lambda x, a: _extreme(x, a, False), allow_bool=True)
_make_reduce("ReduceProd", lambda x, a: np.prod(x, axis=a, keepdims=True))
_make_reduce("ReduceL1", lambda x, a: _sum(np.abs(x), a))
_make_reduce("ReduceL2", lambda x, a: np.sqrt(_sum(x * x, a)))
_make_reduce("ReduceSumSquare", lambda x, a: _sum(x * x, a))
_make_reduce("ReduceLogSum", lambda x, a: np.log(_sum(x, a)))
_make_reduce("ReduceLogSumExp", _log_sum_exp)


# ---- ArgMax / ArgMin -----------------------------------------------------------------------------

def _infer_arg(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    ctx.check(t.dtype.is_float or t.dtype.is_int, f"element type {t.dtype} not supported")
    ctx.check(t.rank >= 1, "input must have rank >= 1")
    for key in ("keepdims", "select_last_index"):
        ctx.check(ctx[key] in (0, 1), f"{key} must be 0 or 1, got {ctx[key]}")
    axis = normalize_axis(ctx, ctx["axis"], t.rank)
    ctx.check(t.shape[axis] > 0, f"cannot take the arg of an empty axis {axis}")
    return [TensorType(DType.int64, _reduce_shape(t.shape, (axis,), bool(ctx["keepdims"])))]


def _make_arg(name: str, fn: Callable) -> None:
    def reference(ctx: OpContext, x: np.ndarray) -> np.ndarray:
        axis = ctx["axis"] % x.ndim
        if ctx["select_last_index"]:
            flipped = np.flip(x, axis)
            idx = x.shape[axis] - 1 - fn(flipped, axis=axis, keepdims=True)
        else:
            idx = fn(x, axis=axis, keepdims=True)
        if not ctx["keepdims"]:
            idx = np.squeeze(idx, axis)
        return np.asarray(idx).astype(np.int64)

    register(OpDef(name, infer=_infer_arg, reference=reference,
                   attrs={"axis": Attr("int", 0), "keepdims": Attr("int", 1),
                          "select_last_index": Attr("int", 0)}))


_make_arg("ArgMax", np.argmax)
_make_arg("ArgMin", np.argmin)


# ---- TopK ----------------------------------------------------------------------------------------

def _topk_k(ctx: OpContext) -> tuple[int, int]:
    t = ctx.type(0)
    ctx.check(t.dtype.is_float or t.dtype.is_int, f"element type {t.dtype} not supported")
    ctx.check(t.rank >= 1, "input must have rank >= 1")
    for key in ("largest", "sorted"):
        ctx.check(ctx[key] in (0, 1), f"{key} must be 0 or 1, got {ctx[key]}")
    axis = normalize_axis(ctx, ctx["axis"], t.rank)
    k = ctx.const(1, "k")
    ctx.check(k.dtype.kind == "i" and k.size == 1, "k must be a single integer")
    k = int(k.reshape(-1)[0])
    ctx.check(0 <= k <= t.shape[axis], f"k={k} out of range for axis {axis} of size "
                                       f"{t.shape[axis]}")
    return axis, k


def _infer_topk(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    axis, k = _topk_k(ctx)
    shape = t.shape[:axis] + (k,) + t.shape[axis + 1:]
    return [TensorType(t.dtype, shape), TensorType(DType.int64, shape)]


def _topk(ctx: OpContext, x: np.ndarray, k_in: np.ndarray) -> list[np.ndarray]:
    axis, k = _topk_k(ctx)
    # A stable sort keeps equal values in index order (lower index first), as ONNX requires;
    # reversing the order for largest by -x (floats) or ~x (integers: no overflow) keeps that.
    keys = x
    if ctx["largest"]:
        keys = -x if x.dtype.kind == "f" else ~x
    idx = np.argsort(keys, axis=axis, kind="stable")
    idx = np.take(idx, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


register(OpDef("TopK", infer=_infer_topk, reference=_topk, inputs=(2, 2), outputs=(2, 2),
               attrs={"axis": Attr("int", -1), "largest": Attr("int", 1),
                      "sorted": Attr("int", 1)},
               doc="k must be a constant; results are always sorted (sorted=0 leaves the "
                   "order unspecified, so sorted order is valid)"))
