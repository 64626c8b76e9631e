"""Broadcasting binary and variadic elementwise ops: Add, Sub, Mul, Div, Sum, Max, Min, Mean,
comparisons (Equal, Less, ...), logic (And, Or, Xor), Where, Mod and Pow."""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, broadcast_shapes, register


def _infer_broadcast(ctx: OpContext) -> list[TensorType]:
    types = [ctx.type(i) for i in range(len(ctx.types))]
    dtypes = {t.dtype for t in types}
    ctx.check(len(dtypes) == 1, "inputs have different element types: "
              + ", ".join(str(t.dtype) for t in types))
    return [TensorType(types[0].dtype, broadcast_shapes(ctx, *(t.shape for t in types)))]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        # ONNX integer Div truncates toward zero (C semantics), unlike numpy's floor division.
        q = np.trunc(np.divide(a, np.where(b == 0, 1, b))).astype(a.dtype)
        return q
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b).astype(a.dtype)


_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _div,
}

for _name, _fn in _BINARY.items():
    register(OpDef(_name, infer=_infer_broadcast, inputs=(2, 2),
                   reference=lambda ctx, a, b, fn=_fn: fn(a, b).astype(a.dtype)))


def _variadic(fn):
    def ref(ctx: OpContext, *xs: np.ndarray) -> np.ndarray:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return np.broadcast_to(out, broadcast_shapes(ctx, *(x.shape for x in xs))).astype(
            xs[0].dtype)
    return ref


def _mean(ctx: OpContext, *xs: np.ndarray) -> np.ndarray:
    return (_variadic(np.add)(ctx, *xs) / len(xs)).astype(xs[0].dtype)


register(OpDef("Sum", infer=_infer_broadcast, inputs=(1, -1), reference=_variadic(np.add)))
register(OpDef("Max", infer=_infer_broadcast, inputs=(1, -1), reference=_variadic(np.maximum)))
register(OpDef("Min", infer=_infer_broadcast, inputs=(1, -1), reference=_variadic(np.minimum)))
register(OpDef("Mean", infer=_infer_broadcast, inputs=(1, -1), reference=_mean))


# ---- comparisons and logic (bool results) --------------------------------------------------------

def _infer_compare(ctx: OpContext) -> list[TensorType]:
    out = _infer_broadcast(ctx)[0]
    return [TensorType(DType.bool, out.shape)]


def _infer_logic(ctx: OpContext) -> list[TensorType]:
    out = _infer_broadcast(ctx)[0]
    ctx.check(out.dtype is DType.bool, f"inputs must be bool, got {out.dtype}")
    return [out]


_COMPARE = {
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
}
for _name, _fn in _COMPARE.items():
    register(OpDef(_name, infer=_infer_compare, inputs=(2, 2),
                   reference=lambda ctx, a, b, fn=_fn: np.asarray(fn(a, b))))
for _name, _fn in {"And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}.items():
    register(OpDef(_name, infer=_infer_logic, inputs=(2, 2),
                   reference=lambda ctx, a, b, fn=_fn: np.asarray(fn(a, b))))


def _infer_where(ctx: OpContext) -> list[TensorType]:
    cond, x, y = ctx.type(0), ctx.type(1), ctx.type(2)
    ctx.check(cond.dtype is DType.bool, f"condition must be bool, got {cond.dtype}")
    ctx.check(x.dtype == y.dtype, f"X and Y have different element types: {x.dtype}, {y.dtype}")
    return [TensorType(x.dtype, broadcast_shapes(ctx, cond.shape, x.shape, y.shape))]


register(OpDef("Where", infer=_infer_where, inputs=(3, 3),
               reference=lambda ctx, c, x, y: np.asarray(np.where(c, x, y)).astype(x.dtype)))


# ---- Mod and Pow ---------------------------------------------------------------------------------

def _infer_mod(ctx: OpContext) -> list[TensorType]:
    out = _infer_broadcast(ctx)
    ctx.check(ctx["fmod"] in (0, 1), f"fmod must be 0 or 1, got {ctx['fmod']}")
    ctx.check(out[0].dtype is not DType.bool, "bool inputs are not supported")
    return out


def _mod(ctx: OpContext, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        # fmod=1: the sign of the dividend (C fmod); fmod=0: the sign of the divisor (Python %).
        out = np.fmod(a, b) if ctx["fmod"] else np.mod(a, b)
    return np.asarray(out).astype(a.dtype)


register(OpDef("Mod", infer=_infer_mod, reference=_mod, inputs=(2, 2),
               attrs={"fmod": Attr("int", 0)}))


def _infer_pow(ctx: OpContext) -> list[TensorType]:
    x, y = ctx.type(0), ctx.type(1)
    for t in (x, y):
        ctx.check(t.dtype is not DType.bool, "bool inputs are not supported")
    # The exponent may have another numeric type; the result has the base's type.
    return [TensorType(x.dtype, broadcast_shapes(ctx, x.shape, y.shape))]


def _pow(ctx: OpContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = np.power(x.astype(np.float64), y.astype(np.float64))
        if x.dtype.kind in "iu":
            out = np.trunc(out)
    return np.asarray(out).astype(x.dtype)


register(OpDef("Pow", infer=_infer_pow, reference=_pow, inputs=(2, 2)))
