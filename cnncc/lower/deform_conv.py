"""DeformConv (N-d): a direct loop nest; every (output element, input channel, kernel tap)
samples the input at its offset position with multilinear interpolation (neighbours outside
the input count as zero), scaled by the mask, times the weight, accumulated in the output."""
from __future__ import annotations

from itertools import product
from math import prod

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (And, Call, Cast, Cmp, Const, Expr, For, Kernel, Select, Stmt, Store,
                           Var, seq)
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, op_context, unsupported
from .conv import parallel_outer


def lower_deform_conv(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    octx = op_context(g, node)
    x, w, off = node.inputs[:3]
    bias = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
    mask = node.inputs[4] if len(node.inputs) > 4 and node.inputs[4] else None
    out = node.outputs[0]
    dt = g.types[x].dtype
    if dt not in (DType.float32, DType.float64):
        raise unsupported(node, f"element type {dt} is not lowered")
    xs, ws = g.types[x].shape, g.types[w].shape
    nd = len(xs) - 2
    spatial = xs[2:]
    win = resolve_window(octx, xs, ws[2:])
    group, og = octx["group"], octx["offset_group"]
    m, cg = ws[0], ws[1]
    mg = m // group
    cog = xs[1] // og
    ktot = prod(win.kernel)
    oshape = g.types[out].shape
    xb, wb = ctx.value(x, bname="x"), ctx.value(w, bname="w")
    ob = ctx.value(off, bname="off")
    yb = ctx.value(out, bname="y")
    params = [yb, xb, wb, ob]
    bb = mb = None
    if bias is not None:
        bb = ctx.value(bias, bname="b")
        params.append(bb)
    if mask is not None:
        mb = ctx.value(mask, bname="mask")
        params.append(mb)
    n, oc, ic = Var("n"), Var("oc"), Var("ic")
    ov = [Var(f"o{a}") for a in range(nd)]
    kv = [Var(f"k{a}") for a in range(nd)]
    cin = (oc // mg) * cg + ic
    ogi = cin // cog
    kflat: Expr = Const(0)
    for a in range(nd):
        kflat = kflat * win.kernel[a] + kv[a]
    coords, lows = [], []
    for a in range(nd):
        base = ov[a] * win.strides[a] - win.begin(a) + kv[a] * win.dilations[a]
        shift = ob[(n, (ogi * ktot + kflat) * nd + a) + tuple(ov)]
        c = Cast(dt, base) + shift
        # Clamped before the integer conversion: a NaN or huge offset must not become poison.
        lo = Const(-2.0, dt).max(Call("floor", (c,), dt)).min(Const(spatial[a] + 1.0, dt))
        coords.append(c)
        lows.append(lo)
    sample: Expr | None = None
    for corner in product((0, 1), repeat=nd):
        weight: Expr | None = None
        valid: Expr | None = None
        idx = []
        for a, bit in enumerate(corner):
            fi = lows[a] + float(bit)
            frac = coords[a] - lows[a]
            wa = frac if bit else Const(1.0, dt) - frac
            weight = wa if weight is None else weight * wa
            i = Cast(DType.int64, fi)
            ok = And(Cmp("ge", i, Const(0)), Cmp("lt", i, Const(spatial[a])))
            valid = ok if valid is None else And(valid, ok)
            idx.append(i.max(Const(0)).min(Const(spatial[a] - 1)))
        term = Select(valid, xb[(n, cin) + tuple(idx)] * weight, Const(0.0, dt))
        sample = term if sample is None else sample + term
    if mb is not None:
        sample = sample * mb[(n, ogi * ktot + kflat) + tuple(ov)]
    yi = (n, oc) + tuple(ov)
    red: Stmt = Store(yb, yi, yb[yi] + wb[(oc, ic) + tuple(kv)] * sample)
    for a in reversed(range(nd)):
        red = For(kv[a], win.kernel[a], red)
    body: Stmt = seq(Store(yb, yi, bb[oc] if bb is not None else Const(0.0, dt)),
                     For(ic, cg, red))
    for a in reversed(range(nd)):
        body = For(ov[a], oshape[2 + a], body)
    k = Kernel(node.name, params, For(n, oshape[0], For(oc, oshape[1], body)))
    work = int(np.prod(oshape)) * cg * ktot * (2 ** nd) * 4
    ctx.emit(parallel_outer(k, ["n", "oc"], ctx, work))
