"""Pooling, dense layers (Gemm, MatMul) and Softmax."""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (Allocate, Buffer, Call, Const, Expr, F32, For, If, Kernel, Stmt, Store,
                           Var, nan_max, seq)
from cnncc.ir.ops.spatial import resolve_window

from .context import LowerCtx, const_input, op_context, unsupported
from .conv import padded_input, phases_for, window_index
from .cpu_schedule import parallel_outer
from .gemm_runtime import emit_runtime_tiles, lower_gemm_runtime, runtime_tile
from .tile_schedules import (GPOOL_KIND, POOL_NCHW_KIND, chain_candidates,
                             chain_fits, choose, dims, gemm_candidates, gemm_fits,
                             gemm_workload, reduction_workload)

NEG_INF = float("-inf")


def _element_type(ctx: LowerCtx, node: Node, types=(DType.float32,)) -> DType:
    """The node's element type; CompileError unless it is one of ``types``."""
    g = ctx.graph
    dt = g.types[node.inputs[0]].dtype
    if any(g.types[v].dtype is not dt for v in list(node.inputs[:1])
           + [o for o in node.outputs if o]) or dt not in types:
        raise unsupported(node, f"element type {dt} is not lowered")
    return dt


def average_counts(win, xs: tuple, include_pad: bool) -> np.ndarray:
    """Per output position of an average pool: how many window positions its divisor counts
    (inside the input, or inside the input and its declared pads)."""
    count = np.ones((), np.float64)
    for d in range(len(xs) - 2):
        pos = (np.arange(win.out[d]) * win.strides[d] - win.begin(d))[:, None] \
            + np.arange(win.kernel[d])[None, :] * win.dilations[d]
        lo, hi = (-win.begin(d), xs[2 + d] + win.end(d)) if include_pad else (0, xs[2 + d])
        count = np.multiply.outer(count, ((pos >= lo) & (pos < hi)).sum(1))
    return count


