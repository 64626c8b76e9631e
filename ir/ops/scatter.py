"""ScatterElements: copy of the data with entries at ``indices`` along ``axis`` replaced by (or
combined with) ``updates``. The frontend maps the deprecated Scatter (opset 9-10) here."""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, normalize_axis, register

_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum,
               "min": np.minimum}


def _infer(ctx: OpContext) -> list[TensorType]:
    data, idx, upd = ctx.type(0), ctx.type(1), ctx.type(2)
    normalize_axis(ctx, ctx["axis"], data.rank)
    ctx.check(idx.dtype in (DType.int32, DType.int64), f"indices must be int32/int64, got "
                                                        f"{idx.dtype}")
    ctx.check(idx.shape == upd.shape, f"indices {list(idx.shape)} and updates "
                                      f"{list(upd.shape)} must have the same shape")
    ctx.check(upd.dtype == data.dtype, f"updates are {upd.dtype}, data is {data.dtype}")
    ctx.check(idx.rank == data.rank and all(i <= d for i, d in zip(idx.shape, data.shape)),
              f"indices shape {list(idx.shape)} does not fit data shape {list(data.shape)}")
    ctx.check(ctx["reduction"] in _REDUCTIONS, f"unknown reduction '{ctx['reduction']}'")
    return [data]


def _reference(ctx: OpContext, data: np.ndarray, idx: np.ndarray,
               upd: np.ndarray) -> np.ndarray:
    axis = ctx["axis"] % data.ndim
    dim = data.shape[axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise IndexError(f"ScatterElements index out of range [{-dim}, {dim - 1}]")
    idx = np.where(idx < 0, idx + dim, idx).astype(np.int64)
    out = data.copy()
    fn = _REDUCTIONS[ctx["reduction"]]
    # Updates apply one after another in index order (the ONNX reference's order), so repeated
    # indices accumulate under a reduction and the last one wins without.
    for pos in np.ndindex(*idx.shape):
        target = list(pos)
        target[axis] = idx[pos]
        target = tuple(target)
        out[target] = upd[pos] if fn is None else fn(out[target], upd[pos])
    return out


register(OpDef("ScatterElements", infer=_infer, reference=_reference, inputs=(3, 3),
               attrs={"axis": Attr("int", 0), "reduction": Attr("str", "none")}))
