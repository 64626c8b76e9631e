"""Broadcasting binary and variadic elementwise ops: Add, Sub, Mul, Div, Sum, Max, Min, Mean."""
from __future__ import annotations

import numpy as np

from ..types import TensorType
from .registry import OpContext, OpDef, broadcast_shapes, register


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
