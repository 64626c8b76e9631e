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


# Float types whose arithmetic is emitted natively; float16 is computed in float32 (see
# promote.py), as numpy's float16 loops do.
FLOAT_TYPES = (DType.float32, DType.float64)


def _c(v: float, dt: DType = F32) -> Const:
    return Const(float(v), dt)


def _f(fn: str, x: Expr) -> Expr:
    return Call(fn, (x,), x.dtype)


def _exp(x: Expr) -> Expr:
    return _f("exp", x)


def _softplus(x: Expr) -> Expr:
    return Select(x > 20.0, x, _f("log", _c(1.0, x.dtype) + _exp(x)))


def _expm1_neg(x: Expr) -> Expr:
    """exp(min(x, 0)) - 1 (for the x < 0 branch of Elu-like ops)."""
    return _exp(x.min(_c(0.0, x.dtype))) - 1.0


def unary_expr(op: str, a: dict) -> Callable[[Expr], Expr] | None:
    """The expression of a unary op on an element of any native float type."""
    sig = lambda x: _f("sigmoid", x)                                  # noqa: E731
    table: dict[str, Callable[[Expr], Expr]] = {
        "Relu": lambda x: x.max(_c(0.0, x.dtype)),
        "LeakyRelu": lambda x: Select(x < 0.0, x * a.get("alpha", 0.01), x),
        "Sigmoid": sig,
        "HardSigmoid": lambda x: (x * a.get("alpha", 0.2) + a.get("beta", 0.5)).max(
            _c(0.0, x.dtype)).min(_c(1.0, x.dtype)),
        "HardSwish": lambda x: x * (x * (1 / 6) + 0.5).max(_c(0.0, x.dtype)).min(
            _c(1.0, x.dtype)),
        "Tanh": lambda x: Call("tanh", (x,), x.dtype),
        "Elu": lambda x: Select(x < 0.0, _expm1_neg(x) * a.get("alpha", 1.0), x),
        "Selu": lambda x: Select(x <= 0.0, _expm1_neg(x) * a.get("alpha", 1.0), x)
        * a.get("gamma", 1.0),
        "Softplus": _softplus,
        "Softsign": lambda x: x / (Call("abs", (x,), x.dtype) + 1.0),
        "Mish": lambda x: x * Call("tanh", (_softplus(x),), x.dtype),
        "Swish": lambda x: x * sig(x * a.get("alpha", 1.0)),
        "ThresholdedRelu": lambda x: Select(x > a.get("alpha", 1.0), x, _c(0.0, x.dtype)),
        "Celu": lambda x: x.max(_c(0.0, x.dtype)) + (
            _expm1_neg(x * (1 / a.get("alpha", 1.0))) * a.get("alpha", 1.0)).min(
            _c(0.0, x.dtype)),
        "Shrink": lambda x: Select(x < -a.get("lambd", 0.5), x + a.get("bias", 0.0), Select(
            x > a.get("lambd", 0.5), x - a.get("bias", 0.0), _c(0.0, x.dtype))),
        "Erf": lambda x: Call("erf", (x,), x.dtype),
        "Neg": lambda x: -x,
        "Abs": lambda x: Call("abs", (x,), x.dtype),
        "Reciprocal": lambda x: _c(1.0, x.dtype) / x,
        "Floor": lambda x: Call("floor", (x,), x.dtype),
        "Ceil": lambda x: Call("ceil", (x,), x.dtype),
        "Round": lambda x: Call("round", (x,), x.dtype),
        "Exp": _exp,
        "Log": lambda x: Call("log", (x,), x.dtype),
        "Sqrt": lambda x: Call("sqrt", (x,), x.dtype),
        "Sin": lambda x: Call("sin", (x,), x.dtype),
        "Cos": lambda x: Call("cos", (x,), x.dtype),
    }
    if op == "Gelu":
        if a.get("approximate", "none") == "tanh":
            k = math.sqrt(2 / math.pi)
            return lambda x: x * 0.5 * (_f("tanh", (x + x * x * x * 0.044715) * k) + 1.0)
        return lambda x: x * 0.5 * (Call("erf", (x * (1 / math.sqrt(2)),), x.dtype) + 1.0)
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
        dt = graph.types[node.inputs[0]].dtype

        def bound(v: np.ndarray) -> Const:
            v = v.reshape(())
            return Const(float(v) if dt.is_float else int(v), dt)

        def clip(x: Expr) -> Expr:
            if lo is not None:
                x = x.max(bound(lo))
            if hi is not None:
                x = x.min(bound(hi))
            return x
        return clip
    if node.op in UNARY_OPS:
        return unary_expr(node.op, op_context(graph, node).attrs)
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
             fn: Callable[..., Expr], shapes: list | None = None) -> None:
    """A kernel computing ``out = fn(*inputs)`` elementwise with numpy broadcasting (inputs
    viewed with ``shapes`` when given)."""
    g = ctx.graph
    shapes = shapes or [g.types[i].shape for i in inputs]
    oshape, ishapes = _collapse(g.types[out].shape, shapes)
    obuf = ctx.value(out, oshape, "out")
    ibufs = [ctx.value(i, s, f"in{k}") for k, (i, s) in enumerate(zip(inputs, ishapes))]

    def body(*vs: Var):
        loads = [b[tuple(v if d != 1 else 0 for v, d in zip(vs, b.shape))] for b in ibufs]
        return Store(obuf, vs, fn(*loads))

    nest = loop_nest([(f"i{k}", d) for k, d in enumerate(oshape)], body)
    k = Kernel(name, [obuf] + ibufs, nest)
    ctx.emit(schedule_map(k, ctx, int(np.prod(oshape))))


