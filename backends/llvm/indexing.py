"""What the LLVM emitter asks about index expressions, answered once per kernel.

Unrolled loop IR repeats the same accesses many times (a register tile, the taps of a depthwise
window): the linear offset of ``buf[indices]`` is simplified once per distinct index text, and
the variables an expression reads and its coefficient in the vectorized variable are computed
once per expression. Entries keep their expressions alive, so ``id`` keys stay valid.
"""
from __future__ import annotations

from ...ir.affine import coefficient, simplify, walk_exprs
from ...ir.loop import Const, Expr, Var
from ...ir.loop_printer import format_expr


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
