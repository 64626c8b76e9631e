"""Schedule primitives: every scheduled kernel computes what the unscheduled one computes."""
import numpy as np
import pytest

from cnncc.ir.dtypes import DType
from cnncc.ir.loop import Allocate, Buffer, Const, Kernel, Store, loop_nest, seq
from cnncc.ir.loop_interp import run_kernel
from cnncc.ir.schedule import Schedule, ScheduleError

F32 = DType.float32


def matmul_kernel(m, n, k):
    a, b, c = Buffer("a", F32, (m, k)), Buffer("b", F32, (k, n)), Buffer("c", F32, (m, n))
    body = loop_nest([("i", m), ("j", n)], lambda i, j: seq(
        Store(c, (i, j), Const(0.0, F32)),
        loop_nest([("r", k)], lambda r: Store(c, (i, j), c[i, j] + a[i, r] * b[r, j]))))
    return Kernel("mm", [a, b, c], body)


def run_mm(kernel, m, n, k):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    run_kernel(kernel, {"a": a, "b": b, "c": c})
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-5)
    return c


@pytest.mark.parametrize("mode", ["guard", "tail"])
@pytest.mark.parametrize("shape", [(3, 5, 2), (4, 8, 3), (1, 7, 1)])
def test_split_vectorize_unroll(mode, shape):
    s = Schedule(matmul_kernel(*shape))
    jo, ji = s.split("j", 4, mode=mode)
    s.vectorize(ji)
    io, ii = s.split("i", 2, mode="guard")
    s.unroll(ii)
    s.parallel(io)
    assert "split(j, 4" in str(s) and "vectorized for" in str(s)
    # The log reads back as the calls that made it.
    assert s.log == [f"split(j, 4, {mode}) -> {jo}, {ji}", f"vectorize({ji})",
                     f"split(i, 2, guard) -> {io}, {ii}", f"unroll({ii})", f"parallel({io})"]
    run_mm(s.kernel, *shape)


def test_reorder_and_fuse():
    s = Schedule(matmul_kernel(5, 6, 3))
    jo, ji = s.split("j", 3)
    s.reorder(jo, "i", ji)
    f = s.fuse(jo, "i")
    s.parallel(f)
    assert s.loop_names()[0] == f
    run_mm(s.kernel, 5, 6, 3)


def test_illegal_primitives():
    s = Schedule(matmul_kernel(4, 4, 4))
    with pytest.raises(ScheduleError, match="reduction"):
        s.parallel("r")
    with pytest.raises(ScheduleError, match="reduction"):
        s.vectorize("r")
    with pytest.raises(ScheduleError, match="no loop"):
        s.unroll("zz")
    with pytest.raises(ScheduleError, match="directly inside"):
        s.fuse("i", "r")
    with pytest.raises(ScheduleError, match="factor"):
        s.split("i", 0)
    s.parallel("i")
    with pytest.raises(ScheduleError, match="nested"):
        s.parallel("j")


def blur_kernel(h, w):
    """tmp = 2 * a (producer, local); out[y, x] = tmp[y, x] + tmp[y, x + 1] + tmp[y + 1, x]."""
    a = Buffer("a", F32, (h, w))
    out = Buffer("out", F32, (h - 1, w - 1))
    tmp = Buffer("tmp", F32, (h, w), "local")
    prod = loop_nest([("py", h), ("px", w)], lambda y, x: Store(tmp, (y, x), a[y, x] * 2.0))
    cons = loop_nest([("y", h - 1), ("x", w - 1)], lambda y, x: Store(
        out, (y, x), tmp[y, x] + tmp[y, x + 1] + tmp[y + 1, x]))
    return Kernel("blur", [a, out], Allocate(tmp, seq(prod, cons)))


@pytest.mark.parametrize("at,split", [("y", None), ("x", None), ("x_o", 3)])
def test_compute_at(at, split):
    h, w = 6, 9
    s = Schedule(blur_kernel(h, w))
    if split:
        s.split("x", split)
    s.compute_at("tmp", at)
    text = str(s)
    assert "tmp_tile" in text
    x = np.random.default_rng(2).standard_normal((h, w)).astype(np.float32)
    out = np.zeros((h - 1, w - 1), np.float32)
    run_kernel(s.kernel, {"a": x, "out": out})
    t = 2 * x
    np.testing.assert_allclose(out, t[:-1, :-1] + t[:-1, 1:] + t[1:, :-1], rtol=1e-6)


def test_compute_at_errors():
    s = Schedule(blur_kernel(5, 5))
    with pytest.raises(ScheduleError, match="not a locally allocated"):
        s.compute_at("a", "y")
    with pytest.raises(ScheduleError, match="no loop"):
        s.compute_at("tmp", "py")