def lower_elementwise(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    out = node.outputs[0]
    dt = g.types[out].dtype
    if node.op == "Clip" and dt.is_int:
        pass                                   # integer Clip: min/max are exact on any int
    elif dt not in FLOAT_TYPES or any(g.types[i].dtype is not dt for i in node.inputs if i):
        raise unsupported(node, f"element type {dt} is not lowered")
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
    """Per-channel (scale, shift) with y = x * scale + shift (inference mode), in float64."""
    eps = op_context(graph, node).attrs.get("epsilon", 1e-5)
    scale, bias, mean, var = (const_input(graph, node, i, "BatchNormalization parameter")
                              .astype(np.float64) for i in (1, 2, 3, 4))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def _batch_norm(ctx: LowerCtx, node: Node) -> None:
    if len([o for o in node.outputs if o]) != 1:
        raise unsupported(node, "training-mode outputs")
    g = ctx.graph
    x = node.inputs[0]
    shape = g.types[x].shape
    c = shape[1] if len(shape) > 1 else 1
    bshape = (c,) + (1,) * (len(shape) - 2)
    if any(i not in g.params for i in node.inputs[1:5]):
        # Run-time statistics: y = (x - mean) / sqrt(var + eps) * scale + bias.
        eps = op_context(g, node).attrs.get("epsilon", 1e-5)

        def bn(a: Expr, sc: Expr, b: Expr, m: Expr, v: Expr) -> Expr:
            return (a - m) / _f("sqrt", v + eps) * sc + b
        return emit_map(ctx, node.name, node.outputs[0], list(node.inputs[:5]), bn,
                        [shape] + [bshape] * 4)
    s, t = batch_norm_scale_shift(g, node)
    dt = g.types[x].dtype
    s, t = s.astype(dt.np), t.astype(dt.np)
    sname = g.add_param(f"{node.name}_bn_scale", s.reshape(bshape))
    tname = g.add_param(f"{node.name}_bn_shift", t.reshape(bshape))
    emit_map(ctx, node.name, node.outputs[0], [x, sname, tname], lambda a, b, d: a * b + d)
