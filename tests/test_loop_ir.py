"""Loop IR: construction, printing, affine utilities and the interpreter vs numpy formulas."""
import numpy as np
import pytest

from cnncc.ir.loop_walk import coefficient, const_value, linear, simplify, substitute
from cnncc.ir.dtypes import DType
from cnncc.ir.loop import (Allocate, Buffer, Call, Cast, Const, For, If, Kernel, Let, Select,
                           Store, Var, loop_nest, seq)
from cnncc.ir.loop_interp import run_kernel

F32 = DType.float32


def test_affine_forms():
    i, j = Var("i"), Var("j")
    e = (i * 4 + j + 3) * 2 - i
    assert linear(e) == {"i": 7, "j": 2, 1: 6}
    assert coefficient(e, "j") == 2
    assert coefficient(i // 2 + j, "j") == 1
    assert coefficient(i // 2 + j, "i") is None
    assert const_value(substitute(e, {"i": Const(1), "j": Const(2)})) == 17
    assert isinstance(simplify(Const(2) * Const(3) + 1), Const)


def test_printer_is_deterministic():
    a = Buffer("a", F32, (4, 5))
    b = Buffer("b", F32, (4, 5))
    body = loop_nest([("i", 4), ("j", 5)], lambda i, j: Store(b, (i, j), a[i, j] * 2.0))
    k = Kernel("k", [a, b], body)
    text = str(k)
    assert text == str(k)
    assert "kernel k(a: f32[4x5], b: f32[4x5]):" in text
    assert "b[i, j] = (a[i, j] * 2.0f)" in text


def test_interpreter_elementwise_and_reduction():
    a = Buffer("a", F32, (3, 7))
    out = Buffer("out", F32, (3,))
    acc = Buffer("acc", F32, (1,), "local")
    body = loop_nest([("i", 3)], lambda i: Allocate(acc, seq(
        Store(acc, (0,), Const(0.0, F32)),
        loop_nest([("k", 7)], lambda k: Store(acc, (0,), acc[0] + Call("exp", (a[i, k],), F32))),
        Store(out, (i,), acc[0]))))
    x = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    y = np.zeros(3, np.float32)
    run_kernel(Kernel("k", [a, out], body), {"a": x, "out": y})
    np.testing.assert_allclose(y, np.exp(x).sum(1), rtol=1e-5)


def test_interpreter_select_cast_let_if():
    a = Buffer("a", F32, (6,))
    b = Buffer("b", F32, (6,))
    t = Var("t", F32)
    body = loop_nest([("i", 6)], lambda i: Let(t, a[i] * 3.0, If(
        i < 4, Store(b, (i,), Select(t > 0.0, t, Cast(F32, i))), Store(b, (i,), Const(-1.0, F32)))))
    x = np.array([1, -2, 3, -4, 5, 6], np.float32)
    y = np.zeros(6, np.float32)
    run_kernel(Kernel("k", [a, b], body), {"a": x, "b": y})
    np.testing.assert_array_equal(y, [3, 1, 9, 3, -1, -1])


def test_interpreter_bounds_checked():
    a = Buffer("a", F32, (4,))
    body = For(Var("i"), 5, Store(a, (Var("i"),), Const(1.0, F32)))
    with pytest.raises(IndexError):
        run_kernel(Kernel("k", [a], body), {"a": np.zeros(4, np.float32)})


def test_type_errors():
    a = Buffer("a", F32, (4,))
    with pytest.raises(TypeError):
        Var("i") + Const(1.0, F32)
    with pytest.raises(IndexError):
        a[1, 2]


def test_fold_int_is_the_loop_ir_integer_semantics():
    """One integer folder (loop_walk.fold_int) for the simplifier, the interpreter, the LLVM and
    the CUDA C backends, against exact rational arithmetic: div truncates toward zero (C's /),
    floordiv floors and mod takes the divisor's sign (Python's // and %, unlike C's / and %)."""
    from fractions import Fraction
    from math import floor, trunc

    from cnncc.backends.cuda.cexpr import ExprRenderer
    from cnncc.backends.llvm.indexing import fold_int as llvm_fold_int
    from cnncc.ir.loop import BIN_OPS, Bin
    from cnncc.ir.loop_walk import fold_int

    values = [0, 1, -1, 2, -2, 7, -7, 13, -13, 2**62 + 1, -2**63]
    for a in values:
        for b in values:
            ref = {"add": a + b, "sub": a - b, "mul": a * b, "min": min(a, b),
                   "max": max(a, b)}
            if b:
                q = Fraction(a, b)
                ref.update(div=trunc(q), floordiv=floor(q), mod=a - b * floor(q))
            for op in BIN_OPS:
                assert fold_int(op, a, b) == ref.get(op), (op, a, b)
    assert (fold_int("div", -7, 2), fold_int("floordiv", -7, 2), fold_int("mod", -7, 2)) == \
        (-3, -4, 1)                 # C: -7 / 2 == -3, -7 % 2 == -1
    assert fold_int("mod", 7, -2) == -1 and fold_int("div", 7, -2) == -3
    # The LLVM backend: wrapped to the type, a zero divisor acts as 1 (as its code does).
    assert llvm_fold_int("div", -2**63, -1, 64) == -2**63
    assert llvm_fold_int("mod", 5, 0, 64) == 0 and llvm_fold_int("div", 5, 0, 64) == 5
    # The simplifier (exact, beyond float precision) and the CUDA C renderer fold the same way.
    big = 2**62 + 1
    assert simplify(Bin("div", Const(-big, DType.int64), Const(3, DType.int64))).value == \
        -(big // 3)
    render = ExprRenderer("k", {}, None, {}, set())
    assert render(Bin("div", Const(-7, DType.int32), Const(2, DType.int32))) == "-3"
    assert "/" in render(Bin("div", Const(7, DType.int32), Const(0, DType.int32)))   # not folded
    with pytest.raises(ValueError, match="not an integer Bin op"):
        fold_int("pow", 2, 3)
