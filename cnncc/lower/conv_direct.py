"""Convolution with run-time weights (Conv, and ConvTranspose after its input scatter): a
direct loop nest over the output, each element accumulated in place over (input channel of its
group, kernel taps), vectorized along the last output axis; no weight packing, so the weight
can be any value computed by the graph. An optional residual (a value of the output's shape) is
added before the activation."""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir.loop import Buffer, Const, Expr, For, Kernel, Stmt, Store, Var, loop_nest, seq

from .context import LowerCtx
from .cpu_schedule import schedule_map

Weight = Callable[[Expr, Expr, tuple], Expr]


def direct_conv(ctx: LowerCtx, name: str, xp: Buffer, weight: Weight, wbufs: list,
                bias: Buffer | None, out: str, kernel: tuple, strides: tuple, dils: tuple,
                groups: int, icg: int, act=None, residual: str | None = None) -> None:
    """y[n, oc, o..] = act(bias[oc] + sum_{ic, k} xp[n, g icg + ic, o s + k d] w(oc, ic, k)
    + z[n, oc, o..]) (z = ``residual``, optional)
    with g = oc // (OC / groups); ``xp`` is already padded."""
    g = ctx.graph
    oshape = g.types[out].shape
    nd = len(oshape) - 2
    ocg = oshape[1] // groups
    yb = ctx.value(out, bname="y")
    zb = ctx.value(residual, bname="z") if residual else None
    dt = yb.dtype

    def body(n: Var, oc: Var, *ov: Var) -> Stmt:
        ic = Var("ic")
        kv = tuple(Var(f"k{d}") for d in range(nd))
        cin = (oc // ocg) * icg + ic if groups > 1 else ic
        pos = tuple(o * s + k * d for o, k, s, d in zip(ov, kv, strides, dils))
        yi = (n, oc) + tuple(ov)
        red: Stmt = Store(yb, yi, yb[yi] + xp[(n, cin) + pos] * weight(oc, ic, kv))
        for d in reversed(range(nd)):
            red = For(kv[d], kernel[d], red)
        val = yb[yi] + bias[oc] if bias is not None else yb[yi]
        if zb is not None:
            val = val + zb[yi]
        if act is not None:
            val = act(val)
        fin = Store(yb, yi, val) if bias is not None or act is not None or zb is not None \
            else None
        return seq(Store(yb, yi, Const(0.0, dt)), For(ic, icg, red), fin)

    dims = [("n", oshape[0]), ("oc", oshape[1])] + [(f"o{d}", oshape[2 + d])
                                                   for d in range(nd)]
    params = [yb, xp] + wbufs + ([bias] if bias is not None else []) + \
        ([zb] if zb is not None else [])
    k = Kernel(name, params, loop_nest(dims, body))
    work = int(np.prod(oshape)) * icg * int(np.prod(kernel))
    ctx.emit(schedule_map(k, ctx, work))
