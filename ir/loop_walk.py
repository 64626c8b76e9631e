"""Expression utilities for the loop IR: substitution, free variables, linear (affine) forms,
interval bounds and a small simplifier (constant folding, identities, affine normalization).
"""
from __future__ import annotations

from typing import Callable

from .loop import (BOOL, And, Allocate, Bin, Call, Cast, Cmp, Const, Expr, For, If, Kernel,
                   LanePermute, Let, Load, Not, Or, Prefetch, Select, Seq, Stmt, Store, Var)
from .loop_printer import format_kernel


# ---- generic traversal ---------------------------------------------------------------------------

def map_expr(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild ``e`` bottom-up; ``fn`` may return a replacement for a node (or None to keep)."""
    r = fn(e)
    if r is not None:
        return r
    if isinstance(e, (Var, Const)):
        return e
    if isinstance(e, Bin):
        return Bin(e.op, map_expr(e.a, fn), map_expr(e.b, fn))
    if isinstance(e, Cmp):
        return Cmp(e.op, map_expr(e.a, fn), map_expr(e.b, fn))
    if isinstance(e, And):
        return And(map_expr(e.a, fn), map_expr(e.b, fn))
    if isinstance(e, Or):
        return Or(map_expr(e.a, fn), map_expr(e.b, fn))
    if isinstance(e, Not):
        return Not(map_expr(e.a, fn))
    if isinstance(e, Select):
        return Select(map_expr(e.cond, fn), map_expr(e.a, fn), map_expr(e.b, fn))
    if isinstance(e, Cast):
        return Cast(e.dtype, map_expr(e.a, fn))
    if isinstance(e, Call):
        return Call(e.fn, tuple(map_expr(a, fn) for a in e.args), e.dtype)
    if isinstance(e, Load):
        return Load(e.buf, tuple(map_expr(i, fn) for i in e.indices))
    if isinstance(e, LanePermute):
        lane = fn(e.lane)
        if lane is not None and not isinstance(lane, Var):
            raise TypeError(f"lane permute over {e.lane.name}: its lane variable can only be "
                            f"renamed, not replaced by an expression")
        return LanePermute(map_expr(e.a, fn), lane or e.lane, e.perm)
    raise TypeError(f"unknown expression {type(e).__name__}")


def permute_scalar_form(e: LanePermute) -> Expr:
    """``e`` without the permute: its operand with the lane variable replaced by a chain of
    selects giving perm[lane] (for code that evaluates one lane at a time)."""
    lane = e.lane
    idx: Expr = Const(e.perm[-1], lane.dtype)
    for i in range(len(e.perm) - 2, -1, -1):
        idx = Select(Cmp("eq", lane, Const(i, lane.dtype)), Const(e.perm[i], lane.dtype), idx)
    return substitute(e.a, {lane.name: idx})


def map_stmt(s: Stmt, efn: Callable[[Expr], Expr]) -> Stmt:
    """Apply ``efn`` to every expression of a statement tree (structure kept)."""
    if isinstance(s, For):
        return For(s.var, efn(s.extent), map_stmt(s.body, efn), s.kind, efn(s.start))
    if isinstance(s, Store):
        return Store(s.buf, tuple(efn(i) for i in s.indices), efn(s.value))
    if isinstance(s, Seq):
        return Seq([map_stmt(x, efn) for x in s.stmts])
    if isinstance(s, If):
        return If(efn(s.cond), map_stmt(s.then, efn),
                  None if s.else_ is None else map_stmt(s.else_, efn), s.masked)
    if isinstance(s, Let):
        return Let(s.var, efn(s.value), map_stmt(s.body, efn))
    if isinstance(s, Allocate):
        return Allocate(s.buf, map_stmt(s.body, efn))
    if isinstance(s, Prefetch):
        return Prefetch(s.buf, tuple(efn(i) for i in s.indices), s.level)
    raise TypeError(f"unknown statement {type(s).__name__}")


def substitute(e: Expr, mapping: dict) -> Expr:
    """Replace variables (keyed by Var or by name; matched by name) with expressions."""
    by_name = {k.name if isinstance(k, Var) else k: v for k, v in mapping.items()}

    def fn(x):
        if isinstance(x, Var):
            return by_name.get(x.name)
        return None
    return map_expr(e, fn)


def substitute_stmt(s: Stmt, mapping: dict) -> Stmt:
    return map_stmt(s, lambda e: simplify(substitute(e, mapping)))


def walk_exprs(e: Expr):
    """Yield every sub-expression of ``e`` (pre-order)."""
    yield e
    for child in _children(e):
        yield from walk_exprs(child)


def _children(e: Expr) -> tuple:
    if isinstance(e, (Bin, Cmp, And, Or)):
        return (e.a, e.b)
    if isinstance(e, (Not, Cast)):
        return (e.a,)
    if isinstance(e, Select):
        return (e.cond, e.a, e.b)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Load):
        return e.indices
    if isinstance(e, LanePermute):
        return (e.a,)
    return ()


def stmt_exprs(s: Stmt):
    """Yield every top-level expression of a statement tree (with the statement holding it)."""
    if isinstance(s, For):
        yield s, s.start
        yield s, s.extent
        yield from stmt_exprs(s.body)
    elif isinstance(s, Store):
        for i in s.indices:
            yield s, i
        yield s, s.value
    elif isinstance(s, Seq):
        for x in s.stmts:
            yield from stmt_exprs(x)
    elif isinstance(s, If):
        yield s, s.cond
        yield from stmt_exprs(s.then)
        if s.else_ is not None:
            yield from stmt_exprs(s.else_)
    elif isinstance(s, Let):
        yield s, s.value
        yield from stmt_exprs(s.body)
    elif isinstance(s, Allocate):
        yield from stmt_exprs(s.body)
    elif isinstance(s, Prefetch):
        for i in s.indices:
            yield s, i


def walk_stmts(s: Stmt):
    yield s
    if isinstance(s, (For, Let, Allocate)):
        yield from walk_stmts(s.body)
    elif isinstance(s, Seq):
        for x in s.stmts:
            yield from walk_stmts(x)
    elif isinstance(s, If):
        yield from walk_stmts(s.then)
        if s.else_ is not None:
            yield from walk_stmts(s.else_)


def replace_stmts(s: Stmt, fn: Callable[[Stmt], Stmt | None]) -> Stmt:
    """``s`` with every statement for which ``fn`` returns a replacement replaced by it (its
    inside not visited); the others rebuilt around their replaced parts."""
    new = fn(s)
    if new is not None:
        return new
    if isinstance(s, For):
        return For(s.var, s.extent, replace_stmts(s.body, fn), s.kind, s.start)
    if isinstance(s, Seq):
        return Seq([replace_stmts(x, fn) for x in s.stmts])
    if isinstance(s, If):
        return If(s.cond, replace_stmts(s.then, fn),
                  None if s.else_ is None else replace_stmts(s.else_, fn), s.masked)
    if isinstance(s, Let):
        return Let(s.var, s.value, replace_stmts(s.body, fn))
    if isinstance(s, Allocate):
        return Allocate(s.buf, replace_stmts(s.body, fn))
    return s


def replace_node(s: Stmt, target: Stmt, new: Stmt) -> Stmt:
    """``s`` with the node ``target`` (by identity) replaced by ``new``."""
    return replace_stmts(s, lambda x: new if x is target else None)


def loop_path(s: Stmt, name: str) -> list[Stmt] | None:
    """Statements from ``s`` down to the loop whose var is ``name`` (inclusive), or None."""
    if isinstance(s, For) and s.var.name == name:
        return [s]
    children = []
    if isinstance(s, (For, Let, Allocate)):
        children = [s.body]
    elif isinstance(s, Seq):
        children = s.stmts
    elif isinstance(s, If):
        children = [s.then] + ([s.else_] if s.else_ is not None else [])
    for c in children:
        p = loop_path(c, name)
        if p is not None:
            return [s] + p
    return None


def free_vars(e: Expr) -> set[str]:
    return {x.name for x in walk_exprs(e) if isinstance(x, Var)}


def uses_var(e: Expr, name: str) -> bool:
    return name in free_vars(e)


# ---- affine forms --------------------------------------------------------------------------------

def linear(e: Expr) -> dict | None:
    """``e`` as {var name: coefficient, 1: constant} when it is affine in integer vars, else None.

    Variables are keyed by name; None means "not affine" (e.g. a floordiv or a load inside).
    """
    if e.dtype.is_float:
        return None
    if isinstance(e, Const):
        return {1: int(e.value)}
    if isinstance(e, Var):
        return {e.name: 1}
    if isinstance(e, Bin) and e.op in ("add", "sub"):
        a, b = linear(e.a), linear(e.b)
        if a is None or b is None:
            return None
        sign = 1 if e.op == "add" else -1
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + sign * v
        return {k: v for k, v in out.items() if v != 0 or k == 1}
    if isinstance(e, Bin) and e.op == "mul":
        a, b = linear(e.a), linear(e.b)
        if a is None or b is None:
            return None
        if set(a) <= {1}:
            a, b = b, a
        if not set(b) <= {1}:
            return None
        c = b.get(1, 0)
        return {k: v * c for k, v in a.items() if v * c != 0 or k == 1}
    return None


def from_linear(form: dict) -> Expr:
    """Rebuild an expression from a linear form (variables sorted by name: deterministic)."""
    out: Expr | None = None
    for k in sorted((k for k in form if k != 1), key=str):
        c = form[k]
        term = Var(k) if c == 1 else Var(k) * Const(c)
        out = term if out is None else out + term
    c = form.get(1, 0)
    if out is None:
        return Const(c)
    return out + Const(c) if c else out


def coefficient(e: Expr, name: str) -> int | None:
    """The coefficient of var ``name`` in ``e`` if e = coef*name + rest (rest free of name)."""
    if not uses_var(e, name):
        return 0
    form = linear(e)
    if form is not None:
        return form.get(name, 0)
    if isinstance(e, Bin) and e.op in ("add", "sub"):
        a, b = coefficient(e.a, name), coefficient(e.b, name)
        if a is None or b is None:
            return None
        return a + b if e.op == "add" else a - b
    return None


# ---- simplifier ----------------------------------------------------------------------------------

def simplify(e: Expr) -> Expr:
    """Fold constants and identities; normalize integer affine expressions."""
    return map_expr(e, _simplify_node)


def _simplify_node(e: Expr) -> Expr | None:
    if isinstance(e, Bin):
        a, b = simplify(e.a), simplify(e.b)
        if isinstance(a, Const) and isinstance(b, Const) and not (
                e.op in ("div", "floordiv", "mod") and b.value == 0):
            return Const(_fold(e.op, a.value, b.value, e.dtype.is_float), e.dtype)
        if not e.dtype.is_float:
            r = Bin(e.op, a, b)
            form = linear(r)
            if form is not None:
                return from_linear(form)
            if e.op in ("floordiv", "mod") and isinstance(b, Const) and b.value == 1:
                return a if e.op == "floordiv" else Const(0, e.dtype)
            if e.op == "mul" and ((isinstance(a, Const) and a.value == 0)
                                  or (isinstance(b, Const) and b.value == 0)):
                return Const(0, e.dtype)
            return r
        return Bin(e.op, a, b)
    if isinstance(e, Cmp):
        a, b = simplify(e.a), simplify(e.b)
        if isinstance(a, Const) and isinstance(b, Const):
            return Const(_cmp(e.op, a.value, b.value), BOOL)
        return Cmp(e.op, a, b)
    return None


def _fold(op: str, a, b, is_float: bool):
    if not is_float:
        return fold_int(op, int(a), int(b))
    if op == "div":
        return a / b
    return {"add": a + b, "sub": a - b, "mul": a * b, "min": min(a, b), "max": max(a, b),
            "floordiv": a // b, "mod": a % b}[op]


INT_DIVISIONS = ("div", "floordiv", "mod")


def fold_int(op: str, a: int, b: int) -> int | None:
    """``a op b`` (a loop-IR integer Bin op) on two constants, exactly: Python ints, no
    wrap-around (a backend range-checks or wraps for its type). The semantics of the loop IR,
    which every backend emits:
    - ``div`` truncates toward zero, as C's ``/`` (Python's // floors: -7 div 2 = -3);
    - ``floordiv`` floors and ``mod`` takes the divisor's sign, as Python's // and % (C's ``/``
      truncates and its ``%`` takes the dividend's sign: -7 floordiv 2 = -4, -7 mod 2 = 1, where
      C gives -3 and -1; the C backend emits helpers for signed operands);
    - a zero divisor gives None (undefined in C: nothing to fold to).
    Any other op is a ValueError."""
    if op in INT_DIVISIONS:
        if b == 0:
            return None
        if op == "div":
            q = abs(a) // abs(b)
            return q if (a < 0) == (b < 0) else -q
        return a // b if op == "floordiv" else a % b
    if op == "min":
        return min(a, b)
    if op == "max":
        return max(a, b)
    if op in ("add", "sub", "mul"):
        return a + b if op == "add" else a - b if op == "sub" else a * b
    raise ValueError(f"not an integer Bin op: {op}")


def _cmp(op: str, a, b) -> bool:
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b, "eq": a == b,
            "ne": a != b}[op]


def const_value(e: Expr) -> int | None:
    """The integer value of ``e`` if it simplifies to a constant."""
    s = simplify(e)
    return int(s.value) if isinstance(s, Const) else None


def canonical_text(kernel: Kernel) -> str:
    """The loop IR of ``kernel`` with every name that is not part of the computation replaced
    (the kernel ``K``, its parameters ``p0, p1, ...``, its local buffers ``l0, l1, ...``): equal
    for kernels that compute the same thing on other buffers, so a backend emits them once."""
    bufs = list(kernel.params) + [s.buf for s in walk_stmts(kernel.body)
                                  if isinstance(s, Allocate)]
    saved = [b.name for b in bufs]
    try:
        for i, b in enumerate(kernel.params):
            b.name = f"p{i}"
        for i, b in enumerate(bufs[len(kernel.params):]):
            b.name = f"l{i}"
        return format_kernel(Kernel("K", kernel.params, kernel.body))
    finally:
        for b, name in zip(bufs, saved):
            b.name = name
