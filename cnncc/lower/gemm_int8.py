"""Integer matrix products on 8-bit operands: MatMulInteger and ConvInteger (int32 outputs),
QLinearMatMul and com.microsoft QGemm (ir/ops/quant_gemm.py; requantized to 8 bits, or float32
without y_scale), all on one register-tiled kernel with exact int32 accumulation.

A (the activations) is copied once into a row buffer [B, G, M, KP] (ConvInteger: an im2col of
the padded windows, the pads holding the zero point, i.e. zero once it is subtracted); B (the
weights, a compile-time constant) minus its zero point is packed [G, NB, KW, VT]. Where every
w' = w - w_zero_point fits int8 (and the target is a CPU), the rows are bytes of A shifted to
uint8 (int8 A + 128), 4 per int32 word (KP = 4 * ceil(K / 4), the missing columns hold the
shifted zero point and meet weight 0), and the byte dot calls of conv_int8_dot.dot_plan
(vpdpbusd with VNNI; without it vpmaddubsw + vpmaddwd with weights beyond 7 bits split
exactly, or vpmaddwd on int16 pairs) do 4 multiply-adds per lane; the bias absorbs zx * sum w'
(zx the shifted zero point).
Otherwise (uint8 weights, GPU) the rows hold int32 (a - a_zero_point) and the kernel multiplies
int32s. Each task accumulates R rows x VT output columns in registers, the A word broadcast,
then applies the epilogue (identity, or the QLinear requantization: round half to even of
float32(acc) * (a_scale * b_scale / y_scale) + y_zero_point, saturated; the reference
multiplies in float64, so an output may differ by one step at a rounding tie).
"""
from __future__ import annotations

from math import prod
from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (And, Allocate, Buffer, Cast, Cmp, Const, Expr, F32, For, If,
                           Kernel, Let, Select, Stmt, Store, Var, seq)
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, op_context, unsupported
from .conv_int8_dot import (dot_plan, dot_registers, dot_weights, int32_update,
                            shifted_zero_point, tile_vectors)
from .cpu_schedule import parallel_outer
from .quant import requantized

I32, U8 = DType.int32, DType.uint8