def lower_pool(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    is_max = node.op == "MaxPool"
    bytes_ = (DType.uint8, DType.int8) if is_max else ()   # quantized values: max is exact
    dt = g.types[node.inputs[0]].dtype
    if is_max and (len([o for o in node.outputs if o]) > 1 or dt not in (F32,) + bytes_):
        from .pool_indices import lower_max_pool_scan
        return lower_max_pool_scan(ctx, node)
    _element_type(ctx, node, (F32,) + bytes_)
    lowest = NEG_INF if dt is F32 else float(np.iinfo(dt.np).min)
    octx = op_context(g, node)
    x, out = node.inputs[0], node.outputs[0]
    xs, oshape = g.types[x].shape, g.types[out].shape
    nd = len(xs) - 2
    win = resolve_window(octx, xs, octx["kernel_shape"], bool(octx["ceil_mode"]))
    lp = octx["p"] if node.op == "LpPool" else None
    begin = [win.begin(d) for d in range(nd)]
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in
            zip(win.out, win.strides, win.kernel, win.dilations)]
    end = [max(win.end(d), need[d] - xs[2 + d] - begin[d]) for d in range(nd)]
    phases = phases_for(win.strides[-1])
    xp = padded_input(ctx, node, x, begin, end, lowest if is_max else 0.0, phases, dt)
    ybuf = ctx.value(out, bname="y")
    inv = None
    if node.op == "AveragePool":
        count = average_counts(win, xs, octx["count_include_pad"] == 1)
        inv = ctx.const((1.0 / np.maximum(count, 1)).astype(np.float32), "inv")
    n, c = Var("n"), Var("c")
    orow = [Var(f"o{d}") for d in range(nd - 1)]
    kv = [Var(f"k{d}") for d in range(nd)]
    st, dl, ks = win.strides, win.dilations, win.kernel
    ow, vt = oshape[-1], ctx.lanes

    def tile(ow0: Expr, width: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", dt, (width,), "local")
        v, v2, v3 = Var(f"v{tag}"), Var(f"v2{tag}"), Var(f"v3{tag}")
        init = For(v, width, Store(acc, (v,), Const(lowest if is_max else 0.0, dt)),
                   "vectorized")
        rows = [o * st[d] + kv[d] * dl[d] for d, o in enumerate(orow)]
        xv = xp[(n, c) + window_index(rows, ow0 + v2, kv[-1], st[-1], dl[-1], phases)]
        mx = nan_max(acc[v2], xv) if dt is F32 else acc[v2].max(xv)
        upd = Store(acc, (v2,), mx if is_max else acc[v2] + (
            xv if lp is None else lp_power(xv, lp)))
        red: Stmt = For(v2, width, upd, "vectorized")
        for d in reversed(range(nd)):
            red = For(kv[d], ks[d], red)
        val = acc[v3] if is_max else acc[v3] * inv[tuple(orow) + (ow0 + v3,)] if lp is None \
            else lp_root(acc[v3], lp)
        epi = For(v3, width, Store(ybuf, (n, c) + tuple(orow) + (ow0 + v3,), val), "vectorized")
        return Allocate(acc, seq(init, red, epi))

    owb = Var("owb")
    vt *= _pool_vectors(ctx, node, xs, oshape, win, -(-ow // vt))
    body: Stmt = For(owb, ow // vt, tile(owb * vt, vt, ""))
    if ow % vt:
        body = seq(body, tile(Const(ow - ow % vt), ow % vt, "t"))
    for d in reversed(range(nd - 1)):
        body = For(orow[d], oshape[2 + d], body)
    body = For(n, oshape[0], For(c, oshape[1], body))
    params = [ybuf, xp] + ([inv] if inv is not None else [])
    k = Kernel(node.name, params, body)
    work = int(np.prod(oshape)) * int(np.prod(ks))
    ctx.emit(parallel_outer(k, ["n", "c"] + [o.name for o in orow], ctx, work))


def _pool_vectors(ctx: LowerCtx, node: Node, xs: tuple, ys: tuple, win, units: int) -> int:
    """Output vectors of a row per tile of an NCHW pool (tile_schedules.ChainSchedule: tuned, or
    the cost model's one; the GPU: one)."""
    if ctx.gpu:
        return 1
    regs = ctx.vector_registers
    attrs = op_context(ctx.graph, node).attrs
    key = reduction_workload(
        POOL_NCHW_KIND, ctx.target, node.op, ctx.graph.types[node.inputs[0]].dtype.value,
        f"x{dims(xs)}", f"y{dims(ys)}", f"k{dims(win.kernel)}", f"s{dims(win.strides)}",
        f"d{dims(win.dilations)}", f"p{dims(win.pads)}" + (f"/lp{attrs['p']}"
                                                           if node.op == "LpPool" else ""))
    return choose(ctx, node.name, key, chain_candidates(units, regs),
                  lambda s: chain_fits(s, units, regs)).k


def lp_power(x: Expr, p: int) -> Expr:
    """|x| ** p (LpPool's summand)."""
    if p == 2:
        return x * x
    ax = Call("abs", (x,), F32)
    return ax if p == 1 else Call("pow", (ax, Const(float(p), F32)), F32)


def lp_root(s: Expr, p: int) -> Expr:
    if p == 1:
        return s
    if p == 2:
        return Call("sqrt", (s,), F32)
    return Call("pow", (s, Const(1.0 / p, F32)), F32)


def lower_global_pool(ctx: LowerCtx, node: Node) -> None:
    _element_type(ctx, node)
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    xs = g.types[x].shape
    nc, hw = xs[0] * xs[1], int(np.prod(xs[2:]))
    xb = ctx.value(x, (nc, hw), "x")
    yb = ctx.value(out, (nc,), "y")
    is_max = node.op == "GlobalMaxPool"
    lp = op_context(g, node).attrs["p"] if node.op == "GlobalLpPool" else None
    i = Var("i")
    rows = 1                 # channels a tile (tile_schedules.ChainSchedule; the GPU: 1)
    if not ctx.gpu:
        regs = ctx.vector_registers
        key = reduction_workload(GPOOL_KIND, ctx.target, node.op, f"x{nc}x{hw}",
                                 f"p{lp}" if lp else "")
        rows = choose(ctx, node.name, key, chain_candidates(nc, regs),
                      lambda s: chain_fits(s, nc, regs)).k

    def tile(i0: Expr, rr: int, tag: str) -> Stmt:
        """Channels i0 .. i0 + rr, each its own accumulator (one: no loop over them)."""
        acc = Buffer(f"acc{tag}", DType.float32, (rr,), "local")
        j, r, r2, r3 = Var(f"j{tag}"), Var(f"r{tag}"), Var(f"r2{tag}"), Var(f"r3{tag}")

        def over(rv: Var, st) -> Stmt:
            if rr == 1:
                return st(Const(0))
            return For(rv, rr, st(rv), "unrolled")

        def upd(q: Expr) -> Stmt:
            xv = xb[i0 + q if rr > 1 else i0, j]
            return Store(acc, (q,), nan_max(acc[q], xv) if is_max else acc[q] + (
                xv if lp is None else lp_power(xv, lp)))

        def res(q: Expr) -> Stmt:
            val = acc[q] if is_max else acc[q] * (1.0 / hw) if lp is None \
                else lp_root(acc[q], lp)
            return Store(yb, (i0 + q if rr > 1 else i0,), val)
        init = over(r, lambda q: Store(acc, (q,), Const(NEG_INF if is_max else 0.0, F32)))
        return Allocate(acc, seq(init, For(j, hw, over(r2, upd)), over(r3, res)))

    body = tile(i * rows if rows > 1 else i, rows, "")
    if nc % rows:
        body = If(i < nc // rows, body, tile(i * rows, nc % rows, "t"))   # the last i
    body = For(i, -(-nc // rows), body)
    ctx.emit(parallel_outer(Kernel(node.name, [yb, xb], body), ["i"], ctx, nc * hw))


def _dense(ctx: LowerCtx, node: Node, a: str, trans_a: bool, m: int, k_dim: int,
           bmat: np.ndarray, bias: np.ndarray | None, out: str, act) -> None:
    """Y[m, n] = act(sum_k A[m, k] * B[k, n] + bias[m|1, n]) with B packed [NB, K, VT]: register
    tiles of R rows x VT = VECTORS * lanes columns (tile_schedules.GemmSchedule: tuned, or the
    cost model's)."""
    lanes, regs = ctx.lanes, ctx.vector_registers
    nn_ = bmat.shape[1]
    key = gemm_workload(ctx.target, m, k_dim, nn_, trans_a)
    sched = choose(ctx, node.name, key, gemm_candidates(m, nn_, lanes, regs),
                   lambda s: gemm_fits(s, m, nn_, lanes, regs))
    vt, r_tile = sched.vectors * lanes, sched.rows
    nb = -(-nn_ // vt)
    # Packed block by block straight into [NB, K, VT]: no padded or transposed full copies (a
    # VGG-11 classifier matrix is 411 MB).
    bp = np.zeros((nb, k_dim, vt), np.float32)
    for j in range(nb):
        cols = min(vt, nn_ - j * vt)
        bp[j, :, :cols] = bmat[:, j * vt:j * vt + cols]
    bias_rows = 1 if bias is None else bias.shape[0]
    bb = np.zeros((bias_rows, nb * vt), np.float32)
    if bias is not None:
        bb[:, :nn_] = bias
    wbuf, bbuf = ctx.const(bp, "w"), ctx.const(bb, "b")
    abuf = ctx.value(a, (k_dim, m) if trans_a else (m, k_dim), "a")
    ybuf = ctx.value(out, (m, nn_), "y")
    nbv = Var("nb")

    def tile(m0: Expr, rr: int, tag: str) -> Stmt:
        acc = Buffer(f"acc{tag}", DType.float32, (rr, vt), "local")
        r, v, r2, v2, r3, v3 = (Var(f"{p}{tag}") for p in ("r", "v", "r2", "v2", "r3", "v3"))
        kk = Var(f"kk{tag}")
        init = For(r, rr, For(v, vt, Store(acc, (r, v), Const(0.0, F32)), "vectorized"),
                   "unrolled")
        aval = abuf[kk, m0 + r2] if trans_a else abuf[m0 + r2, kk]
        upd = Store(acc, (r2, v2), acc[r2, v2] + aval * wbuf[nbv, kk, v2])
        red = For(kk, k_dim, For(r2, rr, For(v2, vt, upd, "vectorized"), "unrolled"))
        val = acc[r3, v3] + bbuf[(m0 + r3) if bias_rows > 1 else 0, nbv * vt + v3]
        if act is not None:
            val = act(val)
        st: Stmt = Store(ybuf, (m0 + r3, nbv * vt + v3), val)
        if nn_ % vt:
            st = If(nbv * vt + v3 < nn_, st, masked=True)      # acc and bias are padded
        epi = For(r3, rr, For(v3, vt, st, "vectorized"), "unrolled")
        return Allocate(acc, seq(init, red, epi))

    mb = Var("mb")
    body: Stmt = For(mb, m // r_tile, tile(mb * r_tile, r_tile, ""))
    if m % r_tile:
        body = seq(body, tile(Const(m - m % r_tile), m % r_tile, "t"))
    k = Kernel(node.name, [ybuf, abuf, wbuf, bbuf], For(nbv, nb, body))
    ctx.emit(parallel_outer(k, ["nb"], ctx, m * nn_ * k_dim))


def lower_gemm(ctx: LowerCtx, node: Node, act=None, out: str | None = None) -> None:
    dt = _element_type(ctx, node, (DType.float32, DType.float64))
    g = ctx.graph
    at = octx_attrs = op_context(g, node).attrs
    if dt is not DType.float32 or any(i and i not in g.params for i in node.inputs[1:]):
        return lower_gemm_runtime(ctx, node, act, out)
    b = const_input(g, node, 1, "B").astype(np.float32, copy=False)
    b = b.T if at["transB"] else b
    if at["alpha"] != 1.0:         # x * 1.0 is x: no full copy of the matrix for nothing
        b = b * np.float32(at["alpha"])
    c = const_input(g, node, 2, "C") if len(node.inputs) > 2 and node.inputs[2] else None
    out = out or node.outputs[0]
    m, nn_ = g.types[out].shape
    bias = None
    if c is not None:
        bias = (np.broadcast_to(c.astype(np.float32), (m, nn_)) * np.float32(
            octx_attrs["beta"]))
        if c.ndim < 2 or c.shape[0] == 1:
            bias = bias[:1]
    _dense(ctx, node, node.inputs[0], bool(at["transA"]), m, b.shape[0], b, bias, out, act)


def lower_matmul(ctx: LowerCtx, node: Node, act=None, out: str | None = None) -> None:
    dt = _element_type(ctx, node, (DType.float32, DType.float64))
    g = ctx.graph
    a, bn = node.inputs
    out = out or node.outputs[0]
    ash = g.types[a].shape
    if dt is DType.float32 and bn in g.params and g.types[bn].rank == 2 and len(ash) >= 2:
        b = g.params[bn].astype(np.float32, copy=False)
        m = int(np.prod(ash[:-1]))
        return _dense(ctx, node, a, False, m, ash[-1], b, None, out, act)
    _generic_matmul(ctx, node, a, bn, out, act)


def _generic_matmul(ctx: LowerCtx, node: Node, a: str, b: str, out: str, act) -> None:
    """Batched, broadcasting MatMul: out[.., m, n] = sum_k A[.., m, k] * B[.., k, n],
    accumulated in the output, vectorized along n."""
    g = ctx.graph
    ash, bsh = g.types[a].shape, g.types[b].shape
    if len(ash) == 1:
        ash = (1,) + ash
    if len(bsh) == 1:
        bsh = bsh + (1,)
    batch = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
    m, k_dim, n_ = ash[-2], ash[-1], bsh[-1]
    ab = ctx.value(a, ash, "a")
    bb = ctx.value(b, bsh, "b")
    yb = ctx.value(out, batch + (m, n_), "y")
    nb = len(batch)

    def a_at(bvs, mv, kk):
        return ab[tuple(v if d != 1 else Const(0) for v, d in zip(bvs[nb - len(ash) + 2:],
                                                                  ash[:-2])) + (mv, kk)]

    def b_at(bvs, kk, nv):
        return bb[tuple(v if d != 1 else Const(0) for v, d in zip(bvs[nb - len(bsh) + 2:],
                                                                  bsh[:-2])) + (kk, nv)]
    sched = runtime_tile(ctx, node, batch, m, n_, k_dim, (False, False), yb.dtype)
    if sched is not None:         # float32 on the CPU: register tiles (gemm_runtime.py)
        return emit_runtime_tiles(ctx, node.name, [yb, ab, bb], batch, m, n_, k_dim, sched,
                                  a_at, b_at, lambda _, i, j, s: s if act is None else act(s))

    def body(*vs):
        bvs, mv, nv = vs[:nb], vs[nb], vs[nb + 1]
        kk = Var("kk")
        yi = tuple(bvs) + (mv, nv)
        fin = Store(yb, yi, act(yb[yi])) if act is not None else None
        return seq(Store(yb, yi, Const(0.0, yb.dtype)),
                   For(kk, k_dim, Store(yb, yi, yb[yi] + a_at(bvs, mv, kk) * b_at(bvs, kk, nv))),
                   fin)

    from cnncc.ir.loop import loop_nest
    from .cpu_schedule import schedule_map
    names = [(f"b{d}", s) for d, s in enumerate(batch)] + [("m", m), ("n", n_)]
    k = Kernel(node.name, [yb, ab, bb], loop_nest(names, body))
    ctx.emit(schedule_map(k, ctx, int(np.prod(batch + (m, n_, k_dim)))))


def lower_softmax(ctx: LowerCtx, node: Node) -> None:
    dt = _element_type(ctx, node, (DType.float32, DType.float64))
    g = ctx.graph
    x, out = node.inputs[0], node.outputs[0]
    shape = g.types[x].shape
    axis = op_context(g, node).attrs["axis"]
    axis = axis + len(shape) if axis < 0 else axis
    outer = int(np.prod(shape[:axis]))
    red = shape[axis]
    inner = int(np.prod(shape[axis + 1:]))
    xb = ctx.value(x, (outer, red, inner), "x")
    yb = ctx.value(out, (outer, red, inner), "y")
    acc = Buffer("acc", dt, (2,), "local")
    o, i, r1, r2, r3 = (Var(n) for n in ("o", "i", "r1", "r2", "r3"))
    log = node.op == "LogSoftmax"
    if node.op not in ("Softmax", "LogSoftmax"):
        raise unsupported(node)

    def exp(e):
        return Call("exp", (e,), dt)

    body = seq(
        Store(acc, (0,), Const(NEG_INF, dt)),
        For(r1, red, Store(acc, (0,), nan_max(acc[0], xb[o, r1, i]))),
        Store(acc, (1,), Const(0.0, dt)),
        For(r2, red, seq(Store(acc, (1,), acc[1] + exp(xb[o, r2, i] - acc[0])))),
        Store(acc, (1,), Call("log", (acc[1],), dt) if log else Const(1.0, dt) / acc[1]),
        For(r3, red, Store(yb, (o, r3, i), xb[o, r3, i] - acc[0] - acc[1] if log
                           else exp(xb[o, r3, i] - acc[0]) * acc[1])))
    k = Kernel(node.name, [yb, xb], For(o, outer, For(i, inner, Allocate(acc, body))))
    ctx.emit(parallel_outer(k, ["o"], ctx, outer * red * inner * 8))
