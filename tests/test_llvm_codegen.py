"""LLVM codegen of loop IR kernels (scheduled and hand-built): compiled == interpreted == numpy,
odd shapes; integer constants folded by the code generator as its instructions compute them."""
import numpy as np
import pytest

from cnncc.backends.llvm import jit
from cnncc.backends.llvm.kernels import compile_kernel
from cnncc.ir.dtypes import DType
from cnncc.ir.loop import (Allocate, Buffer, Call, Cast, Const, For, If, Kernel, Select, Store,
                           Var, loop_nest, seq)
from cnncc.ir.loop_interp import run_kernel
from cnncc.ir.schedule import Schedule

from test_schedule import matmul_kernel

F32 = DType.float32


def both(kernel, arrays, threads=1):
    a1 = {k: v.copy() for k, v in arrays.items()}
    a2 = {k: v.copy() for k, v in arrays.items()}
    run_kernel(kernel, a1)
    compile_kernel(kernel, threads=threads)(a2)
    return a1, a2


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["guard", "tail"])
@pytest.mark.parametrize("shape", [(3, 5, 2), (5, 19, 7), (2, 33, 4)])
def test_matmul_schedules(threads, mode, shape):
    m, n, k = shape
    s = Schedule(matmul_kernel(m, n, k))
    jo, ji = s.split("j", jit.vector_lanes(), mode=mode)
    s.vectorize(ji)
    io, ii = s.split("i", 2)
    s.parallel(io)
    rng = np.random.default_rng(3)
    arrays = {"a": rng.standard_normal((m, k)).astype(np.float32),
              "b": rng.standard_normal((k, n)).astype(np.float32),
              "c": np.zeros((m, n), np.float32)}
    a1, a2 = both(s.kernel, arrays, threads)
    ref = arrays["a"] @ arrays["b"]
    np.testing.assert_allclose(a1["c"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a2["c"], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fn", ["exp", "tanh", "erf", "sigmoid", "sqrt", "abs", "floor", "log"])
def test_math_vectorized(fn):
    n = 37
    a, b = Buffer("a", F32, (n,)), Buffer("b", F32, (n,))
    body = loop_nest([("i", n)], lambda i: Store(b, (i,), Call(fn, (a[i],), F32)))
    s = Schedule(Kernel("k", [a, b], body))
    o, i = s.split("i", jit.vector_lanes(), mode="tail")
    s.vectorize(i)
    x = np.random.default_rng(5).standard_normal(n).astype(np.float32) * 3
    x[:5] = [0.0, 1e-4, -1e-3, 0.3, -0.49]
    if fn in ("sqrt", "log"):
        x = np.abs(x) + 0.1
    a1, a2 = both(s.kernel, {"a": x, "b": np.zeros(n, np.float32)})
    np.testing.assert_allclose(a2["b"], a1["b"], rtol=1e-5, atol=1e-6)


def test_select_cast_guard_gather():
    n = 21
    a, b = Buffer("a", F32, (n, 3)), Buffer("b", F32, (n,))
    i = Var("i")
    body = For(i, n, If(i < 19, Store(b, (i,), Select(a[i, 1] > 0.0, a[i, 2], Cast(F32, i))),
                        Store(b, (i,), Const(-1.0, F32))), "vectorized")
    x = np.random.default_rng(6).standard_normal((n, 3)).astype(np.float32)
    a1, a2 = both(Kernel("k", [a, b], body), {"a": x, "b": np.zeros(n, np.float32)})
    np.testing.assert_array_equal(a1["b"], a2["b"])


def test_local_accumulator_reduction():
    rows, cols = 5, 13
    a, out = Buffer("a", F32, (rows, cols)), Buffer("out", F32, (rows,))
    acc = Buffer("acc", F32, (1,), "local")
    body = loop_nest([("r", rows)], lambda r: Allocate(acc, seq(
        Store(acc, (0,), Const(0.0, F32)),
        loop_nest([("c", cols)], lambda c: Store(acc, (0,), acc[0] + a[r, c] * a[r, c])),
        Store(out, (r,), acc[0]))))
    s = Schedule(Kernel("k", [a, out], body))
    s.parallel("r")
    x = np.random.default_rng(7).standard_normal((rows, cols)).astype(np.float32)
    a1, a2 = both(s.kernel, {"a": x, "out": np.zeros(rows, np.float32)}, threads=2)
    np.testing.assert_allclose(a2["out"], (x * x).sum(1), rtol=1e-5)
    np.testing.assert_allclose(a1["out"], a2["out"], rtol=1e-5)


def test_target_and_ir_text():
    info = jit.target_info()
    assert info["features"] and jit.vector_lanes() in (4, 8, 16)
    s = Schedule(matmul_kernel(2, 16, 3))
    o, i = s.split("j", jit.vector_lanes())
    s.vectorize(i)
    ck = compile_kernel(s.kernel)
    assert "noalias" in ck.ir_text and f"llvm.fma.v{jit.vector_lanes()}f32" in ck.ir_text


def test_masked_store_in_vector_loop():
    n = 16
    a, b = Buffer("a", F32, (n,)), Buffer("b", F32, (n,))
    i = Var("i")
    body = For(i, n, If(i < 13, Store(b, (i,), a[i] * 2.0), masked=True), "vectorized")
    k = Kernel("k", [a, b], body)
    assert "if masked" in str(k)
    x = np.arange(n, dtype=np.float32)
    a1, a2 = both(k, {"a": x, "b": np.full(n, -1, np.float32)})
    np.testing.assert_array_equal(a1["b"], a2["b"])
    assert a2["b"][12] == 24 and a2["b"][13] == -1


@pytest.mark.parametrize("dtype", [DType.int8, DType.uint8, DType.int16])
@pytest.mark.parametrize("enabled", [1, 2, 3])
def test_masked_narrow_store_of_one_lane(dtype, enabled):
    """An int32 value narrowed (clamped to the type's range, then cast: what the requantizing
    epilogues store) into a row of ``enabled`` elements through a masked vector store writes
    those elements and nothing after them (LLVM 22 on AVX-512 wrote 4 bytes for one enabled
    lane of an i32 -> i8 masked store once its mask folded to a constant)."""
    lanes = jit.vector_lanes()
    i32 = DType.int32
    lo, hi = (int(v) for v in (np.iinfo(dtype.np).min, np.iinfo(dtype.np).max))
    a, b = Buffer("a", i32, (lanes,)), Buffer("b", dtype, (2, lanes))
    i = Var("i")
    value = Cast(dtype, (a[i] + Const(3, i32)).max(Const(lo, i32)).min(Const(hi, i32)))
    body = For(i, lanes, If(i < enabled, Store(b, (0, i), value), masked=True), "vectorized")
    k = Kernel("k", [a, b], body)
    x = np.arange(lanes, dtype=np.int32) * 1000 - 77
    a1, a2 = both(k, {"a": x, "b": np.full((2, lanes), 5, dtype.np)})
    want = np.full((2, lanes), 5, dtype.np)
    want[0, :enabled] = np.clip(x[:enabled] + 3, lo, hi)
    np.testing.assert_array_equal(a1["b"], want)
    np.testing.assert_array_equal(a2["b"], want)


def test_folded_index_arithmetic_matches_the_emitted_code():
    """Integer Bin ops of constants are computed by the code generator (unrolled loops' index
    arithmetic): the same values as the instructions it emits for run-time operands."""
    import ctypes

    from cnncc.backends.llvm.codegen import ModuleBuilder
    from cnncc.backends.llvm.indexing import fold_int
    from cnncc.ir.loop import BIN_OPS, Bin, Buffer, Kernel, Store, seq

    values = [0, 1, -1, 2, -3, 7, -13, 2**62, -2**63]
    pairs = [(a, b) for a in values for b in values]
    xa = Buffer("xa", DType.int64, (len(pairs),))
    xb = Buffer("xb", DType.int64, (len(pairs),))
    outs = [Buffer(f"y_{op}", DType.int64, (len(pairs),)) for op in BIN_OPS]
    body = seq(*[Store(y, (i,), Bin(op, xa[i], xb[i])) for op, y in zip(BIN_OPS, outs)
                 for i in range(len(pairs))])
    mb = ModuleBuilder("fold_check", jit.vector_lanes(), 1, False)
    mb.add_kernel(Kernel("fold_check", [xa, xb] + outs, body))
    jit.compile_ir(str(mb))
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    ys = [np.zeros(len(pairs), np.int64) for _ in outs]
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * (2 + len(ys)))(
        jit.function_address("fold_check"))
    fn(a.ctypes.data, b.ctypes.data, *[y.ctypes.data for y in ys])
    for op, y in zip(BIN_OPS, ys):
        folded = [fold_int(op, int(p), int(q), 64) for p, q in pairs]
        assert folded == y.tolist(), op


def test_unrolled_pixels_share_one_run_time_offset():
    """The pixels of an unrolled 2 x 6 tile, indexed (o * 2 + r // 6, t * 6 + r % 6), are one
    run-time offset plus a constant each (the unrolled variable substituted and the offset
    re-simplified): folded as written, each pixel had its own index arithmetic, which LLVM
    hoisted out of the enclosing loops as 12 live values (an AVX2 conv tile spilled them)."""
    x, y = Buffer("x", F32, (4, 24)), Buffer("y", F32, (2, 4, 12))
    acc = Buffer("acc", F32, (12,), "local")       # a register tile: unrolled here, not by LLVM
    o, t, r, r2 = Var("o"), Var("t"), Var("r"), Var("r2")
    body = For(o, 2, For(t, 4, Allocate(acc, seq(
        For(r, 12, Store(acc, (r,), x[o * 2 + r // 6, t * 6 + r % 6] * Const(2.0, F32)),
            "unrolled"),
        For(r2, 12, Store(y, (o, t, r2), acc[r2]), "unrolled")))))
    kernel = Kernel("tile_offsets", [x, y], body)
    xs = np.random.default_rng(3).standard_normal((4, 24)).astype(np.float32)
    a1, a2 = both(kernel, {"x": xs, "y": np.zeros((2, 4, 12), np.float32)})
    np.testing.assert_array_equal(a1["y"], a2["y"])
    np.testing.assert_array_equal(a2["y"], 2 * xs.reshape(2, 2, 4, 6).transpose(0, 2, 1, 3)
                                  .reshape(2, 4, 12))
    ir_text = compile_kernel(kernel).ir_text
    adds = ir_text.count(" = add i64 ")
    assert adds <= 2 * 12 + 6, adds          # per pixel: its x and y offsets (+ the loops)
