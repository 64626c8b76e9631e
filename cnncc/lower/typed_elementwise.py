"""Elementwise ops beyond float32 arithmetic: comparisons and logic (bool results), Where,
Cast, Sign, Pow, IsNaN/IsInf, trigonometric functions, and integer Add/Sub/Mul/Div/Max/Min."""
from __future__ import annotations

from typing import Callable

from cnncc.ir import DType, Node
from cnncc.ir.loop import (And, Call, Cast, Cmp, Const, Expr, Not, Or, Select)

from .context import LowerCtx, op_context, unsupported
from .elementwise import BINARY_OPS, emit_map

_CMP = {"Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt",
        "GreaterOrEqual": "ge"}
_LOGIC = {"And": lambda a, b: And(a, b), "Or": lambda a, b: Or(a, b),
          "Xor": lambda a, b: Cmp("ne", a, b)}
_TRIG = ("Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh")
# Types whose arithmetic the LLVM backend emits (float16 would need promotion rules).
_NUMERIC = (DType.float32, DType.float64, DType.int8, DType.int16, DType.int32, DType.int64,
            DType.uint8, DType.uint16, DType.uint32, DType.uint64)
TYPED_OPS = tuple(_CMP) + tuple(_LOGIC) + _TRIG + ("Not", "Where", "Cast", "CastLike", "Sign",
                                                   "Pow", "IsNaN", "IsInf", "Mod")


def _fn(node: Node, ctx: LowerCtx) -> Callable[..., Expr]:
    g = ctx.graph
    op = node.op
    tin = [g.types[i].dtype for i in node.inputs if i]
    tout = g.types[node.outputs[0]].dtype
    if op in _CMP:
        return lambda a, b: Cmp(_CMP[op], a, b)
    if op in _LOGIC:
        return _LOGIC[op]
    if op == "Not":
        return lambda a: Not(a)
    if op == "Where":
        return lambda c, a, b: Select(c, a, b)
    if op in ("Cast", "CastLike"):
        return lambda a, *_: Cast(tout, a)
    if op in _TRIG:
        if not tin[0].is_float:
            raise unsupported(node, f"element type {tin[0]}")
        return lambda a: Call(op.lower(), (a,), a.dtype)
    if op == "Sign":
        def sign(a: Expr) -> Expr:
            one, zero = Const(1, a.dtype), Const(0, a.dtype)
            rest = a * zero if a.dtype.is_float else zero     # keeps NaN as NaN
            return Select(a > zero, one, Select(a < zero, Const(-1, a.dtype), rest))
        return sign
    if op == "Pow":
        if tin[0].is_float:
            return lambda a, b: Call("pow", (a, b if b.dtype is a.dtype else Cast(a.dtype, b)),
                                     a.dtype)
        # Integer base: computed in float64 (exact for every result an int64 can hold up to
        # 2^53) and truncated toward zero, as the reference's astype does.
        f64 = DType.float64
        return lambda a, b: Cast(a.dtype, Call("pow", (Cast(f64, a), Cast(f64, b)), f64))
    if op == "Mod":
        if op_context(g, node).attrs["fmod"]:
            return lambda a, b: Call("fmod", (a, b), a.dtype)
        if tin[0].is_float:
            return _float_mod
        return lambda a, b: a % b
    if op == "IsNaN":
        return lambda a: Cmp("ne", a, a)
    if op == "IsInf":
        at = op_context(g, node).attrs
        pos, neg = at["detect_positive"], at["detect_negative"]

        def isinf(a: Expr) -> Expr:
            inf = Const(float("inf"), a.dtype)
            p = Cmp("eq", a, inf)
            n = Cmp("eq", a, Const(float("-inf"), a.dtype))
            if pos and neg:
                return Or(p, n)
            return p if pos else n if neg else Cmp("ne", inf, inf)
        return isinf
    if op in BINARY_OPS and op not in ("Mean", "PRelu"):
        f = BINARY_OPS[op]

        def red(*xs: Expr) -> Expr:
            acc = xs[0]
            for x in xs[1:]:
                acc = f(acc, x)
            return acc
        return red
    raise unsupported(node)


def _float_mod(a: Expr, b: Expr) -> Expr:
    """numpy's float remainder: the C remainder moved to the divisor's sign; a zero result
    takes the divisor's sign; x mod 0 is NaN."""
    r = Call("fmod", (a, b), a.dtype)
    zero = Const(0.0, a.dtype)
    fix = And(Cmp("ne", r, zero), Cmp("ne", r < zero, b < zero))
    signed_zero = Select(b < zero, Const(-0.0, a.dtype), zero)
    return Select(fix, r + b, Select(Cmp("eq", r, zero), signed_zero, r))


def lower_typed(ctx: LowerCtx, node: Node) -> None:
    g = ctx.graph
    for v in [i for i in node.inputs if i] + [o for o in node.outputs if o]:
        t = g.types[v].dtype
        if t not in _NUMERIC and t is not DType.bool and not (
                t is DType.float16 and node.op in ("Cast", "CastLike")):
            raise unsupported(node, f"element type {t} is not lowered")
    inputs = [i for i in node.inputs if i]
    if node.op == "CastLike":
        inputs = inputs[:1]
    emit_map(ctx, node.name, node.outputs[0], inputs, _fn(node, ctx))
