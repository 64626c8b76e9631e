"""float16 arithmetic computed in float32, as numpy's float16 loops do: every float16 input of
the node is widened into a float32 arena copy (constants are widened at compile time), the
node is lowered on float32 values, and every float16 output is rounded back (round to nearest
even, one rounding per op, exactly numpy's result for elementwise ops)."""
from __future__ import annotations

from typing import Callable

from cnncc.ir import DType, Node, TensorType
from cnncc.ir.loop import Cast

from .context import LowerCtx
from .elementwise import emit_map

F16, F32 = DType.float16, DType.float32

# Ops that move float16 elements without arithmetic: lowered on float16 directly.
F16_NATIVE = ("Cast", "CastLike", "Gather", "GatherElements", "Tile", "Expand", "DepthToSpace",
              "SpaceToDepth", "Split", "Concat", "Transpose", "Slice", "Identity", "Reshape",
              "Flatten", "Squeeze", "Unsqueeze")


def needs_promotion(ctx: LowerCtx, node: Node) -> bool:
    """Whether ``node`` does float16 arithmetic (some float16 input or output)."""
    if node.op in F16_NATIVE:
        return False
    g = ctx.graph
    return any(v and g.types[v].dtype is F16 for v in list(node.inputs) + list(node.outputs))


def lower_promoted(ctx: LowerCtx, node: Node, rule: Callable) -> None:
    """Lower ``node`` with ``rule`` on float32 copies of its float16 values."""
    g = ctx.graph
    ins = []
    for k, i in enumerate(node.inputs):
        if not i or g.types[i].dtype is not F16:
            ins.append(i)
        elif i in g.params:
            ins.append(g.add_param(f"{i}_f32", g.params[i].astype(F32.np)))
        else:
            wide = g.fresh_name(f"{i}_f32")
            g.types[wide] = TensorType(F32, g.types[i].shape)
            emit_map(ctx, f"{node.name}_widen{k}", wide, [i], lambda a: Cast(F32, a))
            ins.append(wide)
    outs, narrow = [], []
    for o in node.outputs:
        if not o or g.types[o].dtype is not F16:
            outs.append(o)
            continue
        wide = g.fresh_name(f"{o}_f32")
        g.types[wide] = TensorType(F32, g.types[o].shape)
        outs.append(wide)
        narrow.append((wide, o))
    rule(ctx, Node(node.op, ins, outs, dict(node.attrs), node.name))
    for k, (wide, o) in enumerate(narrow):
        emit_map(ctx, f"{node.name}_round{k}", o, [wide], lambda a: Cast(F16, a))
