"""Pure data-movement ops lowered as gathers through a compile-time index table.

For an op whose outputs only copy elements of its first input (Gather with constant indices,
Tile, Expand, DepthToSpace, SpaceToDepth, Split, Resize in nearest mode, GatherElements), running
the op's own numpy reference on ``arange(size)`` gives, for every output element, the flat index
of the input element it copies: exact by construction, whatever the op's index rules. The kernel
is then ``out[i] = x[table[i]]`` (int32 table in the weight blob, vectorized gather).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import Cast, Cmp, Const, Expr, Kernel, Select, Store, Var, loop_nest
from cnncc.ir.ops.registry import run_reference

from .context import LowerCtx, op_context, unsupported
from .cpu_schedule import schedule_map

INDEX_MAP_OPS = ("Gather", "GatherElements", "Tile", "Expand", "DepthToSpace", "SpaceToDepth",
                 "Split", "Resize")


def index_tables(ctx: LowerCtx, node: Node) -> list[np.ndarray]:
    g = ctx.graph
    x = node.inputs[0]
    for i in node.inputs[1:]:
        if i and i not in g.params:
            raise unsupported(node, f"input '{i}' must be a compile-time constant")
    if node.op == "Resize":
        from .context import op_context
        if op_context(g, node).attrs["mode"] != "nearest":
            raise unsupported(node, "only nearest-mode Resize is lowered")
    size = g.types[x].size
    shape = g.types[x].shape
    consts = [g.params[i] if i else None for i in node.inputs[1:]]
    results = None
    for dt in (np.int64, np.float64):
        idx = np.arange(size, dtype=dt).reshape(shape)
        try:
            results = run_reference(node, [idx] + consts)
            break
        except (ValueError, TypeError):
            continue
    if results is None:
        raise unsupported(node, "its reference cannot compute an index map")
    tables = []
    for out, r in zip(node.outputs, results):
        r = np.asarray(r)
        if out and r.shape != g.types[out].shape:
            raise unsupported(node, "index map shape mismatch")
        flat = r.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= size
                          or not np.array_equal(flat, np.round(flat))):
            raise unsupported(node, "it is not a pure data movement")
        tables.append(flat.astype(np.int32 if size < 2 ** 31 else np.int64))
    return tables


def lower_index_map(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    x = node.inputs[0]
    if node.op in ("Gather", "GatherElements") and node.inputs[1] not in g.params:
        return _runtime_gather(ctx, node)
    tables = index_tables(ctx, node)
    for j, (out, table) in enumerate(zip(node.outputs, tables)):
        if not out or table.size == 0:
            continue
        n = table.size
        xb = ctx.value(x, (g.types[x].size,), "x")
        yb = ctx.value(out, (n,), "y")
        tb = ctx.const(table, "idx")
        k = Kernel(f"{node.name}_{j}" if j else node.name, [yb, xb, tb], loop_nest(
            [("i", n)], lambda i: Store(yb, (i,), xb[Cast(DType.int64, tb[i])
                                                     if tb.dtype is not DType.int64 else tb[i]])))
        ctx.emit(schedule_map(k, ctx, n))


def _runtime_gather(ctx: LowerCtx, node: Node) -> None:
    """Gather / GatherElements with run-time indices: the index is loaded per output element,
    negative values count from the end; out-of-range indices (an error for the reference) are
    clamped so the kernel never reads outside ``x``."""
    g = ctx.graph
    x, ind, out = node.inputs[0], node.inputs[1], node.outputs[0]
    xs, ish, osh = g.types[x].shape, g.types[ind].shape, g.types[out].shape
    axis = op_context(g, node).attrs.get("axis", 0)
    axis = axis + len(xs) if axis < 0 else axis
    n = xs[axis]
    xb = ctx.value(x, bname="x")
    ib = ctx.value(ind, ish if ish else (1,), "ind")
    yb = ctx.value(out, osh if osh else (1,), "y")

    def fix(e: Expr) -> Expr:
        e = Cast(DType.int64, e) if e.dtype is not DType.int64 else e
        e = Select(Cmp("lt", e, Const(0)), e + n, e)
        return e.max(Const(0)).min(Const(n - 1))

    def body(*vs: Var):
        if not osh:
            vs = vs[:0]
        if node.op == "GatherElements":
            xi = tuple(fix(ib[vs]) if d == axis else v for d, v in enumerate(vs))
        else:
            r = len(ish)
            jv = vs[axis:axis + r]
            xi = tuple(vs[:axis]) + (fix(ib[jv if r else (Const(0),)]),) + tuple(vs[axis + r:])
        return Store(yb, vs if osh else (Const(0),), xb[xi])

    dims = [(f"i{d}", s) for d, s in enumerate(osh)] or [("i0", 1)]
    k = Kernel(node.name, [yb, xb, ib], loop_nest(dims, body))
    ctx.emit(schedule_map(k, ctx, max(int(np.prod(osh)), 1)))
