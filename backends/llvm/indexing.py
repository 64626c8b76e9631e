"""What the LLVM emitter asks about index expressions, answered once per kernel.

Unrolled loop IR repeats the same accesses many times (a register tile, the taps of a depthwise
window): the linear offset of ``buf[indices]`` is simplified once per distinct index text, and
the variables an expression reads and its coefficient in the vectorized variable are computed
once per expression. Entries keep their expressions alive, so ``id`` keys stay valid. Also:
integer arithmetic on constants folded as the emitted code computes it (``fold_int``), keys of
values for emitting each integer value once per block, and the scratch buffers some access
indexes at run time (``memory_resident``: unrolling loops over them is left to LLVM).
"""
from __future__ import annotations

import llvmlite.ir as ir

from cnncc.ir.loop_walk import (INT_DIVISIONS, coefficient, from_linear, linear, simplify,
                                substitute, walk_exprs)
from cnncc.ir.loop_walk import fold_int as loop_fold_int
from cnncc.ir.loop import (SEQUENTIAL_KINDS, Allocate, Const, Expr, For, If, Let, Load, Prefetch,
                           Seq, Stmt, Store, Var)
from cnncc.ir.loop_printer import format_expr


def fold_int(op: str, a: int, b: int, bits: int) -> int:
    """The signed ``bits``-bit integer Bin ``op`` of two constants, as the emitted code computes
    it: the loop IR's semantics (loop_walk.fold_int: div truncates, floordiv and mod floor)
    wrapped around to ``bits``, a zero divisor acting as 1 (exprs.py; -1 never traps: the
    wrapped result of MIN / -1 is MIN)."""
    if op in INT_DIVISIONS and b == 0:
        b = 1
    return _wrap(loop_fold_int(op, a, b), bits)


def fold_int_values(op: str, a, b):
    """The llvmlite value of signed integer Bin ``op`` on values ``a`` and ``b`` when it needs
    no instruction (both constants; x + 0, x - 0, x * 1, x * 0, 0 + x, 1 * x, x // 1), else
    None."""
    ca = a.constant if isinstance(a, ir.Constant) else None
    cb = b.constant if isinstance(b, ir.Constant) else None
    if ca is not None and cb is not None:
        return ir.Constant(a.type, fold_int(op, ca, cb, a.type.width))
    if cb == 0 and op in ("add", "sub") or cb == 1 and op in ("mul", "div", "floordiv"):
        return a
    if ca == 0 and op == "add" or ca == 1 and op == "mul":
        return b
    if (ca == 0 or cb == 0) and op == "mul":
        return ir.Constant(a.type, 0)
    return None


def value_key(v) -> tuple:
    """A key of llvmlite value ``v`` for a memo of pure integer operations: constants by value,
    anything else by identity (instructions live as long as their function)."""
    if isinstance(v, ir.Constant):
        return ("const", str(v.type), v.constant)
    return ("value", id(v))


