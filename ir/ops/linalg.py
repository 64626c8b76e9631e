"""Matrix products: Gemm (the dense layer) and MatMul (numpy matmul semantics)."""
from __future__ import annotations

import numpy as np

from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, broadcast_shapes, register


# Elements of the right operand converted to float64 at a time (8 MB): see _product.
_BLOCK = 1 << 20


def _acc(x: np.ndarray) -> np.ndarray:
    """Accumulate float products in float64 so the oracle is more exact than the kernels."""
    return x.astype(np.float64) if x.dtype.kind == "f" else x


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (matmul semantics), float products accumulated in float64. A 2-D float ``b``
    larger than _BLOCK (a dense layer's weights: VGG-19's first classifier layer has 103M) is
    converted in blocks of rows, summing the blocks' products, instead of as one float64 copy
    of the whole matrix on every call."""
    if a.dtype.kind != "f" or b.ndim != 2 or b.size <= _BLOCK:
        return np.matmul(_acc(a), _acc(b))
    a64 = _acc(a)
    rows = max(1, _BLOCK // b.shape[1])
    out = None
    for k in range(0, b.shape[0], rows):
        part = np.matmul(a64[..., k:k + rows], b[k:k + rows].astype(np.float64))
        out = part if out is None else out + part
    return out


def _infer_gemm(ctx: OpContext) -> list[TensorType]:
    a, b = ctx.type(0), ctx.type(1)
    ctx.check(a.rank == 2 and b.rank == 2,
              f"A and B must be 2-D, got shapes {list(a.shape)} and {list(b.shape)}")
    ctx.check(a.dtype == b.dtype, f"A and B have different element types: {a.dtype}, {b.dtype}")
    ctx.check(a.dtype.is_float or a.dtype.is_int, f"element type {a.dtype} not supported")
    for key in ("transA", "transB"):
        ctx.check(ctx[key] in (0, 1), f"{key} must be 0 or 1, got {ctx[key]}")
    m, k = a.shape[::-1] if ctx["transA"] else a.shape
    k2, n = b.shape[::-1] if ctx["transB"] else b.shape
    ctx.check(k == k2, f"inner dimensions differ: A {list(a.shape)} (transA={ctx['transA']}) "
                       f"and B {list(b.shape)} (transB={ctx['transB']})")
    if ctx.has(2):
        c = ctx.type(2)
        ctx.check(c.dtype == a.dtype, f"C type {c.dtype} differs from A {a.dtype}")
        # C broadcasts to (M, N) unidirectionally.
        ok = c.rank <= 2 and all(s in (1, d) for s, d in zip(reversed(c.shape), (n, m)))
        ctx.check(ok, f"C shape {list(c.shape)} does not broadcast to [{m}, {n}]")
    return [TensorType(a.dtype, (m, n))]


def _gemm(ctx: OpContext, a: np.ndarray, b: np.ndarray,
          c: np.ndarray | None = None) -> np.ndarray:
    ab = _product(a.T if ctx["transA"] else a, b.T if ctx["transB"] else b)
    y = ctx["alpha"] * ab if ctx["alpha"] != 1.0 else ab
    if c is not None:
        y = y + (ctx["beta"] * _acc(c) if ctx["beta"] != 1.0 else _acc(c))
    return np.asarray(y).astype(a.dtype)


register(OpDef("Gemm", infer=_infer_gemm, reference=_gemm, inputs=(2, 3),
               attrs={"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0),
                      "transA": Attr("int", 0), "transB": Attr("int", 0)},
               doc="Y = alpha * A' @ B' + beta * C; C broadcasts to [M, N]"))


def _infer_matmul(ctx: OpContext) -> list[TensorType]:
    a, b = ctx.type(0), ctx.type(1)
    ctx.check(a.dtype == b.dtype, f"inputs have different element types: {a.dtype}, {b.dtype}")
    ctx.check(a.dtype.is_float or a.dtype.is_int, f"element type {a.dtype} not supported")
    ctx.check(a.rank >= 1 and b.rank >= 1, "MatMul inputs must have rank >= 1 (scalars given)")
    sa = (1,) + a.shape if a.rank == 1 else a.shape
    sb = b.shape + (1,) if b.rank == 1 else b.shape
    ctx.check(sa[-1] == sb[-2], f"inner dimensions differ: {list(a.shape)} @ {list(b.shape)}")
    batch = broadcast_shapes(ctx, sa[:-2], sb[:-2])
    out = batch + ((sa[-2],) if a.rank > 1 else ()) + ((sb[-1],) if b.rank > 1 else ())
    return [TensorType(a.dtype, out)]


register(OpDef("MatMul", infer=_infer_matmul, inputs=(2, 2),
               reference=lambda ctx, a, b: np.asarray(_product(a, b)).astype(a.dtype)))
