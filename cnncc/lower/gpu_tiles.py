"""The tiled matrix product of the GPU schedules of Gemm, MatMul (gpu_gemm.py) and Conv
(gpu_conv.py).

The tiled product computes Y[z, m, n] = epilogue(sum_k A[z, m, k] B[z, k, n]):

    for z, by, bx (gpu_block: blockIdx.z, y, x)              tile BM x BN of Y
      acc[T][TM][TN] (registers: private to each thread), As[BK][BM], Bs[BK][BN] (shared),
      sa, sb (per-thread staging registers of the tile copies)
      for t in T (gpu_thread): fetch the A and B tiles of step 0 into sa, sb
      for ko in K / BK:
        for t in T (gpu_thread): put sa into As, sb into Bs
        __syncthreads()
        if ko + 1 < steps: for t in T (gpu_thread): fetch the tiles of step ko + 1
        for t in T (gpu_thread): for kk in BK: a[i] = As[kk][ty + TY i], b[j] = Bs[kk][tx + TX j],
                                 acc[t][i][j] += a[i] b[j]       (TM x TN outer product)
        __syncthreads()
      for t in T (gpu_thread): Y[.., by BM + ty + TY i, bx BN + tx + TX j] = epilogue(acc[t][i][j])

with T = TY x TX threads, ty = t / TX, tx = t % TX. The global loads of the next step are
issued before the multiply of the current one and land in registers (software pipelining: the
load latency hides behind the FMAs; no extra barrier, the registers are per thread). A thread
owns the rows ty + TY i and the columns tx + TX j (strided, not contiguous), so the 32 threads
of a warp read consecutive words of Bs (no bank conflicts), two words of As (broadcast) and
store consecutive columns of Y (coalesced). Tile copies map consecutive threads to the
contiguous axis of the source, so global loads are coalesced; a tile stored transposed to its
source gets one padding column (no bank conflicts on the shared stores). Loads past the matrix
edges are clamped and replaced by 0 (select), stores past them are guarded. A product with
few blocks and a long reduction splits K over blockIdx.z (partial sums in a scratch buffer,
then a second launch adds them and applies the epilogue).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cnncc.ir import CompileError, DType
from cnncc.ir.loop import (Allocate, And, Buffer, Const, Expr, F32, For, If, Kernel, Select,
                           Stmt, Store, Var, seq)

from .gpu_schedule import block_threads

# Enough blocks to give every SM of an A100 / H100 (108 / 132 SMs) work.
TARGET_BLOCKS = 96
MAX_BN = 256        # keeps the B tile (BK x BN floats) at 16 KiB
MAX_SPLITS = 64
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


def plan(m: int, n: int, k: int, z: int = 1) -> tuple[Tiling, int]:
    """(tiling, reduction splits) of an m x n x k product repeated z times (on blockIdx.z).

    In order: the biggest register block (at least 8 outputs per thread) whose grid has
    TARGET_BLOCKS blocks; else such a block with K split over blockIdx.z (when z = 1 and K is
    long) to reach TARGET_BLOCKS; else the tiling with the most blocks (fewest padded columns
    among equals), split when it has fewer than half the target.
    """
    bm = min(64, pow2ceil(m))
    tm = min(4, bm)
    ty = bm // tm
    bk = min(16, pow2ceil(k))
    steps = cdiv(k, bk)
    tilings = [Tiling(bm, threads // ty * tn, bk, tm, tn) for threads, tn in CANDIDATES
               if threads // ty * tn <= MAX_BN]

    def blocks(t: Tiling) -> int:
        return z * cdiv(m, t.bm) * cdiv(n, t.bn)

    def splits(t: Tiling) -> int:
        if z > 1 or steps < 8:
            return 1
        return max(1, min(cdiv(TARGET_BLOCKS, blocks(t)), steps // 4, MAX_SPLITS))

    good = [t for t in tilings if t.tm * t.tn >= 8]
    for t in good:
        if blocks(t) >= TARGET_BLOCKS:
            return t, 1
    for t in good:
        if blocks(t) * splits(t) >= TARGET_BLOCKS:
            return t, splits(t)
    best = max(tilings, key=lambda t: (min(blocks(t), TARGET_BLOCKS), -cdiv(n, t.bn) * t.bn))
    return best, splits(best) if blocks(best) < TARGET_BLOCKS // 2 else 1


def padded_k(k: int, t: Tiling, splits: int) -> int:
    """The reduction length the tiles of a (split) product cover: a multiple of BK x splits."""
    return cdiv(k, t.bk * splits) * t.bk * splits


def split_scratch(ctx, splits: int, m: int, n: int,
                  dtype: DType = DType.float32) -> Buffer | None:
    """The per-node scratch of the partial sums of a split product (None without a split)."""
    return ctx.temp(dtype, (splits, m, n), "part") if splits > 1 else None


def zero(dtype: DType) -> Const:
    return Const(0.0 if dtype.is_float else 0, dtype)


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


class _TileCopy:
    """The copy of a BK x BW tile from global memory to shared memory by ``threads`` threads:
    thread t moves the elements e = t + threads * r (r < count); consecutive threads take
    consecutive elements of the source's contiguous axis (coalesced loads). The copy is split
    in a fetch (global -> per-thread staging registers) and a put (registers -> shared) so the
    next tile's loads are in flight while the current tile is multiplied."""

    def __init__(self, threads: int, bk: int, bw: int, k_contig: bool, tag: str,
                 dtype: DType = F32):
        self.threads, self.bk, self.bw, self.k_contig, self.tag = threads, bk, bw, k_contig, tag
        self.total = bk * bw
        self.count = cdiv(self.total, threads)
        self.stage = Buffer(f"s{tag}", dtype, (threads, self.count), "local")

    def _at(self, t: Expr, r: Expr) -> tuple:
        """(kk, w, element number) of the r-th element of thread t."""
        threads = self.threads
        e = t + r * threads
        inner = self.bk if self.k_contig else self.bw     # the contiguous axis of the tile
        if threads % inner == 0:
            # The contiguous coordinate is t % inner for every r: its index arithmetic (e.g.
            # an output pixel's window origin) is invariant in the tile loops.
            fast, slow = t % inner, t // inner + r * (threads // inner)
        elif inner % threads == 0:
            fast, slow = t + (r * threads) % inner, (r * threads) // inner
        else:
            fast, slow = e % inner, e // inner
        return (fast, slow, e) if self.k_contig else (slow, fast, e)

    def fetch(self, t: Var, load: Callable[[Expr, Expr], Expr], tag: str) -> Stmt:
        r = Var(f"r{self.tag}{tag}")
        kk, w, e = self._at(t, r)
        st: Stmt = Store(self.stage, (t, r), load(kk, w))
        if self.total % self.threads:       # both branches write: the register is defined
            st = If(e < self.total, st, Store(self.stage, (t, r), zero(self.stage.dtype)))
        return For(r, self.count, st, "unrolled")

    def put(self, t: Var, dst: Buffer) -> Stmt:
        r = Var(f"r{self.tag}p")
        kk, w, e = self._at(t, r)
        st: Stmt = Store(dst, (kk, w), self.stage[t, r])
        if self.total % self.threads:
            st = If(e < self.total, st)
        return For(r, self.count, st, "unrolled")


