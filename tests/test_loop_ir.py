"""Loop IR: construction, printing, affine utilities and the interpreter vs numpy formulas."""
import numpy as np
import pytest

from cnncc.ir.loop_walk import bounds, coefficient, const_value, linear, simplify, substitute
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
    lo, hi = bounds(i * 3 + j, {"j": (Const(0), Const(5))})
    assert const_value(hi - lo) == 5
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
