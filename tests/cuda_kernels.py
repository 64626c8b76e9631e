"""Hand-built loop IR kernels with GPU-bound loops, shared by the CUDA backend tests.

Each builder returns (kernel, make_inputs(rng) -> {name: array}, expected(arrays) -> {name: array}
computed with numpy from the inputs); tests also run every kernel through the loop IR
interpreter (``run_kernel`` executes gpu loops serially: the sequential meaning of the kernel).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.loop import (Allocate, And, Buffer, Cast, Const, For, If, Kernel, Let, Select,
                           Store, Var, call, seq)

F32, I64, BOOL = DType.float32, DType.int64, DType.bool


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def elementwise(n: int = 1000, threads: int = 256):
    """out[i] = max(sigmoid(x[i]) * y[i] + 0.5, 0) with i = bo * threads + t, guarded."""
    x, y, out = Buffer("x", F32, (n,)), Buffer("y", F32, (n,)), Buffer("out", F32, (n,))
    bo, t = Var("bo"), Var("t")
    i = bo * threads + t
    val = (call("sigmoid", x[i]) * y[i] + 0.5).max(0.0)
    body = For(bo, -(-n // threads), For(t, threads, If(i < n, Store(out, (i,), val)),
                                         "gpu_thread"), "gpu_block")

    def inputs(rng):
        xa = rng.standard_normal(n).astype(np.float32)
        xa[:3] = [np.nan, np.inf, -np.inf]
        return {"x": xa, "y": rng.standard_normal(n).astype(np.float32),
                "out": np.zeros(n, np.float32)}

    def expected(a):
        v = _sigmoid(a["x"].astype(np.float64)) * a["y"] + 0.5
        return {"out": np.where(np.isnan(v) | (v > 0), v, 0.0).astype(np.float32)}
    return Kernel("ew", [x, y, out], body), inputs, expected


def elementwise_unguarded(n: int = 1000, threads: int = 256):
    """The elementwise kernel without its bounds guard: the last block runs past the end."""
    x, out = Buffer("x", F32, (n,)), Buffer("out", F32, (n,))
    bo, t = Var("bo"), Var("t")
    i = bo * threads + t
    body = For(bo, -(-n // threads), For(t, threads, Store(out, (i,), x[i] * 2.0),
                                         "gpu_thread"), "gpu_block")
    return Kernel("ew_oob", [x, out], body)


def row_sum(rows: int = 6, cols: int = 300, threads: int = 128):
    """out[r] = sum(x[r, :]): one block per row; per-thread partial sums in shared memory, then
    a tree reduction (one thread loop per halving step), then a block-scope store."""
    x, out = Buffer("x", F32, (rows, cols)), Buffer("out", F32, (rows,))
    part = Buffer("part", F32, (threads,), "local")
    r, t, c = Var("r"), Var("t"), Var("c")
    col = c * threads + t
    stages = [For(t, threads, seq(
        Store(part, (t,), Const(0.0, F32)),
        For(c, -(-cols // threads), If(col < cols,
                                       Store(part, (t,), part[t] + x[r, col]))),
    ), "gpu_thread")]
    step = threads // 2
    while step >= 1:
        s = Var(f"t{step}")
        stages.append(For(s, step, Store(part, (s,), part[s] + part[s + step]), "gpu_thread"))
        step //= 2
    stages.append(Store(out, (r,), part[0]))
    body = For(r, rows, Allocate(part, seq(*stages)), "gpu_block")

    def inputs(rng):
        return {"x": rng.standard_normal((rows, cols)).astype(np.float32),
                "out": np.zeros(rows, np.float32)}
    return Kernel("row_sum", [x, out], body), inputs, \
        lambda a: {"out": a["x"].astype(np.float64).sum(axis=1).astype(np.float32)}


def tiled_matmul(m: int = 40, n: int = 48, k: int = 40, tile: int = 16):
    """c = a @ b with tile x tile blocks: a and b tiles staged through shared memory (zero
    padded at the edges via clamped loads + select), the accumulator kept per thread (a block-
    scope buffer indexed by the thread vars: registers), unrolled inner product."""
    a, b, c = Buffer("a", F32, (m, k)), Buffer("b", F32, (k, n)), Buffer("c", F32, (m, n))
    acc = Buffer("acc", F32, (tile, tile), "local")
    As = Buffer("As", F32, (tile, tile), "local")
    Bs = Buffer("Bs", F32, (tile, tile), "local")
    by, bx, ko, kk = Var("by"), Var("bx"), Var("ko"), Var("kk")
    v = {name: Var(name) for name in ("ty0", "tx0", "ty1", "tx1", "ty2", "tx2", "ty3", "tx3")}

    def band(ty, tx, body):
        return For(v[ty], tile, For(v[tx], tile, body, "gpu_thread"), "gpu_thread")

    row1, col1 = by * tile + v["ty1"], ko * tile + v["tx1"]
    krow, ncol = ko * tile + v["ty1"], bx * tile + v["tx1"]
    load = band("ty1", "tx1", seq(
        Store(As, (v["ty1"], v["tx1"]),
              Select(And(row1 < m, col1 < k), a[row1.min(m - 1), col1.min(k - 1)],
                     Const(0.0, F32))),
        Store(Bs, (v["ty1"], v["tx1"]),
              Select(And(krow < k, ncol < n), b[krow.min(k - 1), ncol.min(n - 1)],
                     Const(0.0, F32)))))
    ty2, tx2 = v["ty2"], v["tx2"]
    compute = band("ty2", "tx2", For(kk, tile, Store(
        acc, (ty2, tx2), acc[ty2, tx2] + As[ty2, kk] * Bs[kk, tx2]), "unrolled"))
    ty3, tx3 = v["ty3"], v["tx3"]
    row3, col3 = by * tile + ty3, bx * tile + tx3
    store = band("ty3", "tx3", If(And(row3 < m, col3 < n), Store(c, (row3, col3),
                                                                    acc[ty3, tx3])))
    init = band("ty0", "tx0", Store(acc, (v["ty0"], v["tx0"]), Const(0.0, F32)))
    body = For(by, -(-m // tile), For(bx, -(-n // tile), Allocate(acc, Allocate(As, Allocate(
        Bs, seq(init, For(ko, -(-k // tile), seq(load, compute)), store)))), "gpu_block"),
        "gpu_block")

    def inputs(rng):
        return {"a": rng.standard_normal((m, k)).astype(np.float32),
                "b": rng.standard_normal((k, n)).astype(np.float32),
                "c": np.zeros((m, n), np.float32)}
    return Kernel("matmul", [a, b, c], body), inputs, \
        lambda arr: {"c": (arr["a"].astype(np.float64) @ arr["b"]).astype(np.float32)}


def misc_ops(n: int = 64):
    """Integer, bool and math expressions: a gather with Python-modulo indices (negative idx
    wraps), casts, select, a local per-thread array, and two stages (two launches)."""
    x = Buffer("x", F32, (n,))
    idx = Buffer("idx", I64, (n,))
    g = Buffer("g", F32, (n,))
    pos = Buffer("pos", BOOL, (n,))
    m = Buffer("m", F32, (n, 8))
    q = Buffer("q", I64, (n,))
    loc = Buffer("loc", F32, (4,), "local")
    i, j, u = Var("i"), Var("j"), Var("u")
    w = Var("w", F32)
    k1 = For(i, n, seq(
        Store(g, (i,), x[idx[i] % n]),
        Store(pos, (i,), x[i] > 0.0),
        Store(q, (i,), (idx[i] // 3) + Cast(I64, x[i] * 10.0)),
    ), "gpu_thread")
    fns = ["tanh", "erf", "abs", "floor", "ceil", "round", "sin", "cos"]
    k2 = For(i, n // 8, For(j, 8, Allocate(loc, seq(
        For(u, 4, Store(loc, (u,), x[i * 8 + j] * Cast(F32, u)), "unrolled"),
        Let(w, Select(pos[i * 8 + j], call("sqrt", call("abs", x[i * 8 + j])),
                      call("log", call("abs", x[i * 8 + j]) + 1.0)),
            seq(*[Store(m, (i * 8 + j, f), call(fn, x[i * 8 + j] * 2.5) + w
                        + loc[f % 4]) for f, fn in enumerate(fns)])))), "gpu_thread"),
        "gpu_block")
    kern = Kernel("misc", [x, idx, g, pos, m, q], seq(k1, k2))

    def inputs(rng):
        xa = rng.standard_normal(n).astype(np.float32) * 2
        xa[5:8] = [0.2, 1.0, 3.0]   # x * 2.5 = 0.5, 2.5, 7.5: rounding halves to even
        return {"x": xa, "idx": rng.integers(-3 * n, 3 * n, n).astype(np.int64),
                "g": np.zeros(n, np.float32), "pos": np.zeros(n, np.bool_),
                "m": np.zeros((n, 8), np.float32), "q": np.zeros(n, np.int64)}
    return kern, inputs, None


def shared_shift(blocks: int = 4, threads: int = 64, oob: bool = False):
    """out[b, t] = x[b, t + 1] through a shared tile (the last thread reads a halo element).
    With ``oob`` the tile has no halo: the last thread reads one past the shared array."""
    x = Buffer("x", F32, (blocks, threads + 1))
    out = Buffer("out", F32, (blocks, threads))
    tile = Buffer("tile", F32, (threads if oob else threads + 1,), "local")
    b, t, t2, h = Var("b"), Var("t"), Var("t2"), Var("h")
    fill = [For(t, threads, Store(tile, (t,), x[b, t]), "gpu_thread")]
    if not oob:
        fill.append(For(h, 1, Store(tile, (h + threads,), x[b, h + threads]), "gpu_thread"))
    body = For(b, blocks, Allocate(tile, seq(
        *fill, For(t2, threads, Store(out, (b, t2), tile[t2 + 1]), "gpu_thread"))), "gpu_block")

    def inputs(rng):
        return {"x": rng.standard_normal((blocks, threads + 1)).astype(np.float32),
                "out": np.zeros((blocks, threads), np.float32)}
    name = "shift_oob" if oob else "shift"
    return Kernel(name, [x, out], body), inputs, lambda a: {"out": a["x"][:, 1:]}


def scheduled_matmul(m: int = 24, n: int = 32, k: int = 13):
    """A naive matmul written over 8 x 16 output tiles (loops io, jo, ii, ji), its reduction
    split by the schedule (tail) and its tile loops bound by legality-checked Schedule.bind:
    blocks over the tiles, one thread per output element."""
    from cnncc.ir.loop import loop_nest
    from cnncc.ir.schedule import Schedule
    a, b, c = Buffer("a", F32, (m, k)), Buffer("b", F32, (k, n)), Buffer("c", F32, (m, n))

    def element(io, jo, ii, ji):
        i, j = io * 8 + ii, jo * 16 + ji
        return seq(Store(c, (i, j), Const(0.0, F32)),
                   loop_nest([("r", k)], lambda r: Store(c, (i, j), c[i, j] + a[i, r] * b[r, j])))
    s = Schedule(Kernel("smm", [a, b, c], loop_nest(
        [("io", m // 8), ("jo", n // 16), ("ii", 8), ("ji", 16)], element)))
    s.split("r", 4, mode="tail")
    for name, kind in (("io", "gpu_block"), ("jo", "gpu_block"), ("ii", "gpu_thread"),
                       ("ji", "gpu_thread")):
        s.bind(name, kind)
    kernel = s.kernel

    def inputs(rng):
        return {"a": rng.standard_normal((m, k)).astype(np.float32),
                "b": rng.standard_normal((k, n)).astype(np.float32),
                "c": np.zeros((m, n), np.float32)}
    return kernel, inputs, \
        lambda arr: {"c": (arr["a"].astype(np.float64) @ arr["b"]).astype(np.float32)}
