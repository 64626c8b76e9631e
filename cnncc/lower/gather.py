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
from cnncc.ir.loop import Cast, Kernel, Store, loop_nest
from cnncc.ir.ops.registry import run_reference

from .context import LowerCtx, unsupported
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
        ctx.emit(schedule_map(k, ctx.lanes, ctx.threads, n))
