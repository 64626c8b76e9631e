"""How the compiler computes a unary elementwise op, as data on the op's table entry
(activation.py registers each op with its Lowering next to its reference):

    Lowering(expr, flops=1, fusable=False, finite=False)

``expr(x, a)``: the loop-IR expression of one element (``a``: the node's attributes resolved,
defaults filled). ``flops``: operations per element (cnncc info, the roofline). ``fusable``: a
conv/gemm epilogue may apply it (FusedConv's activation; its float attributes, in schema order,
are the activation_params). ``finite``: finite inputs give finite outputs, so alter_layout_nchwc
keeps it in the blocked layout (padding lanes stay finite).

The helpers here build the expressions that need care in float32 (no overflow, no
cancellation in the tails); the LLVM backend computes exp, expm1, log1p, erfc, sigmoid and tanh
as vector code (backends/llvm/vecmath.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cnncc.ir.node import Node
from cnncc.ir.loop import Call, Const, Expr, Select
from .registry import OP_TABLE, resolve_attrs


@dataclass(frozen=True)
class Lowering:
    expr: Callable[[Expr, dict], Expr]
    flops: int = 1
    fusable: bool = False
    finite: bool = False


# op -> its Lowering; filled by activation.py's registrations.
UNARY_LOWERING: dict[str, Lowering] = {}


def unary_expr(node: Node) -> Callable[[Expr], Expr]:
    """The element function of a unary op node (attributes resolved against its schema)."""
    attrs = resolve_attrs(OP_TABLE[node.op], node)
    expr = UNARY_LOWERING[node.op].expr
    return lambda x: expr(x, attrs)


def fusable_params(op: str) -> tuple[str, ...]:
    """The activation_params of a fusable op: its float attributes in schema order."""
    return tuple(k for k, a in OP_TABLE[op].attrs.items() if a.kind == "float")


def c(v: float, x: Expr) -> Const:
    return Const(float(v), x.dtype)


def f(fn: str, x: Expr) -> Expr:
    return Call(fn, (x,), x.dtype)


def softplus(x: Expr) -> Expr:
    """max(x, 0) + log1p(exp(-|x|)): no overflow, accurate in the tiny negative tail."""
    return x.max(c(0.0, x)) + f("log1p", f("exp", -f("abs", x)))


def mish(x: Expr) -> Expr:
    """x tanh(softplus(x)) = x e (e + 2) / (e (e + 2) + 2), e = exp(x) = h^2, h = exp(x / 2):
    the factor e applied last as h twice keeps results in the denormals to one rounding
    (x > 20: x)."""
    h = f("exp", x.min(c(20.0, x)) * 0.5)
    e = h * h
    r = (e + 2.0) / (e * (e + 2.0) + 2.0)
    return Select(x > 20.0, x, x * r * h * h)


def gelu(x: Expr, approximate: str) -> Expr:
    if approximate == "tanh":
        # 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation in the negative tail.
        k = 2 * math.sqrt(2 / math.pi)
        return x * f("sigmoid", (x + x * x * x * 0.044715) * k)
    if x.dtype.itemsize == 8:           # float64: the C library's erfc, the exact constant
        return x * 0.5 * f("erfc", x * (-1 / math.sqrt(2)))
    # 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(a), a = -x / sqrt 2 rounded; the rounding error
    # d of a (an FMA residual plus the constant's own error) would cost erfc a relative 2 a d
    # in the negative tail (a > 0): corrected there by the factor 1 - 2 a d.
    k32 = np.float32(-1 / math.sqrt(2))
    k_lo = -1 / math.sqrt(2) - float(k32)
    xd = x.max(c(-16.0, x))             # erfc(-16 / sqrt 2) underflows: no inf - inf
    ad = xd * float(k32)
    d = xd * float(k32) + (-ad) + xd * k_lo
    corr = Select(x < 0.0, 1.0 - ad * d * 2.0, c(1.0, x))
    return x * 0.5 * f("erfc", x * float(k32)) * corr


def expm1_neg(x: Expr) -> Expr:
    """exp(min(x, 0)) - 1 (for the x < 0 branch of Elu-like ops), accurate near 0."""
    return f("expm1", x.min(c(0.0, x)))


def hard_swish(x: Expr) -> Expr:
    """x min(max(x + 3, 0), 6) / 6: x + 3 is exact near -3 (no cancellation)."""
    return x * ((x + 3.0).max(c(0.0, x)).min(c(6.0, x)) * (1 / 6))
