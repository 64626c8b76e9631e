"""Pad: constant, reflect, edge and wrap padding (ONNX opset 19 form: pads, constant_value and
axes are inputs). Negative pads crop. pads must be a compile-time constant; constant_value may be
computed at run time.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.types import MAX_ELEMENTS, TensorType
from .registry import Attr, OpContext, OpDef, register
from .shape import int_list, unique_axes

MODES = ("constant", "reflect", "edge", "wrap")


def pad_amounts(ctx: OpContext) -> list[tuple[int, int]]:
    """(begin, end) padding for every axis of the input, validated."""
    t = ctx.type(0)
    mode = ctx["mode"]
    ctx.check(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    pads = int_list(ctx, 1, "pads")
    axes = unique_axes(ctx, int_list(ctx, 3, "axes"), t.rank) if ctx.has(3) \
        else list(range(t.rank))
    ctx.check(len(pads) == 2 * len(axes), f"pads {pads} must have 2 entries per padded axis "
                                           f"({len(axes)} axes)")
    out = [(0, 0)] * t.rank
    for k, a in enumerate(axes):
        begin, end = pads[k], pads[k + len(axes)]
        dim = t.shape[a]
        size = dim + begin + end
        ctx.check(0 <= size <= MAX_ELEMENTS, f"pads {pads} give axis {a} (size {dim}) the "
                                             f"invalid size {size}")
        grow = max(begin, 0) + max(end, 0)
        if mode == "reflect":
            ctx.check(max(begin, end) <= dim - 1, f"reflect padding {max(begin, end)} needs "
                                                  f"axis {a} larger than its size {dim}")
        elif mode != "constant":
            ctx.check(grow == 0 or dim > 0, f"{mode} padding of the empty axis {a}")
        out[a] = (begin, end)
    return out


def _infer_pad(ctx: OpContext) -> list[TensorType]:
    t = ctx.type(0)
    amounts = pad_amounts(ctx)
    if ctx.has(2):
        v = ctx.type(2)
        ctx.check(v.dtype == t.dtype, f"constant_value type {v.dtype} differs from input "
                                      f"{t.dtype}")
        ctx.check(v.size == 1 and v.rank <= 1, "constant_value must be a scalar")
    shape = tuple(d + b + e for d, (b, e) in zip(t.shape, amounts))
    return [TensorType(t.dtype, shape)]


def _pad(ctx: OpContext, x: np.ndarray, pads, value=None, axes=None) -> np.ndarray:
    amounts = pad_amounts(ctx)
    # Crop the negative pads first, then grow by the positive ones.
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for d, (b, e) in zip(x.shape, amounts))
    y = x[crop]
    grow = [(max(b, 0), max(e, 0)) for b, e in amounts]
    mode = ctx["mode"]
    if mode == "constant":
        fill = 0 if value is None else value.reshape(-1)[0]
        return np.pad(y, grow, mode="constant", constant_values=fill)
    return np.pad(y, grow, mode=mode)


register(OpDef("Pad", infer=_infer_pad, reference=_pad, inputs=(2, 4),
               attrs={"mode": Attr("str", "constant")}))
