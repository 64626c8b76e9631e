"""A direct interpreter for loop IR kernels: the semantics of the loop IR, used by tests to check
schedules and lowering on small shapes (scalar Python; every loop kind runs serially).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import CompileError
from .loop import (BYTE_DOT_FNS, DOT2_FNS, PAIR_DOT, Allocate, And, Bin, Call, Cast, Cmp, Const,
                   Expr, For, If, Kernel, LanePermute, Let, Load, Not, Or, Prefetch, Select, Seq,
                   Stmt, Store, Var)
from .loop_walk import INT_DIVISIONS, fold_int


def _wrap_int32(total: int) -> np.int32:
    """``total`` modulo 2^32 as an int32 (the byte dots' sums wrap as the instructions do)."""
    total &= 0xFFFFFFFF
    return np.int32(total - (1 << 32) if total >= 1 << 31 else total)


def _erf(x: float) -> float:
    return math.erf(x)


_MATH = {
    "exp": lambda x: math.exp(x) if x < 709 else math.inf,
    "log": lambda x: math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan),
    "sqrt": lambda x: math.sqrt(x) if x >= 0 else math.nan,
    "tanh": math.tanh, "erf": _erf, "abs": abs, "floor": math.floor, "ceil": math.ceil,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0,
    "expm1": lambda x: math.expm1(x) if x < 709 else math.inf,
    "log1p": lambda x: math.log1p(x) if x > -1 else (-math.inf if x == -1 else math.nan),
    "erfc": math.erfc,
    "round": lambda x: float(np.round(x)), "sin": math.sin, "cos": math.cos,
}
for _n in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh"):
    _MATH[_n] = getattr(np, {"asin": "arcsin", "acos": "arccos", "atan": "arctan",
                            "asinh": "arcsinh", "acosh": "arccosh", "atanh": "arctanh"}.get(_n, _n))
_MATH["pow"] = lambda x, y: float(np.power(np.float64(x), np.float64(y)))
_MATH["fmod"] = lambda x, y: math.fmod(x, y) if y != 0 else (math.nan if isinstance(x, float)
                                                                else 0)


def run_kernel(kernel: Kernel, arrays: dict[str, np.ndarray]) -> None:
    """Execute ``kernel`` in place on ``arrays`` (one contiguous array per param, by name)."""
    mem = {}
    for b in kernel.params:
        a = arrays[b.name]
        if a.shape != b.shape or a.dtype != b.dtype.np:
            raise CompileError(f"run_kernel: {b.name} is {a.dtype}{list(a.shape)}, kernel expects "
                               f"{b.dtype}{list(b.shape)}")
        mem[b.name] = a
    _Interp(mem).stmt(kernel.body, {})


