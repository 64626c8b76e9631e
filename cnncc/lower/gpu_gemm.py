"""GPU schedules of Gemm and MatMul, and the tiled matrix product they share with gpu_conv.py.

The tiled product computes Y[z, m, n] = epilogue(sum_k A[z, m, k] B[z, k, n]):

    for z, by, bx (gpu_block: blockIdx.z, y, x)              tile BM x BN of Y
      acc[T][TM][TN] (registers: private to each thread), As[BK][BM], Bs[BK][BN] (shared)
      for ko in K / BK:
        for t in T (gpu_thread): copy A[.., ko*BK .. +BK] into As, B into Bs   (coalesced)
        __syncthreads()
        for t in T (gpu_thread): for kk in BK: a[i] = As[kk][ty + TY i], b[j] = Bs[kk][tx + TX j],
                                 acc[t][i][j] += a[i] b[j]       (TM x TN outer product)
        __syncthreads()
      for t in T (gpu_thread): Y[.., by BM + ty + TY i, bx BN + tx + TX j] = epilogue(acc[t][i][j])

with T = TY x TX threads, ty = t / TX, tx = t % TX. A thread owns the rows ty + TY i and the
columns tx + TX j (strided, not contiguous), so the 32 threads of a warp read consecutive words
of Bs (no bank conflicts), two words of As (broadcast) and store consecutive columns of Y
(coalesced). Tile copies map consecutive threads to the contiguous axis of the source, so
global loads are coalesced; a tile stored transposed to its source gets one padding column
(no bank conflicts on the shared stores). Loads past the matrix edges are clamped and
replaced by 0 (select), stores past them are guarded. A product with few blocks and a long
reduction splits K over blockIdx.z (partial sums in a scratch buffer, then a second launch
adds them and applies the epilogue).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, And, Buffer, Const, Expr, F32, For, If, Kernel, Select,
                           Stmt, Store, Var, seq)

from .context import LowerCtx, op_context
from .gpu_schedule import block_threads
from .nn import lower_gemm, lower_matmul

# Enough blocks to give every SM of an A100 / H100 (108 / 132 SMs) work.
TARGET_BLOCKS = 96
MAX_BN = 256        # keeps the B tile (BK x BN floats) at 16 KiB
# (threads per block, columns per thread) tried in order, most work per thread first.
CANDIDATES = ((256, 4), (256, 2), (128, 4), (128, 2), (256, 1), (128, 1))

# A loader gives the element (z, row, k) of an operand as an expression; ``row`` and ``k`` may
# lie past the matrix (in the last tile): the loader clamps and selects 0 there.
Loader = Callable[[Expr, Expr, Expr], Expr]
# An epilogue gives the store of output (z, m, n) from its accumulated value.
Epilogue = Callable[[Expr, Expr, Expr, Expr], Stmt]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2ceil(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


@dataclass(frozen=True)
class Tiling:
    """Block tile BM x BN, reduction step BK, TM x TN outputs per thread."""
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def ty(self) -> int:
        return self.bm // self.tm

    @property
    def tx(self) -> int:
        return self.bn // self.tn

    @property
    def threads(self) -> int:
        return self.ty * self.tx


def choose_tiling(m: int, n: int, k: int, z: int = 1) -> Tiling:
    """The largest per-thread register block that still gives TARGET_BLOCKS blocks (else the
    tiling with the most blocks)."""
    bm = min(64, pow2ceil(m))
    tm = min(4, bm)
    ty = bm // tm
    bk = min(16, pow2ceil(k))
    best, best_blocks = None, -1
    for threads, tn in CANDIDATES:
        bn = threads // ty * tn
        if bn > MAX_BN:
            continue
        blocks = z * cdiv(m, bm) * cdiv(n, bn)
        if blocks >= TARGET_BLOCKS:
            return Tiling(bm, bn, bk, tm, tn)
        if blocks > best_blocks:
            best, best_blocks = Tiling(bm, bn, bk, tm, tn), blocks
    return best


def split_count(t: Tiling, m: int, n: int, k: int, z: int) -> int:
    """Reduction splits for a product with few blocks and a long K (0 or 1: no split)."""
    blocks = z * cdiv(m, t.bm) * cdiv(n, t.bn)
    steps = cdiv(k, t.bk)
    if z > 1 or blocks >= TARGET_BLOCKS // 2 or steps < 16:
        return 1
    return max(1, min(cdiv(TARGET_BLOCKS, blocks), steps // 8, 64))


def clamped(buf: Buffer, idx: tuple, limits: tuple) -> Expr:
    """buf[idx] where each index is checked against its limit (None: always in range): an
    out-of-range element reads as 0 (the load itself is clamped into the buffer)."""
    cond, safe = None, []
    for i, lim in zip(idx, limits):
        if lim is None:
            safe.append(i)
            continue
        c = i < lim
        cond = c if cond is None else And(cond, c)
        safe.append(i.min(lim - 1))
    if cond is None:
        return buf[tuple(safe)]
    return Select(cond, buf[tuple(safe)], Const(0.0, F32))


def _tile_copy(dst: Buffer, t: Expr, threads: int, bk: int, bw: int, k_contig: bool,
               load: Callable[[Expr, Expr], Expr], tag: str) -> Stmt:
    """dst[kk][w] = load(kk, w) for the BK x BW tile, element e = t + threads * r; consecutive
    threads take consecutive elements of the source's contiguous axis."""
    total = bk * bw
    r = Var(f"r{tag}")
    e = t + r * threads
    kk, w = (e % bk, e // bk) if k_contig else (e // bw, e % bw)
    st: Stmt = Store(dst, (kk, w), load(kk, w))
    if total % threads:
        st = If(e < total, st)
    return For(r, cdiv(total, threads), st, "unrolled")


def tiled_product(name: str, params: list, t: Tiling, m: int, n: int, k: int, z: int,
                  load_a: Loader, a_k_contig: bool, load_b: Loader, b_k_contig: bool,
                  epilogue: Epilogue, splits: int = 1, part: Buffer | None = None) -> Kernel:
    """The kernel of the module docstring (``part`` [splits, m, n] is the scratch of a split
    reduction, whose second stage adds the parts and runs ``epilogue``)."""
    nt = t.threads
    acc = Buffer("acc", F32, (nt, t.tm, t.tn), "local")
    a_s = Buffer("As", F32, (t.bk, t.bm + (1 if a_k_contig and t.bm > 1 else 0)), "local")
    b_s = Buffer("Bs", F32, (t.bk, t.bn + (1 if b_k_contig and t.bn > 1 else 0)), "local")
    zv, by, bx, ko = Var("bz"), Var("by"), Var("bx"), Var("ko")
    steps = cdiv(k, t.bk)
    per = cdiv(steps, splits)
    zz = zv // splits if splits > 1 else zv
    k0 = ((zv % splits) * per + ko) * t.bk if splits > 1 else ko * t.bk
    m0, n0 = by * t.bm, bx * t.bn
    t0, t1, t2, t3 = Var("t0"), Var("t1"), Var("t2"), Var("t3")
    i0, j0, i2, j2, i3, j3, kk = (Var(s) for s in ("i0", "j0", "i2", "j2", "i3", "j3", "kk"))

    init = For(t0, nt, For(i0, t.tm, For(j0, t.tn, Store(acc, (t0, i0, j0), Const(0.0, F32)),
                                         "unrolled"), "unrolled"), "gpu_thread")
    copy = For(t1, nt, seq(
        _tile_copy(a_s, t1, nt, t.bk, t.bm, a_k_contig,
                   lambda q, w: load_a(zz, m0 + w, k0 + q), "a"),
        _tile_copy(b_s, t1, nt, t.bk, t.bn, b_k_contig,
                   lambda q, w: load_b(zz, n0 + w, k0 + q), "b")), "gpu_thread")
    ar = Buffer("ar", F32, (t.tm,), "local")
    br = Buffer("br", F32, (t.tn,), "local")
    ty2, tx2 = t2 // t.tx, t2 % t.tx
    ia, jb = Var("ia"), Var("jb")
    fma = For(kk, t.bk, Allocate(ar, Allocate(br, seq(
        For(ia, t.tm, Store(ar, (ia,), a_s[kk, ty2 + ia * t.ty]), "unrolled"),
        For(jb, t.tn, Store(br, (jb,), b_s[kk, tx2 + jb * t.tx]), "unrolled"),
        For(i2, t.tm, For(j2, t.tn, Store(acc, (t2, i2, j2), acc[t2, i2, j2]
                                          + ar[i2] * br[j2]), "unrolled"), "unrolled")))),
        "unrolled")
    compute = For(t2, nt, fma, "gpu_thread")
    ty3, tx3 = t3 // t.tx, t3 % t.tx
    mi, ni = m0 + ty3 + i3 * t.ty, n0 + tx3 + j3 * t.tx
    if splits > 1:
        out: Stmt = Store(part, (zv, mi, ni), acc[t3, i3, j3])
    else:
        out = epilogue(zz, mi, ni, acc[t3, i3, j3])
    cond = None
    if m % t.bm:
        cond = mi < m
    if n % t.bn:
        cond = ni < n if cond is None else And(cond, ni < n)
    if cond is not None:
        out = If(cond, out)
    store = For(t3, nt, For(i3, t.tm, For(j3, t.tn, out, "unrolled"), "unrolled"), "gpu_thread")
    body: Stmt = Allocate(acc, Allocate(a_s, Allocate(b_s, seq(
        init, For(ko, per if splits > 1 else steps, seq(copy, compute)), store))))
    body = For(by, cdiv(m, t.bm), For(bx, cdiv(n, t.bn), body, "gpu_block"), "gpu_block")
    if z * splits > 1:
        body = For(zv, z * splits, body, "gpu_block")
    if splits > 1:
        body = seq(body, _reduce_parts(part, splits, m, n, epilogue))
    return Kernel(name, params, body)


def _reduce_parts(part: Buffer, splits: int, m: int, n: int, epilogue: Epilogue) -> Stmt:
    """Second launch of a split reduction: out[m, n] = epilogue(sum_s part[s, m, n]), one
    thread per output element (consecutive threads: consecutive columns)."""
    total = m * n
    nt = block_threads(total)
    b, t, s = Var("rb"), Var("rt"), Var("rs")
    sm = Buffer("sm", F32, (1,), "local")
    q = b * nt + t
    mi, ni = q // n, q % n
    body: Stmt = Allocate(sm, seq(
        Store(sm, (0,), part[0, mi, ni]),
        For(s, splits - 1, Store(sm, (0,), sm[0] + part[s + 1, mi, ni])),
        epilogue(Const(0), mi, ni, sm[0])))
    if total % nt:
        body = If(q < total, body)
    return For(b, cdiv(total, nt), For(t, nt, body, "gpu_thread"), "gpu_block")


def packed(mat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``mat`` zero-padded to rows x cols (tile multiples: its tile loads need no guard)."""
    out = np.zeros((rows, cols), np.float32)
    out[:mat.shape[0], :mat.shape[1]] = mat
    return out


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
    t = choose_tiling(m, n, k)
    splits = split_count(t, m, n, k, 1)
    ab = ctx.value(a, bname="a")
    yb = ctx.value(out, (m, n), "y")
    params = [yb, ab]

    def load_a(_z, mi, ki):
        return clamped(ab, (ki, mi) if ta else (mi, ki), (k, m) if ta else (m, k))

    scale = 1.0
    if b in g.params:
        bm = g.params[b].astype(np.float32)
        bm = (bm.T if tb else bm) * np.float32(alpha)
        kp = cdiv(k, t.bk * splits) * t.bk * splits
        bb = ctx.const(packed(bm, kp, cdiv(n, t.bn) * t.bn), "b")

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

    part = None
    if splits > 1:
        part = ctx.temp(DType.float32, (splits, m, n), "part")
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
        t = choose_tiling(m, n, k)
        splits = split_count(t, m, n, k, 1)
        ab = ctx.value(a, (m, k), "a")
        kp = cdiv(k, t.bk * splits) * t.bk * splits
        bb = ctx.const(packed(g.params[b].astype(np.float32), kp, cdiv(n, t.bn) * t.bn), "b")
        yb = ctx.value(out, (m, n), "y")
        params = [yb, ab, bb]

        def load_a(_z, mi, ki):
            return clamped(ab, (mi, ki), (m, k))

        def load_b(_z, ni, ki):
            return bb[ki, ni]

        def store(_z, mi, ni, v):
            return Store(yb, (mi, ni), act(v) if act is not None else v)
        part = None
        if splits > 1:
            part = ctx.temp(DType.float32, (splits, m, n), "part")
            params.append(part)
        return ctx.emit(tiled_product(node.name, params, t, m, n, k, 1, load_a, True, load_b,
                                      False, store, splits, part))
    batch = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
    z, m = int(np.prod(batch)), ash[-2]
    ab = ctx.value(a, (int(np.prod(ash[:-2])), m, k), "a")
    bb = ctx.value(b, (int(np.prod(bsh[:-2])), k, n), "b")
    yb = ctx.value(out, (z, m, n), "y")
    a_of, b_of = batch_index(batch, ash[:-2]), batch_index(batch, bsh[:-2])
    t = choose_tiling(m, n, k, z)

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