def tiled_product(name: str, params: list, t: Tiling, m: int, n: int, k: int, z: int,
                  load_a: Loader, a_k_contig: bool, load_b: Loader, b_k_contig: bool,
                  epilogue: Epilogue, splits: int = 1, part: Buffer | None = None,
                  dtype: DType = F32, mac: Callable[[Expr, Expr, Expr], Expr] | None = None
                  ) -> Kernel:
    """The kernel of the module docstring (``part`` [splits, m, n] is the scratch of a split
    reduction, whose second stage adds the parts and runs ``epilogue``). ``dtype`` is the
    element type of the tiles and accumulators, ``mac(acc, a, b)`` the accumulation step
    (default acc + a b; an int8 conv passes a 4-byte dot product of int32 words)."""
    if splits > 1 and (z > 1 or part is None):
        raise CompileError(f"internal error: kernel {name}: a split reduction needs z = 1 and "
                           f"a scratch buffer")
    nt = t.threads
    if mac is None:
        def mac(acc: Expr, a: Expr, b: Expr) -> Expr:
            return acc + a * b
    acc = Buffer("acc", dtype, (nt, t.tm, t.tn), "local")
    a_s = Buffer("As", dtype, (t.bk, t.bm + (1 if a_k_contig and t.bm > 1 else 0)), "local")
    b_s = Buffer("Bs", dtype, (t.bk, t.bn + (1 if b_k_contig and t.bn > 1 else 0)), "local")
    zv, by, bx, ko = Var("bz"), Var("by"), Var("bx"), Var("ko")
    steps = cdiv(k, t.bk)
    per = cdiv(steps, splits)
    zz: Expr = Const(0) if z == 1 else zv
    m0, n0 = by * t.bm, bx * t.bn
    t0, t1, t2, t3 = Var("t0"), Var("t1"), Var("t2"), Var("t3")
    i0, j0, i2, j2, i3, j3, kk = (Var(s) for s in ("i0", "j0", "i2", "j2", "i3", "j3", "kk"))

    ca = _TileCopy(nt, t.bk, t.bm, a_k_contig, "a", dtype)
    cb = _TileCopy(nt, t.bk, t.bn, b_k_contig, "b", dtype)

    def fetch(step: Expr, tag: str) -> Stmt:
        """Global loads of the tiles of reduction step ``step`` into the staging registers."""
        tv = Var(f"tf{tag}")
        if splits > 1:
            kb = ((zv % splits) * per + step) * t.bk
        else:
            kb = Const(step.value * t.bk) if isinstance(step, Const) else step * t.bk
        return For(tv, nt, seq(
            ca.fetch(tv, lambda q, w: load_a(zz, m0 + w, kb + q), tag),
            cb.fetch(tv, lambda q, w: load_b(zz, n0 + w, kb + q), tag)), "gpu_thread")

    init = For(t0, nt, For(i0, t.tm, For(j0, t.tn, Store(acc, (t0, i0, j0), zero(dtype)),
                                         "unrolled"), "unrolled"), "gpu_thread")
    nsteps = per if splits > 1 else steps
    put = For(t1, nt, seq(ca.put(t1, a_s), cb.put(t1, b_s)), "gpu_thread")
    prefetch = If(ko + 1 < nsteps, fetch(ko + 1, "n")) if nsteps > 1 else None
    ar = Buffer("ar", dtype, (t.tm,), "local")
    br = Buffer("br", dtype, (t.tn,), "local")
    ty2, tx2 = t2 // t.tx, t2 % t.tx
    ia, jb = Var("ia"), Var("jb")
    fma = For(kk, t.bk, Allocate(ar, Allocate(br, seq(
        For(ia, t.tm, Store(ar, (ia,), a_s[kk, ty2 + ia * t.ty]), "unrolled"),
        For(jb, t.tn, Store(br, (jb,), b_s[kk, tx2 + jb * t.tx]), "unrolled"),
        For(i2, t.tm, For(j2, t.tn, Store(acc, (t2, i2, j2), mac(acc[t2, i2, j2], ar[i2],
                                                                 br[j2])), "unrolled"),
            "unrolled")))),
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
    # put -> barrier -> prefetch of the next step (no barrier: registers) -> compute -> barrier
    body: Stmt = seq(init, fetch(Const(0), "0"), For(ko, nsteps, seq(put, prefetch, compute)),
                     store)
    for buf in (acc, a_s, b_s, ca.stage, cb.stage):
        body = Allocate(buf, body)
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
    sm = Buffer("sm", part.dtype, (1,), "local")
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
