"""Resize in linear / cubic mode (antialias, exclude_outside, every coordinate mode): one pass
per resized axis, out[p, o, q] = sum_t W[o, t] * X[p, IDX[o, t], q], with the per-axis tap tables
computed at compile time by the op table's own resize helpers (so the numerics follow the
reference exactly). Nearest mode is an index-map gather (gather.py)."""
from __future__ import annotations

import math

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Const, Expr, F32, Kernel, Select, Store, loop_nest
from cnncc.ir.ops.resize import resize_plan, source_coords, tap_weights

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import schedule_map
from .gather import lower_index_map


def lower_resize(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    octx = op_context(g, node)
    if octx["mode"] == "nearest":
        return lower_index_map(ctx, node)
    x, out = node.inputs[0], node.outputs[0]
    if g.types[x].dtype is not DType.float32:
        raise unsupported(node, "only float32 linear/cubic Resize is lowered")
    for i in node.inputs[1:]:
        if i and i not in g.params:
            raise unsupported(node, f"input '{i}' must be a compile-time constant")
    plan = resize_plan(octx)
    shape = list(g.types[x].shape)
    passes = []
    for a in plan.axes:
        roi = plan.roi.get(a)
        identity = plan.out_shape[a] == shape[a] and math.isclose(plan.scales[a], 1.0) and (
            roi is None or (math.isclose(roi[0], 0.0) and math.isclose(roi[1], 1.0)))
        if not identity:
            passes.append(a)
    if not passes or 0 in plan.out_shape:
        from .tensor import emit_copy
        if 0 in plan.out_shape:
            return
        return emit_copy(ctx, node.name, x, out)
    src = ctx.value(x, bname="x")
    for k, a in enumerate(passes):
        n_in, n_out = shape[a], plan.out_shape[a]
        coords = source_coords(octx, n_in, n_out, plan.scales[a], plan.roi.get(a))
        idx, w = tap_weights(octx, coords, plan.scales[a])
        if octx["exclude_outside"]:
            w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
            total = w.sum(axis=1, keepdims=True)
            w = w / np.where(total == 0, 1.0, total)
        outside = None
        if octx["coordinate_transformation_mode"] == "tf_crop_and_resize":
            outside = ((coords < 0) | (coords > n_in - 1)).astype(np.int32)
        pre, post = int(np.prod(shape[:a])), int(np.prod(shape[a + 1:]))
        shape[a] = n_out
        last = k == len(passes) - 1
        dst = ctx.value(out, bname="y") if last else ctx.temp(DType.float32, tuple(shape), "t")
        src3 = _view(ctx, src, (pre, n_in, post), "src")
        dst3 = _view(ctx, dst, (pre, n_out, post), "dst")
        ib = ctx.const(np.clip(idx, 0, n_in - 1).astype(np.int64), "idx")
        wb = ctx.const(w.astype(np.float32), "wt")
        params = [dst3, src3, ib, wb]
        ob = None
        if outside is not None:
            ob = ctx.const(outside, "outside")
            params.append(ob)
        taps = idx.shape[1]
        fill = float(octx["extrapolation_value"])

        def body(p, o, q, taps=taps, ib=ib, wb=wb, ob=ob, src3=src3, dst3=dst3):
            acc: Expr = Const(0.0, F32)
            for t in range(taps):
                acc = acc + wb[o, t] * src3[p, ib[o, t], q]
            if ob is not None:
                acc = Select(ob[o].eq(Const(0, DType.int32)), acc, Const(fill, F32))
            return Store(dst3, (p, o, q), acc)

        kern = Kernel(f"{node.name}_{a}", params, loop_nest(
            [("p", pre), ("o", n_out), ("q", post)], body))
        ctx.emit(schedule_map(kern, ctx, pre * n_out * post * taps,
                              vector_loop="q" if post >= ctx.lanes else "o"))
        src = dst


def _view(ctx: LowerCtx, buf, shape: tuple, name: str):
    """``buf``'s storage seen with another shape (same number of elements)."""
    from cnncc.ir.loop import Buffer
    v = Buffer(name, buf.dtype, shape)
    ctx.binding[id(v)] = ctx.binding[id(buf)]
    return v
