"""ScatterElements: the output starts as a copy of the data, then one serial loop nest over the
indices applies the updates in index order (so repeated indices accumulate under a reduction
and the last one wins without, as the reference)."""
from __future__ import annotations

from cnncc.ir import DType, Node
from cnncc.ir.loop import Cast, Cmp, Const, Expr, Kernel, Select, Store, Var, loop_nest, nan_max, \
    nan_min

from .context import LowerCtx, op_context
from .tensor import emit_copy

_COMBINE = {"none": None, "add": lambda a, b: a + b, "mul": lambda a, b: a * b,
            "max": nan_max, "min": nan_min}


def lower_scatter_elements(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    data, ind, upd = node.inputs[:3]
    out = node.outputs[0]
    at = op_context(g, node).attrs
    shape = g.types[data].shape
    axis = at["axis"] % len(shape)
    n = shape[axis]
    fn = _COMBINE[at["reduction"]]
    emit_copy(ctx, f"{node.name}_copy", data, out)
    ish = g.types[ind].shape
    if not all(ish):
        return
    yb = ctx.value(out, bname="y")
    ib = ctx.value(ind, bname="ind")
    ub = ctx.value(upd, bname="upd")

    def fix(e: Expr) -> Expr:
        # Negative indices count from the end; out-of-range ones (a reference error) are
        # clamped so the kernel never writes outside the output.
        e = Cast(DType.int64, e) if e.dtype is not DType.int64 else e
        e = Select(Cmp("lt", e, Const(0)), e + n, e)
        return e.max(Const(0)).min(Const(n - 1))

    def body(*vs: Var):
        ti = tuple(fix(ib[vs]) if d == axis else v for d, v in enumerate(vs))
        val = ub[vs] if fn is None else fn(yb[ti], ub[vs])
        return Store(yb, ti, val)

    nest = loop_nest([(f"i{d}", s) for d, s in enumerate(ish)], body)
    ctx.emit(Kernel(f"{node.name}_scatter", [yb, ib, ub], nest))
