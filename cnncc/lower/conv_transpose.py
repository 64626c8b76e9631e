"""ConvTranspose as a stride-1 conv: the input is scattered (zero-inserted by the stride, shifted
by the kernel reach minus the crop) into a zeroed scratch buffer, then the register-tiled conv of
conv.py runs on it with the kernel flipped and the channel axes of the weight swapped."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import And, Buffer, Cmp, Const, F32, For, If, Kernel, Store, Var, loop_nest
from cnncc.ir.ops.conv_transpose import transpose_geometry

from .context import LowerCtx, const_input, op_context, unsupported
from .conv import conv_depthwise, conv_general
from .cpu_schedule import parallel_outer, schedule_map


def lower_conv_transpose(ctx: LowerCtx, node: Node, act=None, out: str | None = None) -> None:
    g = ctx.graph
    out = out or node.outputs[0]
    x = node.inputs[0]
    if any(g.types[v].dtype is not DType.float32 for v in (x, out)):
        raise unsupported(node, "only float32 is lowered")
    runtime = any(i and i not in g.params for i in node.inputs[1:3])
    wshape = g.types[node.inputs[1]].shape
    octx = op_context(g, node)
    groups = octx["group"]
    xs = g.types[x].shape
    nd = len(xs) - 2
    ks = wshape[2:]
    cg, mg = wshape[0] // groups, wshape[1]
    strides, dil, begin, osp, _ = transpose_geometry(octx, xs, ks, mg * groups)
    reach = [(k - 1) * d for k, d in zip(ks, dil)]
    vsp = tuple(o + r for o, r in zip(osp, reach))
    vshape = xs[:2] + vsp
    v = ctx.temp(DType.float32, vshape, "xp")
    flat = Buffer("v", DType.float32, (int(np.prod(vshape)),))
    ctx.binding[id(flat)] = ctx.binding[id(v)]
    fill = Kernel(f"{node.name}_zero", [flat], loop_nest(
        [("f", flat.shape[0])], lambda f: Store(flat, (f,), Const(0.0, F32))))
    ctx.emit(schedule_map(fill, ctx, flat.shape[0]))
    xb = ctx.value(x, bname="x")
    shift = [r - bg for r, bg in zip(reach, begin)]
    iv = [Var(f"s{d}") for d in range(nd)]
    pos = [i * s + sh for i, s, sh in zip(iv, strides, shift)]
    cond = None
    for p, n_ in zip(pos, vsp):
        c = And(Cmp("ge", p, Const(0)), Cmp("lt", p, Const(n_)))
        cond = c if cond is None else And(cond, c)
    nv, cv = Var("n"), Var("c")
    body = If(cond, Store(v, (nv, cv) + tuple(pos), xb[(nv, cv) + tuple(iv)]))
    for d in reversed(range(nd)):
        body = For(iv[d], xs[2 + d], body)
    scatter = Kernel(f"{node.name}_scatter", [v, xb], For(nv, xs[0], For(cv, xs[1], body)))
    # Every input element lands on its own position: all loops may run in parallel.
    ctx.emit(parallel_outer(scatter, ["n", "c"] + [s.name for s in iv], ctx,
                            int(np.prod(xs))))
    if runtime:
        return _runtime_conv(ctx, node, v, groups, cg, mg, tuple(dil), act, out)
    w = const_input(g, node, 1, "the weight").astype(np.float32)
    b = const_input(g, node, 2, "the bias") if len(node.inputs) > 2 and node.inputs[2] else None
    bias = np.zeros(mg * groups, np.float32) if b is None else b.astype(np.float32)
    # conv weight [G*Mg, Cg, K...]: swap the channel axes per group, flip the kernel.
    wc = w.reshape((groups, cg, mg) + ks).transpose((0, 2, 1) + tuple(range(3, 3 + nd)))
    wc = np.ascontiguousarray(np.flip(wc, axis=tuple(range(3, 3 + nd))).reshape(
        (groups * mg, cg) + ks))
    win = SimpleNamespace(strides=(1,) * nd, dilations=tuple(dil))
    if cg == 1 and mg == 1:
        return conv_depthwise(ctx, node, v, wc, bias, win, act, out)
    conv_general(ctx, node, v, wc, bias, win, groups, act, out)


def _runtime_conv(ctx: LowerCtx, node: Node, v: Buffer, groups: int, cg: int, mg: int,
                  dil: tuple, act, out: str) -> None:
    """The stride-1 conv over the scattered input with a run-time weight: conv weight
    [g mg + m, c, k] = w[g cg + c, m, K - 1 - k] is read straight from the weight."""
    from .conv_direct import direct_conv
    wb = ctx.value(node.inputs[1], bname="w")
    ks = wb.shape[2:]
    bias = ctx.value(node.inputs[2], bname="bias") if len(node.inputs) > 2 and \
        node.inputs[2] else None

    def weight(oc, ic, k):
        cin = (oc // mg) * cg + ic if groups > 1 else ic
        return wb[(cin, oc % mg if groups > 1 else oc)
                  + tuple(Const(n - 1) - kk for n, kk in zip(ks, k))]
    direct_conv(ctx, node.name, v, weight, [wb], bias, out, tuple(ks), (1,) * len(ks), dil,
                groups, cg, act)
