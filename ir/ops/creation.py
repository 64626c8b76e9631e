"""Ops that make tensors or change their element type: Constant, ConstantOfShape, Range, Cast,
CastLike.

Element types are those of ``DType``; the 8-bit and 4-bit float/int formats, bfloat16 and strings
are rejected with a CompileError. The ``saturate`` and ``round_mode`` attributes of Cast only
affect those rejected formats, so they are accepted and have no effect.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import MAX_ELEMENTS, TensorType
from .registry import Attr, OpContext, OpDef, register
from .shape import int_list


def _target(ctx: OpContext, code: int) -> DType:
    try:
        return DType.from_onnx(code)
    except TypeError:
        ctx.fail(f"cast to ONNX element type {code} is not supported")


def cast_array(x: np.ndarray, dtype: DType) -> np.ndarray:
    """ONNX Cast: float -> int truncates toward zero; anything -> bool is 'nonzero'."""
    with np.errstate(all="ignore"):
        if dtype is DType.bool:
            return np.asarray(x != 0)
        if x.dtype.kind == "f" and dtype.is_int:
            # Out-of-range and NaN are undefined in ONNX; map them to 0 rather than raise.
            info = np.iinfo(dtype.np)
            ok = np.isfinite(x) & (x >= float(info.min)) & (x <= float(info.max))
            return np.where(ok, np.trunc(np.where(ok, x, 0)), 0).astype(dtype.np)
        return np.asarray(x).astype(dtype.np)


# ---- Cast / CastLike -----------------------------------------------------------------------------

_CAST_ATTRS = {"saturate": Attr("int", 1), "round_mode": Attr("str", "up")}

register(OpDef(
    "Cast", attrs={"to": Attr("int"), **_CAST_ATTRS},
    infer=lambda ctx: [TensorType(_target(ctx, ctx["to"]), ctx.type(0).shape)],
    reference=lambda ctx, x: cast_array(x, _target(ctx, ctx["to"]))))
register(OpDef(
    "CastLike", attrs=dict(_CAST_ATTRS), inputs=(2, 2),
    infer=lambda ctx: [TensorType(ctx.type(1).dtype, ctx.type(0).shape)],
    reference=lambda ctx, x, like: cast_array(x, DType.from_numpy(like.dtype))))


# ---- Constant ------------------------------------------------------------------------------------

_VALUE_KEYS = ("value", "value_float", "value_floats", "value_int", "value_ints",
               "value_string", "value_strings", "sparse_value")


def constant_value(ctx: OpContext) -> np.ndarray:
    """The tensor a Constant node holds (exactly one value attribute must be set)."""
    given = [k for k in _VALUE_KEYS if ctx[k] is not None]
    ctx.check(len(given) == 1, f"exactly one value attribute must be set, got {given}")
    key = given[0]
    v = ctx[key]
    if key == "value":
        try:
            DType.from_numpy(v.dtype)
        except TypeError:
            ctx.fail(f"constant of element type {v.dtype} is not supported")
        return v
    if key == "value_float":
        return np.array(v, dtype=np.float32)
    if key == "value_floats":
        return np.array(v, dtype=np.float32).reshape(-1)
    if key == "value_int":
        return np.array(v, dtype=np.int64)
    if key == "value_ints":
        return np.array(v, dtype=np.int64).reshape(-1)
    ctx.fail(f"'{key}' constants are not supported (strings and sparse tensors)")


register(OpDef(
    "Constant", inputs=(0, 0),
    attrs={"value": Attr("tensor", None), "value_float": Attr("float", None),
           "value_floats": Attr("floats", None), "value_int": Attr("int", None),
           "value_ints": Attr("ints", None), "value_string": Attr("str", None),
           "value_strings": Attr("strs", None), "sparse_value": Attr("tensor", None)},
    infer=lambda ctx: [TensorType(DType.from_numpy(constant_value(ctx).dtype),
                                  constant_value(ctx).shape)],
    reference=lambda ctx: constant_value(ctx).copy()))


# ---- ConstantOfShape -----------------------------------------------------------------------------

def _fill_value(ctx: OpContext) -> np.ndarray:
    v = ctx["value"]
    if v is None:
        return np.zeros((), dtype=np.float32)
    ctx.check(v.size == 1, f"value must hold one element, got shape {list(v.shape)}")
    try:
        DType.from_numpy(v.dtype)
    except TypeError:
        ctx.fail(f"value of element type {v.dtype} is not supported")
    return v.reshape(())


def _cos_shape(ctx: OpContext) -> tuple[int, ...]:
    shape = int_list(ctx, 0, "shape")
    ctx.check(all(0 <= d <= MAX_ELEMENTS for d in shape), f"invalid shape {shape}")
    return tuple(shape)


register(OpDef(
    "ConstantOfShape", attrs={"value": Attr("tensor", None)},
    infer=lambda ctx: [TensorType(DType.from_numpy(_fill_value(ctx).dtype), _cos_shape(ctx))],
    reference=lambda ctx, s: np.full(_cos_shape(ctx), _fill_value(ctx))))


# ---- Range ---------------------------------------------------------------------------------------

def _range_args(ctx: OpContext) -> tuple[DType, list, int]:
    t = ctx.type(0)
    ctx.check(t.dtype.is_float or t.dtype.is_int, f"element type {t.dtype} not supported")
    vals = []
    for i, what in enumerate(("start", "limit", "delta")):
        ti = ctx.type(i)
        ctx.check(ti.dtype == t.dtype and ti.size == 1 and ti.rank <= 1,
                  f"{what} must be a scalar of type {t.dtype}, got {ti}")
        vals.append(ctx.const(i, what).reshape(-1)[0].item())
    start, limit, delta = vals
    ctx.check(delta != 0, "delta is 0")
    ctx.check(all(np.isfinite(v) for v in vals), f"non-finite range {vals}")
    if t.dtype.is_int:
        n = max(-(-(limit - start) // delta), 0)      # exact ceil for integers
    else:
        n = max(int(np.ceil((limit - start) / delta)), 0)
    ctx.check(n <= MAX_ELEMENTS, f"range {vals} is too long ({n} elements)")
    return t.dtype, vals, n


def _range(ctx: OpContext, *args: np.ndarray) -> np.ndarray:
    dtype, (start, _, delta), n = _range_args(ctx)
    if dtype.is_int:
        return (start + np.arange(n, dtype=np.int64) * delta).astype(dtype.np)
    return (start + np.arange(n, dtype=np.float64) * delta).astype(dtype.np)


register(OpDef("Range", inputs=(3, 3), reference=_range,
               infer=lambda ctx: [TensorType(_range_args(ctx)[0], (_range_args(ctx)[2],))]))
