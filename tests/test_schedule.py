"""Schedule primitives: every scheduled kernel computes what the unscheduled one computes."""
import numpy as np
import pytest

from cnncc.ir.dtypes import DType
from cnncc.ir.loop import Buffer, Const, Kernel, Store, loop_nest, seq
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
def test_split_vectorize_parallel(mode, shape):
    s = Schedule(matmul_kernel(*shape))
    jo, ji = s.split("j", 4, mode=mode)
    s.vectorize(ji)
    io, ii = s.split("i", 2, mode="guard")
    s.parallel(io)
    assert "split(j, 4" in str(s) and "vectorized for" in str(s)
    # The log reads back as the calls that made it.
    assert s.log == [f"split(j, 4, {mode}) -> {jo}, {ji}", f"vectorize({ji})",
                     f"split(i, 2, guard) -> {io}, {ii}", f"parallel({io})"]
    run_mm(s.kernel, *shape)


def test_fuse_and_bind():
    s = Schedule(matmul_kernel(5, 6, 3))
    jo, ji = s.split("j", 3)
    f = s.fuse("i", jo)
    s.parallel(f)
    assert s.loop_names()[0] == f
    assert s.log[1:] == [f"fuse(i, {jo}) -> {f}", f"parallel({f})"]
    run_mm(s.kernel, 5, 6, 3)
    g = Schedule(matmul_kernel(4, 8, 2))
    g.bind("i", "gpu_block")
    g.bind("j", "gpu_thread")
    assert g.log == ["bind(i, gpu_block)", "bind(j, gpu_thread)"]
    run_mm(g.kernel, 4, 8, 2)


def test_illegal_primitives():
    s = Schedule(matmul_kernel(4, 4, 4))
    with pytest.raises(ScheduleError, match="reduction"):
        s.parallel("r")
    with pytest.raises(ScheduleError, match="reduction"):
        s.vectorize("r")
    with pytest.raises(ScheduleError, match="no loop"):
        s.vectorize("zz")
    with pytest.raises(ScheduleError, match="gpu_block or gpu_thread"):
        s.bind("i", "vectorized")
    with pytest.raises(ScheduleError, match="directly inside"):
        s.fuse("i", "r")
    with pytest.raises(ScheduleError, match="factor"):
        s.split("i", 0)
    s.parallel("i")
    with pytest.raises(ScheduleError, match="nested"):
        s.parallel("j")
