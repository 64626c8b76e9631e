"""GPU schedules of Gemm and MatMul: tiled products (gpu_tiles.py) with shared-memory tiles of A
and B and a register block of outputs per thread.

Gemm packs a constant B at compile time as [K, N] (transposed when transB, alpha folded in,
zero-padded to whole tiles so its tile loads need no guard) and folds a constant C with beta
into a bias kept in C's broadcast shape; run-time B / C are read in place (alpha and beta then
scale in the epilogue). MatMul puts the (broadcast) batch on blockIdx.z; a constant 2-D B is
packed like Gemm's and the batch of A folded into its rows. Other element types take the
generic rules (their parallel loops become the grid).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Const, Expr, Store

from .context import LowerCtx, op_context
from .gpu_tiles import cdiv, clamped, packed, padded_k, plan, split_scratch, tiled_product
from .nn import lower_gemm, lower_matmul


def _f32(ctx: LowerCtx, node: Node, out: str) -> bool:
    g = ctx.graph
    return all(g.types[v].dtype is DType.float32 for v in list(node.inputs) + [out] if v)


def lower_gemm_gpu(ctx: LowerCtx, node: Node, act=None, out: str | None = None) -> None:
    """Gemm: Y = act(alpha op(A) op(B) + beta C) as a tiled product. A constant B is packed
    [K, N] (transposed if transB, alpha folded, zero-padded to whole tiles); a constant C is
    folded with beta into a bias (kept in its broadcast shape)."""
    g = ctx.graph
    out = out or node.outputs[0]
    if not _f32(ctx, node, out):
        return lower_gemm(ctx, node, act, out)
    at = op_context(g, node).attrs
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    ta, tb = bool(at["transA"]), bool(at["transB"])
    alpha, beta = float(at["alpha"]), float(at["beta"])
    m, n = g.types[out].shape
    k = g.types[a].shape[0 if ta else 1]
    t, splits = plan(m, n, k)
    ab = ctx.value(a, bname="a")
    yb = ctx.value(out, (m, n), "y")
    params = [yb, ab]

    def load_a(_z, mi, ki):
        return clamped(ab, (ki, mi) if ta else (mi, ki), (k, m) if ta else (m, k))

    scale = 1.0
    if b in g.params:
        bm = g.params[b].astype(np.float32)
        bm = (bm.T if tb else bm) * np.float32(alpha)
        bb = ctx.const(packed(bm, padded_k(k, t, splits), cdiv(n, t.bn) * t.bn), "b")

        def load_b(_z, ni, ki):
            return bb[ki, ni]
        b_k_contig = False
    else:
        bb = ctx.value(b, bname="b")
        scale = alpha

        def load_b(_z, ni, ki):
            return clamped(bb, (ni, ki) if tb else (ki, ni), (n, k) if tb else (k, n))
        b_k_contig = tb
    params.append(bb)
    cb, cscale = None, 1.0
    if c is not None:
        cs = g.types[c].shape
        cs2 = ((1,) * (2 - len(cs)) + tuple(cs))[-2:]
        if c in g.params:
            cv = g.params[c].astype(np.float32).reshape(cs2) * np.float32(beta)
            cb = ctx.const(cv, "c")
        else:
            cb, cscale = ctx.value(c, cs2, "c"), beta
        params.append(cb)

    def epilogue(_z, mi, ni, v):
        val = v * scale if scale != 1.0 else v
        if cb is not None:
            cv = cb[mi if cb.shape[0] > 1 else Const(0), ni if cb.shape[1] > 1 else Const(0)]
            val = val + (cv * cscale if cscale != 1.0 else cv)
        if act is not None:
            val = act(val)
        return Store(yb, (mi, ni), val)

    part = split_scratch(ctx, splits, m, n)
    if part is not None:
        params.append(part)
    ctx.emit(tiled_product(node.name, params, t, m, n, k, 1, load_a, not ta, load_b,
                           b_k_contig, epilogue, splits, part))


def lower_matmul_gpu(ctx: LowerCtx, node: Node, act=None, out: str | None = None) -> None:
    """MatMul (batched, broadcasting, 1-D operands promoted as numpy does) as a tiled product
    with the batch on blockIdx.z; a constant 2-D B is packed once and the batch of A folded
    into its rows."""
    g = ctx.graph
    out = out or node.outputs[0]
    if not _f32(ctx, node, out):
        return lower_matmul(ctx, node, act, out)
    a, b = node.inputs
    ash, bsh = tuple(g.types[a].shape), tuple(g.types[b].shape)
    if len(ash) == 1:
        ash = (1,) + ash
    if len(bsh) == 1:
        bsh = bsh + (1,)
    k, n = bsh[-2], bsh[-1]
    if b in g.params and len(g.types[b].shape) == 2:
        m = int(np.prod(ash[:-1]))
        t, splits = plan(m, n, k)
        ab = ctx.value(a, (m, k), "a")
        bb = ctx.const(packed(g.params[b].astype(np.float32), padded_k(k, t, splits),
                              cdiv(n, t.bn) * t.bn), "b")
        yb = ctx.value(out, (m, n), "y")
        params = [yb, ab, bb]

        def load_a(_z, mi, ki):
            return clamped(ab, (mi, ki), (m, k))

        def load_b(_z, ni, ki):
            return bb[ki, ni]

        def store(_z, mi, ni, v):
            return Store(yb, (mi, ni), act(v) if act is not None else v)
        part = split_scratch(ctx, splits, m, n)
        if part is not None:
            params.append(part)
        return ctx.emit(tiled_product(node.name, params, t, m, n, k, 1, load_a, True, load_b,
                                      False, store, splits, part))
    batch = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
    z, m = int(np.prod(batch)), ash[-2]
    ab = ctx.value(a, (int(np.prod(ash[:-2])), m, k), "a")
    bb = ctx.value(b, (int(np.prod(bsh[:-2])), k, n), "b")
    yb = ctx.value(out, (z, m, n), "y")
    a_of, b_of = batch_index(batch, ash[:-2]), batch_index(batch, bsh[:-2])
    t, _ = plan(m, n, k, z)         # z > 1: no split

    def load_a(zz, mi, ki):
        return clamped(ab, (a_of(zz), mi, ki), (None, m, k))

    def load_b(zz, ni, ki):
        return clamped(bb, (b_of(zz), ki, ni), (None, k, n))

    def store(zz, mi, ni, v):
        return Store(yb, (zz, mi, ni), act(v) if act is not None else v)
    ctx.emit(tiled_product(node.name, [yb, ab, bb], t, m, n, k, z, load_a, True, load_b,
                           False, store))


def batch_index(batch: tuple, own: tuple) -> Callable[[Expr], Expr]:
    """Flat batch index of an operand with batch dims ``own`` (broadcast against ``batch``,
    aligned right) for the flat output batch index z."""
    own = (1,) * (len(batch) - len(own)) + tuple(own)
    if own == tuple(batch):
        return lambda zz: zz
    if all(d == 1 for d in own):
        return lambda zz: Const(0)

    def index(zz: Expr) -> Expr:
        e: Expr = Const(0)
        ostride = 1
        for d in reversed(range(len(batch))):
            if own[d] != 1:
                inner = int(np.prod(batch[d + 1:]))
                digit = (zz // inner) % batch[d] if inner > 1 else zz % batch[d]
                e = e + digit * ostride if ostride > 1 else e + digit
            ostride *= own[d]
        return e
    return index
