"""Unary elementwise ops: activations (Relu, Sigmoid, HardSwish, Gelu, ...) and math functions.

Every op here maps each element independently, so the output type is the input type (except the
predicates IsNaN/IsInf, which give bool). Float references compute in float64 and cast back: the
oracle should be more accurate than the kernels it checks.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.loop import Call, Select
from cnncc.ir.types import TensorType
from . import activation_exprs as E
from .activation_exprs import UNARY_LOWERING, Lowering
from .registry import Attr, OpContext, OpDef, register

FLOAT = "float"
NUMERIC = "numeric"      # float or integer
SIGNED = "signed"        # float or signed integer
BOOL = "bool"

_SQRT_PI = math.sqrt(math.pi)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorized error function in float64, accurate to a few ulp (numpy has no erf).

    |x| < 3: the series erf(x) = 2/sqrt(pi) exp(-x^2) sum_n (2x^2)^n x / (2n+1)!!, whose terms are
    all positive (no cancellation). |x| >= 3: the continued fraction of erfc, evaluated backwards.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    ax = np.abs(x)
    small = ax < 3.0
    xs = x[small]
    x2 = xs * xs
    term = xs.copy()
    total = xs.copy()
    for n in range(1, 64):
        term = term * (2.0 * x2 / (2 * n + 1))
        total += term
    out[small] = 2.0 / _SQRT_PI * np.exp(-x2) * total
    big = ~small
    xb = ax[big]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        t = xb.copy()
        for k in range(80, 0, -1):
            t = xb + (k / 2.0) / t
        erfc = np.exp(-xb * xb) / _SQRT_PI / t
    out[big] = np.copysign(1.0 - erfc, x[big])
    return out


def erfc(x: np.ndarray) -> np.ndarray:
    """1 - erf(x) in float64 without cancellation for large x (the continued fraction of erf)."""
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    out = 1.0 - erf(x)
    big = ax >= 3.0
    xb = ax[big]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        t = xb.copy()
        for k in range(80, 0, -1):
            t = xb + (k / 2.0) / t
        tail = np.exp(-xb * xb) / _SQRT_PI / t
    out[big] = np.where(x[big] > 0, tail, 2.0 - tail)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))                    # no overflow, no cancellation in either tail
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":      # 0.5 (1 + tanh(u)) = sigmoid(2 u)
        return x * _sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))
    return 0.5 * x * erfc(-x / math.sqrt(2.0))


def _check_kind(ctx: OpContext, t: TensorType, kind: str, what: str = "input") -> None:
    d = t.dtype
    ok = {FLOAT: d.is_float, NUMERIC: d.is_float or d.is_int,
          SIGNED: d.is_float or (d.is_int and d.np.kind == "i"), BOOL: d is DType.bool}[kind]
    ctx.check(ok, f"{what} element type {d} not supported (needs {kind})")


def _unary(name: str, fn: Callable, kind: str = FLOAT, attrs: dict | None = None,
           out_dtype: DType | None = None, doc: str = "", expr: Callable | None = None,
           fusable: bool = False, finite: bool = False, flops: int = 1) -> None:
    """Register a one-input elementwise op; ``fn(ctx, x)`` computes on float64 (or native ints).
    ``expr(x, attrs)`` (its loop IR, for the compiled targets), ``fusable``, ``finite`` and
    ``flops``: activation_exprs.Lowering."""
    if expr is not None:
        UNARY_LOWERING[name] = Lowering(expr, flops, fusable, finite)

    def infer(ctx: OpContext) -> list[TensorType]:
        t = ctx.type(0)
        _check_kind(ctx, t, kind)
        return [TensorType(out_dtype or t.dtype, t.shape)]

    def reference(ctx: OpContext, x: np.ndarray) -> np.ndarray:
        dt = (out_dtype or DType.from_numpy(x.dtype)).np
        xc = x.astype(np.float64) if x.dtype.kind == "f" else x
        with np.errstate(all="ignore"):
            return np.asarray(fn(ctx, xc)).astype(dt)

    register(OpDef(name, infer=infer, reference=reference, attrs=attrs or {}, doc=doc))


# ---- activations ---------------------------------------------------------------------------------
# Adding one: its reference (float64), attributes and Lowering here, plus its tests (README,
# "Contributing"): the DSL, lowering, epilogue fusion, layout pass and FLOP counts read this.
_unary("Relu", lambda c, x: np.maximum(x, 0).astype(x.dtype), SIGNED,
       expr=lambda x, a: x.max(E.c(0.0, x)), fusable=True, finite=True)
_unary("LeakyRelu", lambda c, x: np.where(x < 0, c["alpha"] * x, x), FLOAT,
       {"alpha": Attr("float", 0.01)},
       expr=lambda x, a: Select(x < 0.0, x * a["alpha"], x), fusable=True, finite=True)
_unary("Sigmoid", lambda c, x: _sigmoid(x), expr=lambda x, a: E.f("sigmoid", x), fusable=True,
       finite=True)
_unary("HardSigmoid", lambda c, x: np.clip(c["alpha"] * x + c["beta"], 0.0, 1.0), FLOAT,
       {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)},
       expr=lambda x, a: (x * a["alpha"] + a["beta"]).max(E.c(0.0, x)).min(E.c(1.0, x)),
       fusable=True, finite=True)
_unary("HardSwish", lambda c, x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
       expr=lambda x, a: E.hard_swish(x), fusable=True, finite=True)
_unary("Tanh", lambda c, x: np.tanh(x), expr=lambda x, a: E.f("tanh", x), fusable=True,
       finite=True)
_unary("Elu", lambda c, x: np.where(x < 0, c["alpha"] * np.expm1(np.minimum(x, 0)), x), FLOAT,
       {"alpha": Attr("float", 1.0)},
       expr=lambda x, a: Select(x < 0.0, E.expm1_neg(x) * a["alpha"], x), fusable=True,
       finite=True)
_unary("Selu", lambda c, x: c["gamma"] * np.where(
    x <= 0, c["alpha"] * np.expm1(np.minimum(x, 0)), x), FLOAT,
    {"alpha": Attr("float", 1.67326319217681884765625),
     "gamma": Attr("float", 1.05070102214813232421875)},
    expr=lambda x, a: Select(x <= 0.0, E.expm1_neg(x) * a["alpha"], x) * a["gamma"],
    finite=True)
_unary("Celu", lambda c, x: np.maximum(x, 0) + np.minimum(
    0, c["alpha"] * np.expm1(np.minimum(x, 0) / c["alpha"])), FLOAT, {"alpha": Attr("float", 1.0)},
    expr=lambda x, a: x.max(E.c(0.0, x)) + (E.expm1_neg(x * (1 / a["alpha"])) * a["alpha"]).min(
        E.c(0.0, x)))
_unary("Gelu", lambda c, x: _gelu(x, c["approximate"]), FLOAT,
       {"approximate": Attr("str", "none")}, expr=lambda x, a: E.gelu(x, a["approximate"]),
       fusable=True, finite=True)
_unary("Softplus", lambda c, x: _softplus(x), expr=lambda x, a: E.softplus(x), fusable=True,
       finite=True)
_unary("Softsign", lambda c, x: x / (1.0 + np.abs(x)),
       expr=lambda x, a: x / (Call("abs", (x,), x.dtype) + 1.0))
_unary("ThresholdedRelu", lambda c, x: np.where(x > c["alpha"], x, 0.0), FLOAT,
       {"alpha": Attr("float", 1.0)},
       expr=lambda x, a: Select(x > a["alpha"], x, E.c(0.0, x)))
_unary("Mish", lambda c, x: x * np.tanh(_softplus(x)), expr=lambda x, a: E.mish(x), fusable=True,
       finite=True)
_unary("Swish", lambda c, x: x * _sigmoid(c["alpha"] * x), FLOAT, {"alpha": Attr("float", 1.0)},
       expr=lambda x, a: x * E.f("sigmoid", x * a["alpha"]), fusable=True, finite=True)
_unary("Shrink", lambda c, x: np.where(x < -c["lambd"], x + c["bias"], np.where(
    x > c["lambd"], x - c["bias"], 0)), NUMERIC,
    {"bias": Attr("float", 0.0), "lambd": Attr("float", 0.5)},
    expr=lambda x, a: Select(x < -a["lambd"], x + a["bias"], Select(
        x > a["lambd"], x - a["bias"], E.c(0.0, x))))

# ---- math functions ------------------------------------------------------------------------------
_unary("Erf", lambda c, x: erf(x), expr=lambda x, a: E.f("erf", x))
_unary("Neg", lambda c, x: np.negative(x), SIGNED, expr=lambda x, a: -x, finite=True)
_unary("Abs", lambda c, x: np.abs(x), NUMERIC, expr=lambda x, a: E.f("abs", x), finite=True)
_unary("Sign", lambda c, x: np.sign(x), NUMERIC)
_unary("Reciprocal", lambda c, x: 1.0 / x, expr=lambda x, a: E.c(1.0, x) / x)
for _name, _fn in {"Floor": np.floor, "Ceil": np.ceil, "Round": np.round}.items():
    # Round: halves to even, as ONNX specifies
    _unary(_name, lambda c, x, fn=_fn: fn(x), expr=lambda x, a, n=_name.lower(): E.f(n, x))
for _name, _fn in {"Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt, "Sin": np.sin, "Cos": np.cos,
                   "Tan": np.tan, "Asin": np.arcsin, "Acos": np.arccos, "Atan": np.arctan,
                   "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh, "Acosh": np.arccosh,
                   "Atanh": np.arctanh}.items():
    _lower = _name.lower()
    _unary(_name, lambda c, x, fn=_fn: fn(x),
           expr=(lambda x, a, n=_lower: E.f(n, x)) if _name in ("Exp", "Log", "Sqrt", "Sin", "Cos")
           else None)

# ---- predicates and logic ------------------------------------------------------------------------
_unary("IsNaN", lambda c, x: np.isnan(x), FLOAT, out_dtype=DType.bool)
_unary("IsInf", lambda c, x: (np.isposinf(x) & bool(c["detect_positive"]))
       | (np.isneginf(x) & bool(c["detect_negative"])), FLOAT,
       {"detect_negative": Attr("int", 1), "detect_positive": Attr("int", 1)}, DType.bool)
_unary("Not", lambda c, x: np.logical_not(x), BOOL)


# ---- ops with a second operand -------------------------------------------------------------------

def _infer_prelu(ctx: OpContext) -> list[TensorType]:
    x, slope = ctx.type(0), ctx.type(1)
    _check_kind(ctx, x, SIGNED)
    ctx.check(slope.dtype == x.dtype, f"slope type {slope.dtype} differs from input {x.dtype}")
    # The slope broadcasts to X (unidirectionally): the output keeps X's shape.
    ok = slope.rank <= x.rank and all(
        s in (1, d) for s, d in zip(reversed(slope.shape), reversed(x.shape)))
    ctx.check(ok, f"slope shape {list(slope.shape)} does not broadcast to input "
                  f"{list(x.shape)}")
    return [x]


def _prelu(ctx: OpContext, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    return np.where(x < 0, x * slope, x).astype(x.dtype)


register(OpDef("PRelu", infer=_infer_prelu, reference=_prelu, inputs=(2, 2)))


def _infer_clip(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    _check_kind(ctx, x, NUMERIC)
    for i, what in ((1, "min"), (2, "max")):
        if ctx.has(i):
            t = ctx.type(i)
            ctx.check(t.dtype == x.dtype, f"{what} type {t.dtype} differs from input {x.dtype}")
            ctx.check(t.size == 1 and t.rank <= 1,
                      f"{what} must be a scalar, got shape {list(t.shape)}")
    return [x]


def _clip(ctx: OpContext, x: np.ndarray, lo: np.ndarray | None = None,
          hi: np.ndarray | None = None) -> np.ndarray:
    out = x
    if lo is not None:
        out = np.maximum(out, lo.reshape(()))
    if hi is not None:       # applied last: min > max clips everything to max, as ONNX says
        out = np.minimum(out, hi.reshape(()))
    return np.asarray(out).astype(x.dtype)


register(OpDef("Clip", infer=_infer_clip, reference=_clip, inputs=(1, 3),
               doc="min/max are optional scalar inputs, constant or computed at run time"))