class _Interp:
    def __init__(self, mem: dict[str, np.ndarray]):
        self.mem = mem

    def stmt(self, s: Stmt, env: dict) -> None:
        if isinstance(s, For):
            start, ext = int(self.expr(s.start, env)), int(self.expr(s.extent, env))
            for i in range(start, start + ext):
                env[s.var.name] = i
                self.stmt(s.body, env)
            env.pop(s.var.name, None)
        elif isinstance(s, Store):
            idx = self._index(s.buf, s.indices, env)
            self.mem[s.buf.name][idx] = self.expr(s.value, env)
        elif isinstance(s, Seq):
            for x in s.stmts:
                self.stmt(x, env)
        elif isinstance(s, If):
            if self.expr(s.cond, env):
                self.stmt(s.then, env)
            elif s.else_ is not None:
                self.stmt(s.else_, env)
        elif isinstance(s, Let):
            env[s.var.name] = self.expr(s.value, env)
            self.stmt(s.body, env)
            env.pop(s.var.name, None)
        elif isinstance(s, Allocate):
            # Fresh garbage-free scratch; NaN for floats so that reads before writes show up.
            fill = np.nan if s.buf.dtype.is_float else 0
            self.mem[s.buf.name] = np.full(s.buf.shape, fill, s.buf.dtype.np)
            self.stmt(s.body, env)
            del self.mem[s.buf.name]
        elif isinstance(s, Prefetch):
            pass                    # a cache hint: no effect on results
        else:
            raise TypeError(f"unknown statement {type(s).__name__}")

    def _index(self, buf, indices, env) -> tuple:
        idx = tuple(int(self.expr(i, env)) for i in indices)
        for i, d in zip(idx, buf.shape):
            if not 0 <= i < d:
                raise IndexError(f"{buf.name}{list(idx)} out of bounds {list(buf.shape)}")
        return idx

    def expr(self, e: Expr, env: dict):
        if isinstance(e, Var):
            return env[e.name]
        if isinstance(e, Const):
            return e.dtype.np.type(e.value)
        if isinstance(e, Bin):
            a, b = self.expr(e.a, env), self.expr(e.b, env)
            return _bin(e.op, a, b, e.dtype)
        if isinstance(e, Cmp):
            a, b = self.expr(e.a, env), self.expr(e.b, env)
            return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b, "eq": a == b,
                    "ne": a != b}[e.op]
        if isinstance(e, And):
            return bool(self.expr(e.a, env)) and bool(self.expr(e.b, env))
        if isinstance(e, Or):
            return bool(self.expr(e.a, env)) or bool(self.expr(e.b, env))
        if isinstance(e, Not):
            return not self.expr(e.a, env)
        if isinstance(e, Select):
            # Both sides evaluated, as in generated code (a select is not a branch).
            a, b = self.expr(e.a, env), self.expr(e.b, env)
            return a if self.expr(e.cond, env) else b
        if isinstance(e, Cast):
            return e.dtype.np.type(self.expr(e.a, env))
        if isinstance(e, Call) and e.fn in BYTE_DOT_FNS:
            acc, a, b = (int(self.expr(x, env)) for x in e.args)
            if e.fn.startswith("dot4_s8"):
                a ^= 0x80808080
            ua = np.array([a & 0xFFFFFFFF], np.uint32).view(
                np.int8 if e.fn == "dot4_i8i8" else np.int16 if e.fn == "dot2_i16i16"
                else np.uint8).astype(np.int64)
            sb = np.array([b & 0xFFFFFFFF], np.uint32).view(
                np.int16 if e.fn in DOT2_FNS else np.int8).astype(np.int64)
            if e.fn in DOT2_FNS and e.fn != "dot2_i16i16":      # bytes 0, 2 or 1, 3 of a
                ua = ua[int(e.fn.endswith("odd"))::2]
            return _wrap_int32(acc + int((ua * sb).sum()))
        if isinstance(e, Call) and e.fn == PAIR_DOT:
            acc, a0, a1, w = (int(self.expr(x, env)) for x in e.args)
            lo, hi = np.array([w & 0xFFFFFFFF], np.uint32).view(np.int16).astype(np.int64)
            return _wrap_int32(acc + a0 * int(lo) + a1 * int(hi))
        if isinstance(e, Call):
            args = [float(self.expr(a, env)) for a in e.args]
            if e.fn == "fmod" and not e.dtype.is_float:
                a, b = (int(self.expr(x, env)) for x in e.args)
                return e.dtype.np.type(int(math.fmod(a, b)) if b else 0)
            with np.errstate(all="ignore"):
                return e.dtype.np.type(_MATH[e.fn](*args))
        if isinstance(e, Load):
            return self.mem[e.buf.name][self._index(e.buf, e.indices, env)]
        if isinstance(e, LanePermute):
            lane = int(env[e.lane.name])
            if not 0 <= lane < len(e.perm):
                raise IndexError(f"lane permute over {e.lane.name}: lane {lane} outside "
                                 f"0..{len(e.perm) - 1}")
            return self.expr(e.a, {**env, e.lane.name: e.perm[lane]})
        raise TypeError(f"unknown expression {type(e).__name__}")


def _bin(op: str, a, b, dtype):
    t = dtype.np.type
    with np.errstate(all="ignore"):
        if op == "add":
            return t(a + b)
        if op == "sub":
            return t(a - b)
        if op == "mul":
            return t(a * b)
        if op == "div" and dtype.is_float:
            return t(np.divide(t(a), t(b)))
        if op in INT_DIVISIONS:     # loop_walk.fold_int; division by zero acts as division by one
            return t(fold_int(op, int(a), int(b) or 1))
        # min/max are selects (as generated code does): a NaN in ``a`` propagates.
        if op == "min":
            return t(b if b < a else a)
        if op == "max":
            return t(b if a < b else a)
    raise ValueError(op)
