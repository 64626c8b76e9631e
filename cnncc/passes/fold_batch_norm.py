"""fold_batch_norm: BatchNormalization (and per-channel scale/shift) folded into conv weights.

With s = gamma / sqrt(var + eps) and per-output-channel constants a, c:

    BN(Conv(x, W, b), gamma, beta, mean, var)  ==>  Conv(x, W * s[o], (b - mean) * s + beta)
    Mul(Conv(x, W, b), a)                      ==>  Conv(x, W * a[o], b * a)
    Add(Conv(x, W, b), c)                      ==>  Conv(x, W, b + c)
    BN(x, gamma, beta, mean, var)    (no conv)  ==>  Add(Mul(x, s[c,1..]), (beta - mean*s)[c,1..])

Only when the conv output has no other user (the rewriter guarantees it) and a, c broadcast as one
value per output channel (shapes like [C,1,1], [1,C,1,1], [1] or []). Folding happens in float64
and is stored as float32, so the folded conv is as exact as the unfolded pair.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import Graph
from cnncc.ir.rewrite import AnyValue, Builder, Match, Op, Opt, Param, Rule, apply_rules


def _conv_channels(b: Builder, m: Match) -> int:
    return b.graph.params[m.values["w"]].shape[0]


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a [channels] vector if it broadcasts per output channel of a rank-``rank``
    NCHW tensor without changing its shape; else None."""
    if value.ndim > rank or value.dtype.kind != "f":
        return None
    full = (1,) * (rank - value.ndim) + value.shape
    if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,))


def _emit_conv(b: Builder, m: Match, w: np.ndarray, bias: np.ndarray) -> None:
    conv = m.nodes["conv"]
    dtype = b.graph.params[m.values["w"]].dtype
    new_w = b.param(f"{conv.name}_w_folded", w.astype(dtype))
    new_b = b.param(f"{conv.name}_b_folded", bias.astype(dtype))
    b.node("Conv", [m.values["x"], new_w, new_b], conv.attrs, outputs=list(m.root.outputs),
           name=conv.name)


def _weights(b: Builder, m: Match) -> tuple[np.ndarray, np.ndarray]:
    w = b.graph.params[m.values["w"]].astype(np.float64)
    bias = m.param(b.graph, "b")
    bias = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64)
    return w, bias


def _bn_scale(b: Builder, m: Match) -> tuple[np.ndarray, np.ndarray] | None:
    eps = m.nodes["bn"].attrs.get("epsilon", 1e-5)
    p = {k: m.param(b.graph, k).astype(np.float64) for k in ("gamma", "beta", "mean", "var")}
    if any(v.ndim != 1 for v in p.values()):
        return None
    s = p["gamma"] / np.sqrt(p["var"] + eps)
    return s, p["beta"] - p["mean"] * s


def _fold_conv_bn(b: Builder, m: Match) -> bool:
    if m.nodes["bn"].attrs.get("training_mode", 0):
        return False
    scale_shift = _bn_scale(b, m)
    if scale_shift is None:
        return False
    s, shift = scale_shift
    w, bias = _weights(b, m)
    if s.shape != (w.shape[0],):
        return False
    _emit_conv(b, m, w * s.reshape((-1,) + (1,) * (w.ndim - 1)), bias * s + shift)
    return True


def _fold_conv_mul(b: Builder, m: Match) -> bool:
    w, bias = _weights(b, m)
    a = _per_channel(m.param(b.graph, "a"), w.shape[0], w.ndim)
    if a is None:
        return False
    _emit_conv(b, m, w * a.reshape((-1,) + (1,) * (w.ndim - 1)), bias * a)
    return True


def _fold_conv_add(b: Builder, m: Match) -> bool:
    w, bias = _weights(b, m)
    c = _per_channel(m.param(b.graph, "c"), w.shape[0], w.ndim)
    if c is None:
        return False
    _emit_conv(b, m, w, bias + c)
    return True


def _bn_to_scale_shift(b: Builder, m: Match) -> bool:
    if m.nodes["bn"].attrs.get("training_mode", 0):
        return False
    scale_shift = _bn_scale(b, m)
    x_type = b.graph.types[m.values["x"]]
    if scale_shift is None or x_type.rank < 2:
        return False
    s, shift = scale_shift
    shape = (-1,) + (1,) * (x_type.rank - 2)
    dtype = x_type.dtype.np
    name = m.root.name
    s_p = b.param(f"{name}_scale", s.reshape(shape).astype(dtype))
    t_p = b.param(f"{name}_shift", shift.reshape(shape).astype(dtype))
    (scaled,) = b.node("Mul", [m.values["x"], s_p], name=f"{name}_mul")
    b.node("Add", [scaled, t_p], outputs=list(m.root.outputs), name=f"{name}_add")
    return True


def _conv() -> Op:
    return Op("Conv", AnyValue("x"), Param("w"), Opt(Param("b")), bind="conv")


def _bn(x) -> Op:
    return Op("BatchNormalization", x, Param("gamma"), Param("beta"), Param("mean"), Param("var"),
              bind="bn")


RULES = [
    Rule("conv_bn", _bn(_conv()), _fold_conv_bn),
    Rule("conv_mul", Op("Mul", _conv(), Param("a")), _fold_conv_mul),
    Rule("conv_add", Op("Add", _conv(), Param("c")), _fold_conv_add),
    Rule("bn_scale_shift", _bn(AnyValue("x")), _bn_to_scale_shift),
]


def fold_batch_norm(graph: Graph, ctx=None) -> Graph:
    return apply_rules(graph, RULES)