class Rows:
    """How A's rows are packed: ``dot`` (the dot4 function) or None (int32 rows), the
    element shift / pad value, and KW, the reduction taps per row (words or values)."""

    def __init__(self, dot: str | None, a_dtype: DType, a_zp: int, k: int):
        self.dot = dot
        if dot:
            self.zx = shifted_zero_point(a_dtype, a_zp)
            self.shift = self.zx - a_zp
            self.kp, self.kw, self.dtype = -(-k // 4) * 4, -(-k // 4), U8
        else:
            self.zx, self.shift = 0, -a_zp
            self.kp = self.kw = k
            self.dtype = I32

    def value(self, v: Expr) -> Expr:
        """A packed element of input value v (int8/uint8)."""
        return Cast(self.dtype, Cast(I32, v) + Const(self.shift, I32))

    def pad(self) -> Expr:
        return Const(self.zx, self.dtype)


def plan_rows(ctx: LowerCtx, wz: np.ndarray, k: int, n: int, bias: np.ndarray, a_dtype: DType,
              a_zp: int) -> Rows:
    """The packing for weights ``wz`` ([G, K, N] int32, zero point subtracted)."""
    flat = np.moveaxis(wz, 2, 1).reshape(-1, k)                 # one row per output column
    dot = dot_plan(ctx, flat, k, n, np.resize(bias, flat.shape[0]),
                   shifted_zero_point(a_dtype, a_zp))
    return Rows(dot, a_dtype, a_zp, k)


def int_gemm(ctx: LowerCtx, node: Node, rows: Rows, ap: Buffer, wz: np.ndarray,
             bias: np.ndarray, mult: np.ndarray | None, out: Buffer, index: Callable,
             epilogue: Callable) -> None:
    """out[index(b, g, m, j)] = epilogue(bias[g, j] + sum_k A'[b, g', m, k] * wz[g, k, j],
    multiplier[g, j]) for the packed rows ``ap`` [B, 1 or G, M, KP] (A' = the packed value
    minus what the bias absorbs) and the weights ``wz`` [G, K, N] (zero point subtracted)."""
    groups, k, n = wz.shape
    bt, ga, m = ap.shape[:3]
    lanes = ctx.lanes
    vt = tile_vectors(n, lanes)
    nb = -(-n // vt)
    cols = np.moveaxis(wz, 2, 1).reshape(groups * n, k).astype(np.int64)   # one row per column
    bias_total = np.broadcast_to(bias, (groups, n)).astype(np.int64)
    if rows.dot:
        padded = np.zeros((groups * n, rows.kp), np.int64)
        padded[:, :k] = cols
        dot_words, comp, update = dot_weights(padded, rows.zx, rows.dot)
        bias_total = bias_total - comp.reshape(groups, n)
        wps = [w.reshape(groups, n, rows.kw) for w in dot_words]
    else:
        wps = [cols.astype(np.int32).reshape(groups, n, k)]
        update = int32_update
    if bias_total.min(initial=0) < -2**31 or bias_total.max(initial=0) >= 2**31:
        raise unsupported(node, "the bias leaves int32 once the zero points are folded in")
    wbufs = []
    for i, wv in enumerate(wps):
        wp = np.zeros((groups, nb * vt, rows.kw), np.int32)
        wp[:, :n] = wv
        wp = np.ascontiguousarray(wp.reshape(groups, nb, vt, rows.kw).transpose(0, 1, 3, 2))
        wbufs.append(ctx.const(wp, f"w{i}"))

    def per_column(v: np.ndarray, dtype) -> np.ndarray:
        p = np.zeros((groups, nb * vt), dtype)
        p[:, :n] = np.broadcast_to(v, (groups, n))
        return p
    bbuf = ctx.const(per_column(bias_total, np.int32), "b")
    mbuf = ctx.const(per_column(np.ones(1) if mult is None else mult, np.float32), "m")
    aflat = Buffer("a", I32, (bt * ga * m * rows.kw,))
    ctx.binding[id(aflat)] = ctx.binding[id(ap)]
    regs = ctx.vector_registers
    if rows.dot:      # the A word lives in a register beside each row's accumulators
        per_row, spare = dot_registers(rows.dot, vt // lanes)
        r_tile = min(m, max(1, (regs - spare) // per_row))
    else:
        r_tile = min(m, max(1, (regs - 4) // (vt // lanes)))
    b, gv, jb, mb = Var("b"), Var("g"), Var("jb"), Var("mb")

    def tile(m0: Expr, rr: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", I32, (rr, vt), "local")
        r, v, v2, r3, v3 = (Var(f"{q}{tag}") for q in ("r", "v", "v2", "r3", "v3"))
        t, o = Var(f"t{tag}"), Var(f"o{tag}")
        init = For(r, rr, For(v, vt, Store(acc, (r, v), bbuf[gv, jb * vt + v]), "vectorized"),
                   "unrolled")
        row0 = ((b * ga + (gv if ga > 1 else 0)) * m + m0) * rows.kw
        upd = [For(v2, vt, Store(acc, (i, v2), update(
            acc[i, v2], lambda _, i=i: aflat[o + i * rows.kw], [w[gv, jb, t, v2] for w in wbufs])),
                   "vectorized") for i in range(rr)]
        red = For(t, rows.kw, Let(o, row0 + t, seq(*upd)))
        j = jb * vt + v3
        st: Stmt = Store(out, index(b, gv, m0 + r3, j), epilogue(acc[r3, v3], mbuf[gv, j]))
        if n % vt:
            st = If(j < n, st, masked=True)
        epi = For(r3, rr, For(v3, vt, st, "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    full, rest = divmod(m, r_tile)
    inner: Stmt = tile(mb * r_tile, r_tile, "")
    if rest:
        inner = If(mb < full, inner, tile(Const(m - rest), rest, "t"))
    body = For(b, bt, For(gv, groups, For(jb, nb, For(mb, full + (rest > 0), inner))))
    ker = Kernel(node.name, [out, aflat, *wbufs, bbuf, mbuf], body)
    ctx.emit(parallel_outer(ker, ["b", "g", "jb", "mb"], ctx, bt * groups * m * n * rows.kw))


def constant(ctx: LowerCtx, node: Node, i: int, what: str) -> np.ndarray | None:
    """Input i's value (None when absent), which must be a compile-time constant: the native
    kernels pack weights and fold scales and zero points at compile time."""
    name = node.inputs[i] if i < len(node.inputs) else ""
    if name and name not in ctx.graph.params:
        raise unsupported(node, f"input {i} ({what}) must be a constant (an initializer)")
    return ctx.graph.params[name] if name else None


def _zero_point(ctx: LowerCtx, node: Node, i: int | None, what: str) -> np.ndarray:
    """Zero point input i as int32 (0 when absent)."""
    v = constant(ctx, node, i, what) if i is not None else None
    return np.zeros(1, np.int32) if v is None else np.asarray(v).astype(np.int32).reshape(-1)


def _scale(ctx: LowerCtx, node: Node, i: int, what: str) -> np.ndarray:
    v = constant(ctx, node, i, what)
    if v is None:
        raise unsupported(node, f"{what} is required")
    return np.asarray(v, np.float32).reshape(-1)


def requantizer(out_dt: DType, y_zp: int) -> Callable:
    """acc (int32), multiplier (float32) -> round_half_even(acc * multiplier) + y_zp saturated
    to ``out_dt``; int32 outputs take acc as is."""
    if out_dt is I32:
        return lambda acc, mult: acc
    if out_dt is DType.float32:
        return lambda acc, mult: Cast(F32, acc) * mult
    return lambda acc, mult: requantized(Cast(F32, acc) * mult, y_zp, out_dt)


# input positions: a, a_scale, a_zp, b, b_scale, b_zp, bias, y_scale, y_zp
MATMUL_INPUTS = {"MatMulInteger": (0, None, 2, 1, None, 3, None, None, None),
                 "QLinearMatMul": (0, 1, 2, 3, 4, 5, None, 6, 7),
                 "QGemm": (0, 1, 2, 3, 4, 5, 6, 7, 8)}


def lower_int_matmul(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    ia, ias, iaz, ib, ibs, ibz, ic, iys, iyz = MATMUL_INPUTS[node.op]
    attrs = op_context(g, node).attrs if node.op == "QGemm" else {}
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    a, out = node.inputs[ia], node.outputs[0]
    bq = constant(ctx, node, ib, "B, the weights")
    if bq is None:
        raise unsupported(node, "B is required")
    bq = np.swapaxes(bq, -1, -2) if trans_b else np.asarray(bq)
    ash, osh = g.types[a].shape, g.types[out].shape
    k, n = bq.shape[-2:]
    a_zp = int(_zero_point(ctx, node, iaz, "a_zero_point")[0])
    b_zp = _zero_point(ctx, node, ibz, "b_zero_point")
    wz = bq.astype(np.int32) - (b_zp if b_zp.size == n else b_zp[0])
    if bq.ndim == 2:                      # A's leading axes are rows
        wz, groups, ga, m = wz[None], 1, 1, prod(osh[:-1])
    else:
        batch = tuple(osh[:-2])
        groups, m = prod(batch), osh[-2]
        wz = np.broadcast_to(wz, batch + (k, n)).reshape(groups, k, n)
        a_batch = prod(ash[:-2])
        if a_batch not in (1, groups):
            raise unsupported(node, f"A {list(ash)} broadcast partly against B {list(bq.shape)}")
        ga = 1 if a_batch == 1 else groups
    bias = np.zeros(n, np.int64)
    if ic is not None and len(node.inputs) > ic and node.inputs[ic]:
        c = np.asarray(constant(ctx, node, ic, "the bias C"))
        if c.size > 1 and c.shape[-1] != c.size:
            raise unsupported(node, f"C {list(c.shape)} varies along M (one bias per column "
                              "only)")
        bias = np.broadcast_to(c.reshape(-1), (n,)).astype(np.int64)
    mult = None
    out_dt = g.types[out].dtype
    y_zp = 0
    if ias is not None:
        mult = _scale(ctx, node, ias, "a_scale")[0] * _scale(ctx, node, ibs, "b_scale")
        mult = mult * np.float32(attrs.get("alpha", 1.0))
        if out_dt is not DType.float32:
            mult = mult / _scale(ctx, node, iys, "y_scale")[0]
            y_zp = int(_zero_point(ctx, node, iyz, "y_zero_point")[0])
        mult = np.broadcast_to(mult.astype(np.float32), (n,))
    a_dt = g.types[a].dtype
    rows = plan_rows(ctx, wz, k, n, np.broadcast_to(bias, (groups, n)).reshape(-1), a_dt, a_zp)
    if rows.dot and a_dt is U8 and k % 4 == 0 and not trans_a:
        ap = ctx.value(a, (1, ga, m, k), "a")       # the input's bytes are the rows
    else:
        ap = ctx.temp(rows.dtype, (1, ga, m, rows.kp), "ap")
        src = ctx.value(a, (ga, k, m) if trans_a else (ga, m, k), "x")
        gi, mi, kk = Var("g"), Var("m"), Var("kk")
        kc = kk.min(k - 1) if rows.kp > k else kk
        v = rows.value(src[(gi, kc, mi) if trans_a else (gi, mi, kc)])
        if rows.kp > k:
            v = Select(Cmp("lt", kk, Const(k)), v, rows.pad())
        body = For(gi, ga, For(mi, m, For(kk, rows.kp, Store(ap, (0, gi, mi, kk), v))))
        ctx.emit(parallel_outer(Kernel(f"{node.name}_pack", [ap, src], body), ["g", "m"], ctx,
                                ga * m * rows.kp))
    y = ctx.value(out, (groups, m, n), "y")
    int_gemm(ctx, node, rows, ap, wz, np.broadcast_to(bias, (groups, n)), mult, y,
             lambda b, gv, mi, j: (gv, mi, j), requantizer(out_dt, y_zp))


def lower_conv_integer(ctx: LowerCtx, node: Node) -> None:
    """ConvInteger: the windows gathered into rows (im2col), then int_gemm with G groups."""
    g = ctx.graph
    oc_ = op_context(g, node)
    x, out = node.inputs[0], node.outputs[0]
    wq = constant(ctx, node, 1, "the weight w")
    xs, osh = g.types[x].shape, g.types[out].shape
    nd = len(xs) - 2
    win = resolve_window(oc_, xs, wq.shape[2:])
    groups = oc_["group"]
    mo, cg = wq.shape[:2]
    mg, ks = mo // groups, wq.shape[2:]
    taps = prod(ks)
    k, npix = cg * taps, prod(osh[2:])
    x_zp = int(_zero_point(ctx, node, 2, "x_zero_point")[0])
    w_zp = _zero_point(ctx, node, 3, "w_zero_point")
    wz = wq.astype(np.int32) - (w_zp.reshape((-1,) + (1,) * (wq.ndim - 1)) if w_zp.size > 1
                                else w_zp[0])
    wz = np.ascontiguousarray(wz.reshape(groups, mg, k).transpose(0, 2, 1))
    rows = plan_rows(ctx, wz, k, mg, np.zeros(mo, np.int64), g.types[x].dtype, x_zp)
    ap = ctx.temp(rows.dtype, (xs[0], groups, npix, rows.kp), "cols")
    xin = ctx.value(x, bname="x")
    nv, gv, cv = Var("n"), Var("g"), Var("c")
    ov = [Var(f"o{d}") for d in range(nd)]
    kv = [Var(f"k{d}") for d in range(nd)]
    pix, kk = Const(0), cv
    for d in range(nd):
        pix = pix * osh[2 + d] + ov[d]
        kk = kk * ks[d] + kv[d]
    pos = [ov[d] * win.strides[d] + kv[d] * win.dilations[d] - win.begin(d) for d in range(nd)]
    inside = None
    for d, p in enumerate(pos):
        ok = And(Cmp("ge", p, Const(0)), Cmp("lt", p, Const(xs[2 + d])))
        inside = ok if inside is None else And(inside, ok)
    src = (nv, gv * cg + cv) + tuple(p.max(0).min(xs[2 + d] - 1) for d, p in enumerate(pos))
    body: Stmt = Store(ap, (nv, gv, pix, kk), Select(inside, rows.value(xin[src]), rows.pad()))
    for d in reversed(range(nd)):
        body = For(kv[d], ks[d], body)
    body = For(cv, cg, body)
    if rows.kp > k:
        e = Var("e")
        body = seq(body, For(e, rows.kp - k, Store(ap, (nv, gv, pix, e + k), rows.pad())))
    for d in reversed(range(nd)):
        body = For(ov[d], osh[2 + d], body)
    ker = Kernel(f"{node.name}_im2col", [ap, xin], For(nv, xs[0], For(gv, groups, body)))
    ctx.emit(parallel_outer(ker, ["n", "g"], ctx, xs[0] * groups * npix * rows.kp))
    y = ctx.value(out, (osh[0], groups, mg, npix), "y")
    int_gemm(ctx, node, rows, ap, wz, np.zeros((groups, mg), np.int64), None, y,
             lambda b, gv, pi, j: (b, gv, j, pi), requantizer(I32, 0))


INT_GEMM_RULES = {"MatMulInteger": lower_int_matmul, "QLinearMatMul": lower_int_matmul,
                  "QGemm": lower_int_matmul, "ConvInteger": lower_conv_integer}
