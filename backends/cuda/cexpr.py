"""Loop IR expressions -> CUDA C expression text (also valid C++ for the cuda-emu build).

Printing is precedence-aware (no redundant parentheses) and deterministic. Semantics follow the
loop IR: min(a, b) = (b < a ? b : a) and max(a, b) = (a < b ? b : a) so that a NaN in the first
operand propagates (hence not fminf/fmaxf, which drop NaNs); floordiv / mod are Python's (floor)
unless both operands are provably non-negative, where C's truncating ``/`` and ``%`` agree.
Helpers that a module uses are collected in ``helpers`` and emitted once by the module renderer.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import CompileError
from cnncc.ir.dtypes import DType
from cnncc.ir.loop import (And, Bin, Call, Cast, Cmp, Const, Expr, LanePermute, Load, Not, Or,
                          Select, Var)
from cnncc.ir.loop_walk import fold_int, permute_scalar_form

C_TYPES = {
    DType.float32: "float", DType.float64: "double", DType.int8: "signed char",
    DType.int16: "short", DType.int32: "int", DType.int64: "long long",
    DType.uint8: "unsigned char", DType.uint16: "unsigned short", DType.uint32: "unsigned int",
    DType.uint64: "unsigned long long", DType.bool: "bool", DType.float16: "__half",
}

_SUFFIX = {DType.float32: "f32", DType.float64: "f64", DType.int8: "i8", DType.int16: "i16",
           DType.int32: "i32", DType.int64: "i64", DType.uint8: "u8", DType.uint16: "u16",
           DType.uint32: "u32", DType.uint64: "u64", DType.bool: "bool", DType.float16: "f16"}

# C operator precedence (higher binds tighter); left-associative binary operators.
_PREC = {"?:": 2, "||": 3, "&&": 4, "==": 8, "!=": 8, "<": 9, "<=": 9, ">": 9, ">=": 9,
         "+": 11, "-": 11, "*": 12, "/": 12, "%": 12, "unary": 14, "primary": 16}
_BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "/", "mod": "%"}
_CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}

_MATH_F32 = {"exp": "expf", "log": "logf", "sqrt": "sqrtf", "tanh": "tanhf", "erf": "erff",
             "abs": "fabsf", "floor": "floorf", "ceil": "ceilf", "round": "rintf",
             "sin": "sinf", "cos": "cosf"}
_MATH_F64 = {"exp": "exp", "log": "log", "sqrt": "sqrt", "tanh": "tanh", "erf": "erf",
             "abs": "fabs", "floor": "floor", "ceil": "ceil", "round": "rint",
             "sin": "sin", "cos": "cos"}
# The rest of the C math library, same names on the device (f suffix for float).
for _fn in ("expm1", "log1p", "erfc", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "pow",
            "fmod"):
    _MATH_F32[_fn], _MATH_F64[_fn] = f"{_fn}f", _fn

_INT_MIN_I32, _INT_MAX_I32 = -(2 ** 31), 2 ** 31 - 1
# __dp4a (the loop IR's dot4_i8i8) exists from compute capability 6.1 on.
DP4A_MIN_SM = 61


def c_type(dtype: DType) -> str:
    """The C type spelling of a loop IR element type (float16: cuda_fp16.h's __half)."""
    if dtype not in C_TYPES:
        raise CompileError(f"cuda backend: element type {dtype.value} is not supported")
    return C_TYPES[dtype]


def helper_text(name: str) -> str:
    """Source of the device helper function ``name`` (one of the names put in ``helpers``)."""
    kind, suffix = name[len("cnncc_"):].rsplit("_", 1)
    dtype = next(d for d, s in _SUFFIX.items() if s == suffix)
    t = C_TYPES[dtype]
    head = f"static __device__ __forceinline__ {t} {name}"
    if kind == "min":
        body = ["return b < a ? b : a;"]
    elif kind == "max":
        body = ["return a < b ? b : a;"]
    elif kind == "floordiv":
        body = [f"{t} q = a / b;", "return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;"]
    elif kind == "mod":
        body = [f"{t} r = a % b;", "return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;"]
    elif kind == "fmod":
        # Integer fmod = C %, made total as in the loop IR (x % 0 = 0) and without the
        # INT_MIN % -1 trap of x86 (x % -1 = 0).
        zero = "b == 0" if dtype.value.startswith("u") else "b == 0 || b == -1"
        body = [f"return ({zero}) ? 0 : a % b;"]
    elif kind == "sigmoid":
        one, exp = ("1.0f", "expf") if dtype is DType.float32 else ("1.0", "exp")
        return "\n".join([f"{head}({t} x) {{", f"  return {one} / ({one} + {exp}(-x));", "}"])
    else:
        raise ValueError(name)
    return "\n".join([f"{head}({t} a, {t} b) {{"] + [f"  {x}" for x in body] + ["}"])


def float_literal(value: float, dtype: DType) -> str:
    """Shortest text that parses back to exactly ``value`` in ``dtype`` (f32 gets an f suffix)."""
    if np.isnan(value):
        return "NAN" if dtype is DType.float32 else "(double)NAN"
    if np.isinf(value):
        inf = "INFINITY" if dtype is DType.float32 else "(double)INFINITY"
        return inf if value > 0 else f"-{inf}"
    if dtype is DType.float32:
        text = np.format_float_scientific(np.float32(value), unique=True, trim="0")
        plain = np.format_float_positional(np.float32(value), unique=True, trim="0")
    else:
        text = np.format_float_scientific(np.float64(value), unique=True, trim="0")
        plain = np.format_float_positional(np.float64(value), unique=True, trim="0")
    mant, exp = text.split("e")
    text = f"{mant}e{int(exp)}"
    if len(plain) <= len(text) + 2:
        text = plain
    if "e" not in text and "." not in text:
        text += ".0"
    if text.endswith("."):
        text += "0"
    return text + ("f" if dtype is DType.float32 else "")


class ExprRenderer:
    """Renders expressions of one kernel.

    ``names`` maps loop IR variable names to C identifiers; ``access(buf, indices)`` gives the
    rendered element access (the statement renderer linearizes and knows which buffers are
    shared, per-thread or private); ``ranges`` maps variable names to inclusive integer (lo, hi)
    bounds where known (used to prove floordiv/mod operands non-negative); ``narrow`` renders
    int64 scalars as ``int`` (see fits_int32).
    """

    def __init__(self, kname: str, names: dict[str, str], access, ranges: dict, helpers: set,
                 narrow: bool = False):
        self.kname = kname
        self.narrow = narrow
        self.names = names
        self.access = access
        self.ranges = ranges
        self.helpers = helpers
        self.scope: set[str] = set()     # variables bound where the renderer currently is

    def ctype(self, dtype: DType) -> str:
        """C type of scalar values of ``dtype`` (int64 is ``int`` in a 32-bit-index kernel)."""
        return "int" if self.narrow and dtype is DType.int64 else c_type(dtype)

    def suffix(self, dtype: DType) -> str:
        return "i32" if self.narrow and dtype is DType.int64 else _SUFFIX[dtype]

    def error(self, msg: str) -> CompileError:
        return CompileError(f"cuda backend, kernel {self.kname}: {msg}")

    def __call__(self, e: Expr) -> str:
        return self.render(e)[0]

    def render(self, e: Expr) -> tuple[str, int]:
        """(text, precedence of the text's outermost operator)."""
        if isinstance(e, Var):
            if e.name not in self.scope:
                raise self.error(f"variable '{e.name}' is used outside the loop or let that "
                                 f"binds it")
            return self.names[e.name], _PREC["primary"]
        if isinstance(e, Const):
            return self._const(e)
        if isinstance(e, Bin):
            return self._bin(e)
        if isinstance(e, Cmp):
            return self._infix(_CMP[e.op], e.a, e.b)
        if isinstance(e, And):
            return self._infix("&&", e.a, e.b)
        if isinstance(e, Or):
            return self._infix("||", e.a, e.b)
        if isinstance(e, Not):
            return "!" + self._wrap(e.a, _PREC["unary"]), _PREC["unary"]
        if isinstance(e, Select):
            p = _PREC["?:"]
            c = self._wrap(e.cond, p + 1)
            return f"{c} ? {self._wrap(e.a, p + 1)} : {self._wrap(e.b, p)}", p
        if isinstance(e, Cast):
            if e.dtype == e.a.dtype:
                return self.render(e.a)
            if DType.float16 in (e.dtype, e.a.dtype):
                return self._half_cast(e), _PREC["primary"]
            return f"({self.ctype(e.dtype)}){self._wrap(e.a, _PREC['unary'])}", _PREC["unary"]
        if isinstance(e, Call):
            return self._call(e), _PREC["primary"]
        if isinstance(e, Load):
            return self.access(e.buf, e.indices), _PREC["primary"]
        if isinstance(e, LanePermute):      # a thread is one lane
            return self.render(permute_scalar_form(e))
        raise self.error(f"unknown expression {type(e).__name__}")

    def _half_cast(self, e: Cast) -> str:
        """Casts to and from float16 through the cuda_fp16.h conversions (rounded once: a
        double goes to half directly, an integer through float, which holds every integer
        that a half can hold)."""
        arg = self(e.a)
        if e.dtype is DType.float16:
            if e.a.dtype is DType.float64:
                return f"__double2half({arg})"
            if e.a.dtype is DType.float32:
                return f"__float2half_rn({arg})"
            return f"__float2half_rn((float)({arg}))"
        wide = f"__half2float({arg})"
        return wide if e.dtype is DType.float32 else f"({self.ctype(e.dtype)}){wide}"

    def _wrap(self, e: Expr, need: int) -> str:
        text, prec = self.render(e)
        return text if prec >= need else f"({text})"

    def _infix(self, op: str, a: Expr, b: Expr) -> tuple[str, int]:
        p = _PREC[op]
        # An && operand of || is parenthesized although C does not need it: compilers warn
        # (-Wparentheses), and warnings are errors in the builds.
        left = _PREC["&&"] + 1 if op == "||" else p
        if p in (_PREC["=="], _PREC["<"]):   # a comparison of comparisons: also parenthesized
            left = _PREC["<"] + 1
        return f"{self._wrap(a, left)} {op} {self._wrap(b, max(left, p + 1))}", p

    def _const(self, e: Const) -> tuple[str, int]:
        c_type(e.dtype)
        if e.dtype is DType.float16:
            value = float(np.float16(e.value))
            return f"__float2half_rn({float_literal(value, DType.float32)})", _PREC["primary"]
        if e.dtype.is_float:
            text = float_literal(e.value, e.dtype)
        elif e.dtype is DType.bool:
            return ("true" if e.value else "false"), _PREC["primary"]
        else:
            v = int(e.value)
            text = str(v)
            if e.dtype is DType.uint64:
                text += "ull"
            elif e.dtype is DType.uint32:
                text += "u"
            elif not _INT_MIN_I32 <= v <= _INT_MAX_I32:
                text += "ll"
            if e.dtype in (DType.int8, DType.int16, DType.uint8, DType.uint16):
                return f"({C_TYPES[e.dtype]}){text}", _PREC["unary"]
        neg = text.startswith("-")
        return text, _PREC["unary"] if neg else _PREC["primary"]

    def _bin(self, e: Bin) -> tuple[str, int]:
        if e.op in ("min", "max"):
            name = f"cnncc_{e.op}_{self.suffix(e.a.dtype)}"
            self.helpers.add(name)
            return f"{name}({self(e.a)}, {self(e.b)})", _PREC["primary"]
        if e.op in ("floordiv", "mod"):
            if e.dtype.is_float:
                raise self.error(f"{e.op} on {e.dtype.value} is not supported "
                                   f"(integer operation)")
            signed = e.dtype in (DType.int8, DType.int16, DType.int32, DType.int64)
            if signed and not (self._nonneg(e.a) and self._positive(e.b)):
                name = f"cnncc_{e.op}_{self.suffix(e.dtype)}"
                self.helpers.add(name)
                return f"{name}({self(e.a)}, {self(e.b)})", _PREC["primary"]
        if isinstance(e.a, Const) and isinstance(e.b, Const) and e.dtype.is_int:
            # Two literals: fold (C would compute them in int, not in the loop IR type).
            v = fold_int(e.op, int(e.a.value), int(e.b.value))
            info = np.iinfo(e.dtype.np)
            if v is not None and info.min <= v <= info.max:
                return self._const(Const(v, e.dtype))
            a = f"({self.ctype(e.dtype)}){self._wrap(e.a, _PREC['unary'])}"
            op = _BIN[e.op]
            return f"{a} {op} {self._wrap(e.b, _PREC[op] + 1)}", _PREC[op]
        op = _BIN[e.op]
        if e.op in ("add", "mul") and not e.dtype.is_float and isinstance(e.b, Bin) and \
                e.b.op == e.op:
            # Integer + and * are associative: a + (b + c) prints as a + b + c.
            p = _PREC[op]
            return f"{self._wrap(e.a, p)} {op} {self._wrap(e.b, p)}", p
        return self._infix(op, e.a, e.b)

    def _call(self, e: Call) -> str:
        if e.fn == "dot4_i8i8":
            # The loop IR's (acc, a, b); DP4A_MIN_SM (cuda_emu.h: the same, exactly).
            acc, a, b = (self(x) for x in e.args)
            return f"__dp4a({a}, {b}, {acc})"
        args = ", ".join(self(a) for a in e.args)
        if e.fn == "sigmoid" and e.dtype.is_float:
            name = f"cnncc_sigmoid_{_SUFFIX[e.dtype]}"
            self.helpers.add(name)
            return f"{name}({args})"
        if e.dtype is DType.float32:
            return f"{_MATH_F32[e.fn]}({args})"
        if e.dtype is DType.float64:
            return f"{_MATH_F64[e.fn]}({args})"
        if e.fn == "fmod" and e.dtype.is_int and e.dtype in _SUFFIX:
            name = f"cnncc_fmod_{_SUFFIX[e.dtype]}"
            self.helpers.add(name)
            return f"{name}({args})"
        if e.fn == "abs" and e.dtype in (DType.int32, DType.int64):
            return f"{'llabs' if self.ctype(e.dtype) == 'long long' else 'abs'}({args})"
        raise self.error(f"math function {e.fn} on {e.dtype.value} is not "
                           f"supported")

    # ---- sign proofs (interval arithmetic over known variable ranges) -------------------------
    def _nonneg(self, e: Expr) -> bool:
        r = self.interval(e)
        return r is not None and r[0] >= 0

    def _positive(self, e: Expr) -> bool:
        r = self.interval(e)
        return r is not None and r[0] > 0

    def interval(self, e: Expr) -> tuple[int, int] | None:
        return interval(e, self.ranges)


def interval(e: Expr, ranges: dict) -> tuple[int, int] | None:
    """Inclusive integer bounds of ``e`` given variable ranges (name -> (lo, hi)), or None."""
    if isinstance(e, Const) and e.dtype.is_int:
        return int(e.value), int(e.value)
    if isinstance(e, Var):
        return ranges.get(e.name)
    if isinstance(e, Cast) and e.dtype.is_int and e.a.dtype.is_int:
        return interval(e.a, ranges)
    if not isinstance(e, Bin) or not e.dtype.is_int:
        return None
    a, b = interval(e.a, ranges), interval(e.b, ranges)
    if a is None or b is None:
        return None
    if e.op == "add":
        return a[0] + b[0], a[1] + b[1]
    if e.op == "sub":
        return a[0] - b[1], a[1] - b[0]
    if e.op == "mul":
        prods = [x * y for x in a for y in b]
        return min(prods), max(prods)
    if e.op == "min":
        return min(a[0], b[0]), min(a[1], b[1])
    if e.op == "max":
        return max(a[0], b[0]), max(a[1], b[1])
    if e.op in ("div", "floordiv") and a[0] >= 0 and b[0] > 0:
        return a[0] // b[1], a[1] // b[0]
    if e.op == "mod" and a[0] >= 0 and b[0] > 0:
        return 0, min(a[1], b[1] - 1)
    return None


def fits_int32(kernel) -> bool:
    """Whether every int64 value in ``kernel`` provably lies in int32 range (and every buffer has
    fewer than 2**31 elements): then index arithmetic is rendered in 32-bit ``int``, which GPUs
    do in half the registers and instructions. Loads of int64 data, casts from floats and
    non-constant loop bounds have unknown ranges and keep the kernel 64-bit."""
    from cnncc.ir.loop_walk import const_value, stmt_exprs, walk_exprs, walk_stmts
    from cnncc.ir.loop import Allocate, For, Let
    lim = (-(2 ** 31), 2 ** 31 - 1)
    if any(b.size >= 2 ** 31 for b in kernel.params):
        return False
    ranges: dict = {}

    def note(name: str, r) -> bool:
        if r is None or r[0] < lim[0] or r[1] > lim[1]:
            return False
        old = ranges.get(name)
        ranges[name] = r if old is None else (min(old[0], r[0]), max(old[1], r[1]))
        return True

    for s in walk_stmts(kernel.body):
        if isinstance(s, Allocate) and s.buf.size >= 2 ** 31:
            return False
        if isinstance(s, For) and s.var.dtype is DType.int64:
            start, n = const_value(s.start), const_value(s.extent)
            if start is None or n is None or not note(s.var.name, (start, start + n - 1)):
                return False
        if isinstance(s, Let) and s.var.dtype is DType.int64 and \
                not note(s.var.name, interval(s.value, ranges)):
            return False
    for _, e in stmt_exprs(kernel.body):
        for sub in walk_exprs(e):
            if sub.dtype is DType.int64:
                r = interval(sub, ranges)
                if r is None or r[0] < lim[0] or r[1] > lim[1]:
                    return False
    return True
