"""Elementwise ops: unary activations/math, broadcasting binary and variadic ops, PRelu, Clip,
and inference BatchNormalization (folded into a per-channel scale and shift at compile time).

One kernel per op: a loop nest over the output with broadcast dims collapsed, the innermost
loop vectorized, the outer loops fused and parallel.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from cnncc.ir import DType, Graph, Node
from cnncc.ir.loop import (Call, Const, Expr, F32, Kernel, Select, Store, Var, loop_nest,
                           nan_max, nan_min)

from .context import LowerCtx, const_input, op_context, unsupported
from .cpu_schedule import schedule_map


def _c(v: float) -> Const:
    return Const(float(v), F32)


def _exp(x: Expr) -> Expr:
    return Call("exp", (x,), F32)


def _softplus(x: Expr) -> Expr:
    return Select(x > 20.0, x, Call("log", (_c(1.0) + _exp(x),), F32))


def _expm1_neg(x: Expr) -> Expr:
    """exp(min(x, 0)) - 1 (for the x < 0 branch of Elu-like ops)."""
    return _exp(x.min(_c(0.0))) - 1.0


def _unary_expr(op: str, a: dict) -> Callable[[Expr], Expr] | None:
    sig = lambda x: Call("sigmoid", (x,), F32)                       # noqa: E731
    table: dict[str, Callable[[Expr], Expr]] = {
        "Relu": lambda x: x.max(_c(0.0)),
        "LeakyRelu": lambda x: Select(x < 0.0, x * a.get("alpha", 0.01), x),
        "Sigmoid": sig,
        "HardSigmoid": lambda x: (x * a.get("alpha", 0.2) + a.get("beta", 0.5)).max(
            _c(0.0)).min(_c(1.0)),
        "HardSwish": lambda x: x * (x * (1 / 6) + 0.5).max(_c(0.0)).min(_c(1.0)),
        "Tanh": lambda x: Call("tanh", (x,), F32),
        "Elu": lambda x: Select(x < 0.0, _expm1_neg(x) * a.get("alpha", 1.0), x),
        "Selu": lambda x: Select(x <= 0.0, _expm1_neg(x) * a.get("alpha", 1.0), x)
        * a.get("gamma", 1.0),
        "Softplus": _softplus,
        "Softsign": lambda x: x / (Call("abs", (x,), F32) + 1.0),
        "Mish": lambda x: x * Call("tanh", (_softplus(x),), F32),
        "Swish": lambda x: x * sig(x * a.get("alpha", 1.0)),
        "ThresholdedRelu": lambda x: Select(x > a.get("alpha", 1.0), x, _c(0.0)),
        "Celu": lambda x: x.max(_c(0.0)) + (_expm1_neg(x * (1 / a.get("alpha", 1.0)))
                                           * a.get("alpha", 1.0)).min(_c(0.0)),
        "Shrink": lambda x: Select(x < -a.get("lambd", 0.5), x + a.get("bias", 0.0), Select(
            x > a.get("lambd", 0.5), x - a.get("bias", 0.0), _c(0.0))),
        "Erf": lambda x: Call("erf", (x,), F32),
        "Neg": lambda x: -x,
        "Abs": lambda x: Call("abs", (x,), F32),
        "Reciprocal": lambda x: _c(1.0) / x,
        "Floor": lambda x: Call("floor", (x,), F32),
        "Ceil": lambda x: Call("ceil", (x,), F32),
        "Round": lambda x: Call("round", (x,), F32),
        "Exp": _exp,
        "Log": lambda x: Call("log", (x,), F32),
        "Sqrt": lambda x: Call("sqrt", (x,), F32),
        "Sin": lambda x: Call("sin", (x,), F32),
        "Cos": lambda x: Call("cos", (x,), F32),
    }
    if op == "Gelu":
        if a.get("approximate", "none") == "tanh":
            k = math.sqrt(2 / math.pi)
            return lambda x: x * 0.5 * (Call("tanh", ((x + x * x * x * 0.044715) * k,), F32)
                                        + 1.0)
        return lambda x: x * 0.5 * (Call("erf", (x * (1 / math.sqrt(2)),), F32) + 1.0)
    return table.get(op)


UNARY_OPS = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
             "Softplus", "Softsign", "Mish", "Swish", "ThresholdedRelu", "Erf", "Neg", "Abs",
             "Reciprocal", "Floor", "Ceil", "Round", "Exp", "Log", "Sqrt", "Sin", "Cos", "Gelu",
             "Celu", "Shrink")
BINARY_OPS = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
              "Div": lambda a, b: a / b, "Max": nan_max,
              "Min": nan_min, "Sum": lambda a, b: a + b,
              "Mean": lambda a, b: a + b, "PRelu": lambda x, s: Select(x < 0.0, x * s, x)}


def activation_fn(graph: Graph, node: Node) -> Callable[[Expr], Expr] | None:
    """The epilogue function of a unary activation node (for fusion), or None."""
    if node.op == "Clip":
        lo, hi = (const_input(graph, node, i, "Clip bound") if len(node.inputs) > i
                  and node.inputs[i] else None for i in (1, 2))
        if any(v is not None and v.dtype != np.float32 for v in (lo, hi)):
            return None

        def clip(x: Expr) -> Expr:
            if lo is not None:
                x = x.max(_c(float(lo.reshape(()))))
            if hi is not None:
                x = x.min(_c(float(hi.reshape(()))))
            return x
        return clip
    if node.op in UNARY_OPS:
        return _unary_expr(node.op, op_context(graph, node).attrs)
    return None


def _collapse(out_shape: tuple, in_shapes: list[tuple]) -> tuple[list, list[list]]:
    """Merge adjacent output dims whose broadcast pattern agrees for every input."""
    r = len(out_shape)
    aligned = [(1,) * (r - len(s)) + tuple(s) for s in in_shapes]
    groups: list[list[int]] = []
    pats: list = []
    for d in range(r):
        pat = tuple(s[d] == 1 and out_shape[d] != 1 for s in aligned)
        if out_shape[d] == 1 and groups:
            groups[-1].append(d)
            continue
        if groups and pats[-1] == pat:
            groups[-1].append(d)
        elif groups and pats[-1] is None:
            groups[-1].append(d)
            pats[-1] = pat
        else:
            groups.append([d])
            pats.append(None if out_shape[d] == 1 else pat)
    oshape = [int(np.prod([out_shape[d] for d in g])) for g in groups] or [1]
    ishapes = [[int(np.prod([s[d] for d in g])) for g in groups] or [1] for s in aligned]
    return oshape, ishapes


def emit_map(ctx: LowerCtx, name: str, out: str, inputs: list[str],
             fn: Callable[..., Expr]) -> None:
    """A kernel computing ``out = fn(*inputs)`` elementwise with numpy broadcasting."""
    g = ctx.graph
    oshape, ishapes = _collapse(g.types[out].shape, [g.types[i].shape for i in inputs])
    obuf = ctx.value(out, oshape, "out")
    ibufs = [ctx.value(i, s, f"in{k}") for k, (i, s) in enumerate(zip(inputs, ishapes))]

    def body(*vs: Var):
        loads = [b[tuple(v if d != 1 else 0 for v, d in zip(vs, b.shape))] for b in ibufs]
        return Store(obuf, vs, fn(*loads))

    nest = loop_nest([(f"i{k}", d) for k, d in enumerate(oshape)], body)
    k = Kernel(name, [obuf] + ibufs, nest)
    ctx.emit(schedule_map(k, ctx.lanes, ctx.threads, int(np.prod(oshape))))


def lower_elementwise(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    out = node.outputs[0]
    if g.types[out].dtype is not DType.float32 or any(
            g.types[i].dtype is not DType.float32 for i in node.inputs if i):
        raise unsupported(node, "only float32 is lowered")
    if node.op == "BatchNormalization":
        return _batch_norm(ctx, node)
    if node.op == "Clip" and any(i and i not in g.params for i in node.inputs[1:]):
        # Run-time bounds: extra (scalar, broadcast) inputs of the map.
        bounds = [(k, i) for k, i in enumerate(node.inputs[1:3]) if i]

        def clip(x: Expr, *bs: Expr) -> Expr:
            for (k, _), b in zip(bounds, bs):
                x = x.max(b) if k == 0 else x.min(b)
            return x
        return emit_map(ctx, node.name, out, [node.inputs[0]] + [i for _, i in bounds], clip)
    act = activation_fn(g, node)
    if act is not None:
        return emit_map(ctx, node.name, out, [node.inputs[0]], act)
    if node.op in BINARY_OPS:
        f = BINARY_OPS[node.op]
        n = len(node.inputs)
        if node.op == "Mean":
            return emit_map(ctx, node.name, out, list(node.inputs),
                            lambda *xs: _reduce(f, xs) * (1.0 / n))
        return emit_map(ctx, node.name, out, list(node.inputs), lambda *xs: _reduce(f, xs))
    raise unsupported(node)


def _reduce(f, xs):
    acc = xs[0]
    for x in xs[1:]:
        acc = f(acc, x)
    return acc


def batch_norm_scale_shift(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) with y = x * scale + shift (inference mode)."""
    eps = op_context(graph, node).attrs.get("epsilon", 1e-5)
    scale, bias, mean, var = (const_input(graph, node, i, "BatchNormalization parameter")
                              .astype(np.float64) for i in (1, 2, 3, 4))
    s = scale / np.sqrt(var + eps)
    return s.astype(np.float32), (bias - mean * s).astype(np.float32)


def _batch_norm(ctx: LowerCtx, node: Node) -> None:
    if len([o for o in node.outputs if o]) != 1:
        raise unsupported(node, "training-mode outputs")
    g = ctx.graph
    x = node.inputs[0]
    shape = g.types[x].shape
    c = shape[1] if len(shape) > 1 else 1
    s, t = batch_norm_scale_shift(g, node)
    bshape = (c,) + (1,) * (len(shape) - 2)
    sname = g.add_param(f"{node.name}_bn_scale", s.reshape(bshape))
    tname = g.add_param(f"{node.name}_bn_shift", t.reshape(bshape))
    emit_map(ctx, node.name, node.outputs[0], [x, sname, tname], lambda a, b, d: a * b + d)