def _wrap(v: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return (v + half) % (1 << bits) - half


def linear_index(buf, indices) -> Expr:
    """Row-major linear offset of ``buf[indices]``."""
    lin: Expr = Const(0)
    stride = 1
    for idx, dim in reversed(list(zip(indices, buf.shape))):
        lin = idx * stride + lin if stride != 1 else idx + lin
        stride *= dim
    return simplify(lin)


class IndexCache:
    """Per-kernel memo of linear offsets, variable sets and lane coefficients."""

    def __init__(self):
        self._by_access: dict = {}     # (id(buf), id(indices)) -> (offset, buf, indices)
        self._by_text: dict = {}       # (shape, index texts) -> offset
        self._names: dict = {}         # id(expr) -> (expr, the variables it reads)
        self._coefs: dict = {}         # (id(offset), vector variable) -> (offset, coefficient)
        self._fixed: dict = {}         # (id(offset), constants) -> (offset, offset with them)
        self._forms: dict = {}         # id(offset) -> (offset, its linear form or None)

    def offset(self, buf, indices) -> Expr:
        key = (id(buf), id(indices))
        hit = self._by_access.get(key)
        if hit is None:
            text = (buf.shape, tuple(format_expr(i) for i in indices))
            lin = self._by_text.get(text)
            if lin is None:
                lin = self._by_text[text] = linear_index(buf, indices)
            hit = self._by_access[key] = (lin, buf, indices)
        return hit[0]

    def with_constants(self, lin: Expr, values: tuple) -> Expr:
        """Offset ``lin`` with the variables of ``values`` ((name, constant) pairs: the loops
        the emitter unrolls) replaced and simplified: its run-time terms, then one constant.
        The pixels of a register tile then share one run-time offset and differ by a
        displacement; folded as ``(row + r // TW) * W + col + r % TW``, each pixel had its own
        index arithmetic, which LLVM hoisted out of the reduction loop as as many live values
        (a 2x6 AVX2 tile spilled them)."""
        key = (id(lin), values)
        hit = self._fixed.get(key)
        if hit is None or hit[0] is not lin:
            form = self._forms.get(id(lin))
            if form is None or form[0] is not lin:
                form = self._forms[id(lin)] = (lin, linear(lin))
            # A floordiv or mod: simplified with the constants in. Affine: the constants'
            # terms join its constant, without simplify (which, for every access, took
            # MobileNetV2's IR emission from 0.99 to 1.20 s of CPU).
            if form[1] is None:
                fixed = simplify(substitute(lin, {name: Const(v) for name, v in values}))
            else:
                bound = dict(values)
                rest = {k: c for k, c in form[1].items() if k != 1 and k not in bound}
                rest[1] = form[1].get(1, 0) + sum(c * bound[k] for k, c in form[1].items()
                                                  if k in bound)
                fixed = from_linear(rest)
            hit = self._fixed[key] = (lin, fixed)
        return hit[1]

    def var_names(self, e: Expr) -> frozenset:
        hit = self._names.get(id(e))
        if hit is None or hit[0] is not e:
            hit = self._names[id(e)] = (e, frozenset(x.name for x in walk_exprs(e)
                                                     if isinstance(x, Var)))
        return hit[1]

    def coefficient(self, lin: Expr, var: str):
        key = (id(lin), var)
        hit = self._coefs.get(key)
        if hit is None or hit[0] is not lin:
            hit = self._coefs[key] = (lin, coefficient(lin, var))
        return hit[1]


def memory_resident(body: Stmt) -> set:
    """Names of the scratch buffers (Allocate) of ``body`` that some load or store indexes with
    a run-time value (a serial or parallel loop's variable, or a Let of one): LLVM keeps them in
    memory, so unrolling a loop that indexes them cannot change what stays in registers."""
    found: set = set()

    def note(exprs, dyn: set) -> None:
        for e in exprs:
            for x in walk_exprs(e):
                if isinstance(x, Load) and any(uses_any(i, dyn) for i in x.indices):
                    found.add(x.buf.name)

    def visit(s: Stmt, dyn: set) -> None:
        if isinstance(s, Seq):
            for x in s.stmts:
                visit(x, dyn)
        elif isinstance(s, For):
            note((s.start, s.extent), dyn)
            visit(s.body, dyn | {s.var.name} if s.kind in SEQUENTIAL_KINDS + ("parallel",)
                  else dyn)
        elif isinstance(s, Let):
            note((s.value,), dyn)
            visit(s.body, dyn | {s.var.name} if uses_any(s.value, dyn) else dyn)
        elif isinstance(s, If):
            note((s.cond,), dyn)
            visit(s.then, dyn)
            if s.else_ is not None:
                visit(s.else_, dyn)
        elif isinstance(s, Allocate):
            visit(s.body, dyn)
        elif isinstance(s, (Store, Prefetch)):
            if any(uses_any(i, dyn) for i in s.indices):
                found.add(s.buf.name)
            note(s.indices + ((s.value,) if isinstance(s, Store) else ()), dyn)

    visit(body, set())
    return found


def uses_any(e, names: set) -> bool:
    """Whether expression ``e`` reads a variable named in ``names``."""
    return any(isinstance(x, Var) and x.name in names for x in walk_exprs(e))
