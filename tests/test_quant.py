"""int8: the quantized ops against onnxruntime (node by node and in QDQ / QOperator models made
by onnxruntime's quantize_static), the fuse_quantized pass, the int8 conv kernels on the
machine's ISA and on AVX2 (CNNCC_FEATURES, in a child process), and `cnncc quantize`.

Bounds, per op: QuantizeLinear, DequantizeLinear, ConvInteger, MatMulInteger, QLinearAdd and
QLinearGlobalAveragePool on the reference target equal onnxruntime; QLinearConv / QLinearMatMul
requantize in float (ONNX: float64, onnxruntime: float32) so they may differ by one step at a
rounding tie; the native int8 conv (float32 requantization) is within one output step of both.
"""
from __future__ import annotations

import os
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper as h, numpy_helper as nh

import cnncc
from cnncc.ir.loop import DOT2_FNS, DOT4_FNS

from isa_child import run_for_features

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"
AVX512_NO_VNNI = "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx2,+fma,+avx,+sse4.2," \
    "-avx512vnni,-avxvnni"
# Whole quantized nets: an activation one step off at a rounding tie (float conv sums in
# another order, float32 requantization) moves later layers by a few steps (random zoo weights
# amplify it: tiny_mobilenet's head differs from the reference in up to 14 steps at opt 0
# already, where no int8 kernel runs); outputs agree within 3% of their largest magnitude.
MODEL_TOL = 0.03
NCHW_ONLY = frozenset({"alter_layout_int8"})     # the QConvs as fuse_quantized leaves them


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _model(nodes, inputs, outputs, inits=(), ms=False) -> onnx.ModelProto:
    g = h.make_graph(nodes, "q", inputs, outputs, list(inits))
    ops = [h.make_opsetid("", 21)] + ([h.make_opsetid("com.microsoft", 1)] if ms else [])
    m = h.make_model(g, opset_imports=ops)
    m.ir_version = 10
    return m


def _vi(name, dtype, shape):
    return h.make_tensor_value_info(name, dtype, list(shape))


def _c(name, value):
    return nh.from_array(np.asarray(value), name)


def _steps(a, b) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0))


# ---- node tests on the reference target --------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_dequantize_match_onnxruntime(dtype, per_axis):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 4, 3, 5)) * 40).astype(np.float32)
    x[0, 0, 0, :3] = [1e9, -1e9, 0.5]                       # saturation and a tie
    info = np.iinfo(dtype)
    scale = (np.array([0.5, 0.25, 1.0, 0.125], np.float32) if per_axis
             else np.array(0.5, np.float32))
    zp = (np.array([info.min, info.max, 0, 3], dtype) if per_axis else np.array(info.max // 3, dtype))
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    m = _model(nodes, [_vi("x", T.FLOAT, x.shape)],
               [_vi("q", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), x.shape),
                _vi("y", T.FLOAT, x.shape)], [_c("s", scale), _c("z", zp)])
    want = _ort(m, {"x": x})
    for target in ("reference", "llvm"):
        got = cnncc.compile(m, target=target, cache=False).run({"x": x})
        np.testing.assert_array_equal(got["q"], want[0], err_msg=target)
        np.testing.assert_array_equal(got["y"], want[1], err_msg=target)


def _qconv_model(x_dt, xs, ws, group=1, pads=(1, 1, 1, 1), strides=(1, 1), per_channel=True,
                 seed=0, extreme=False):
    rng = np.random.default_rng(seed)
    xi = np.iinfo(x_dt)
    m = ws[0]
    w = rng.integers(-128, 128, ws).astype(np.int8)
    if extreme:
        w[:] = -128
    w_scale = (rng.uniform(0.001, 0.01, m) if per_channel else np.array(0.004)).astype(np.float32)
    w_zp = np.zeros(m if per_channel else (), np.int8)
    x_zp = np.array(xi.max if extreme else (xi.min + xi.max) // 2 + 7, x_dt)
    b = rng.integers(-5000, 5000, m).astype(np.int32)
    inits = [_c("xs", np.float32(0.05)), _c("xz", x_zp), _c("w", w), _c("ws", w_scale),
             _c("wz", w_zp), _c("ys", np.float32(0.4 if not extreme else 5.0)),
             _c("yz", np.array(xi.min + 30, x_dt)), _c("b", b)]
    node = h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                       ["y"], pads=list(pads), strides=list(strides), group=group)
    tdt = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x_dt))
    oh = (xs[2] + pads[0] + pads[2] - ws[2]) // strides[0] + 1
    ow = (xs[3] + pads[1] + pads[3] - ws[3]) // strides[1] + 1
    model = _model([node], [_vi("x", tdt, xs)], [_vi("y", tdt, (xs[0], m, oh, ow))], inits)
    x = rng.integers(xi.min, xi.max + 1, xs).astype(x_dt)
    if extreme:
        x[:] = 0 if x_dt == np.uint8 else xi.min      # |x - zp| at its largest, sums saturate
    return model, x


QCONV_CASES = {
    "dense3x3_u8": dict(x_dt=np.uint8, xs=(1, 8, 9, 7), ws=(16, 8, 3, 3)),
    "dense3x3_s8_stride2": dict(x_dt=np.int8, xs=(1, 5, 9, 9), ws=(12, 5, 3, 3),
                                strides=(2, 2), per_channel=False),
    "pointwise": dict(x_dt=np.uint8, xs=(1, 24, 5, 6), ws=(40, 24, 1, 1), pads=(0, 0, 0, 0)),
    "depthwise": dict(x_dt=np.uint8, xs=(1, 16, 7, 7), ws=(16, 1, 3, 3), group=16),
    "depthwise_s2": dict(x_dt=np.int8, xs=(1, 16, 9, 11), ws=(16, 1, 3, 3), group=16,
                         strides=(2, 2)),
    "grouped": dict(x_dt=np.int8, xs=(1, 8, 6, 6), ws=(12, 2, 3, 3), group=4),
    "extreme_u8": dict(x_dt=np.uint8, xs=(1, 64, 4, 4), ws=(8, 64, 3, 3), extreme=True),
    "extreme_s8": dict(x_dt=np.int8, xs=(1, 64, 4, 4), ws=(8, 64, 3, 3), extreme=True),
}


@pytest.mark.parametrize("case", sorted(QCONV_CASES))
def test_qlinearconv_reference_and_llvm_match_onnxruntime(case):
    model, x = _qconv_model(**QCONV_CASES[case])
    want = _ort(model, {"x": x})[0]
    for target in ("reference", "llvm"):
        got = cnncc.compile(model, target=target, cache=False)(x)[0]
        assert got.dtype == want.dtype
        assert _steps(got, want) <= 1, (target, _steps(got, want))
    if case.startswith("extreme"):       # the requantization saturates somewhere
        assert (want == np.iinfo(want.dtype).min).any() or (want == np.iinfo(want.dtype).max).any()


def test_integer_ops_match_onnxruntime():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (1, 3, 6, 6)).astype(np.uint8)
    a = rng.integers(0, 256, (4, 7)).astype(np.uint8)
    nodes = [h.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["ci"], pads=[1, 1, 1, 1]),
             h.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["mi"]),
             h.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["qm"])]
    inits = [_c("w", rng.integers(0, 256, (5, 3, 3, 3)).astype(np.uint8)),
             _c("xz", np.uint8(128)), _c("wz", np.uint8(100)),
             _c("b", rng.integers(-128, 128, (7, 5)).astype(np.int8)), _c("az", np.uint8(3)),
             _c("bz", np.int8(-2)), _c("as", np.float32(0.02)), _c("bs", np.float32(0.03)),
             _c("ys", np.float32(0.05)), _c("yz", np.uint8(128))]
    m = _model(nodes, [_vi("x", T.UINT8, x.shape), _vi("a", T.UINT8, a.shape)],
               [_vi("ci", T.INT32, (1, 5, 6, 6)), _vi("mi", T.INT32, (4, 5)),
                _vi("qm", T.UINT8, (4, 5))], inits)
    want = _ort(m, {"x": x, "a": a})
    got = cnncc.compile(m, target="reference").run({"x": x, "a": a})
    np.testing.assert_array_equal(got["ci"], want[0])
    np.testing.assert_array_equal(got["mi"], want[1])
    assert _steps(got["qm"], want[2]) <= 1


def test_microsoft_qlinear_add_and_global_average_pool_match_onnxruntime():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (1, 4, 5, 5)).astype(np.uint8)
    b = rng.integers(0, 256, (1, 4, 5, 5)).astype(np.uint8)
    nodes = [h.make_node("QLinearAdd", ["a", "s1", "z1", "b", "s2", "z2", "s3", "z3"], ["c"],
                         domain="com.microsoft"),
             h.make_node("QLinearGlobalAveragePool", ["c", "s3", "z3", "s1", "z1"], ["g"],
                         domain="com.microsoft")]
    inits = [_c("s1", np.float32(0.03)), _c("z1", np.uint8(10)), _c("s2", np.float32(0.07)),
             _c("z2", np.uint8(200)), _c("s3", np.float32(0.05)), _c("z3", np.uint8(128))]
    m = _model(nodes, [_vi("a", T.UINT8, a.shape), _vi("b", T.UINT8, b.shape)],
               [_vi("c", T.UINT8, a.shape), _vi("g", T.UINT8, (1, 4, 1, 1))], inits, ms=True)
    want = _ort(m, {"a": a, "b": b})
    got = cnncc.compile(m, target="reference").run({"a": a, "b": b})
    np.testing.assert_array_equal(got["c"], want[0])
    assert _steps(got["g"], want[1]) <= 1


def test_quantized_op_errors_name_the_problem():
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, block_size=2)]
    m = _model(nodes, [_vi("x", T.FLOAT, (1, 4))], [_vi("q", T.UINT8, (1, 4))],
               [_c("s", np.ones((1, 2), np.float32)), _c("z", np.zeros((1, 2), np.uint8))])
    with pytest.raises(cnncc.CompileError, match="block"):
        cnncc.compile(m, target="reference")
    bad = h.make_node("QLinearAdd", ["a", "s", "z", "a", "s", "z", "s", "z"], ["c"])  # no domain
    m = _model([bad], [_vi("a", T.UINT8, (1, 4))], [_vi("c", T.UINT8, (1, 4))],
               [_c("s", np.float32(1)), _c("z", np.uint8(0))])
    with pytest.raises(cnncc.CompileError, match="QLinearAdd"):
        cnncc.compile(m, target="reference")


def _dot4_kernel(fn: str, n: int, splat: bool):
    """y[i] = fn(c[i], a[i] (or a[0] for every lane: a broadcast word), w[i])."""
    from cnncc.ir import DType
    from cnncc.ir.loop import Buffer, Call, Const, For, Kernel, Store, Var
    i32 = DType.int32
    acc, av, wv, y = (Buffer(k, i32, (n,)) for k in "cawy")
    i = Var("i")
    a = av[Const(0)] if splat else av[i]
    return Kernel("d", [y, acc, av, wv],
                  For(i, n, Store(y, (i,), Call(fn, (acc[i], a, wv[i]), i32)), "vectorized"))


def _compiled_in_child(kernel, lanes: int, arrays: dict, seconds: float) -> np.ndarray:
    """y of ``kernel`` compiled and run in a forked child that must finish within ``seconds``
    (LLVM's instruction selection once looped forever on a broadcast int8 word)."""
    import multiprocessing
    from cnncc.backends.llvm.kernels import compile_kernel

    def child(conn):
        got = dict(arrays)
        compile_kernel(kernel, lanes=lanes)(got)
        conn.send(got["y"])
    parent, end = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=child, args=(end,))
    proc.start()
    ready = parent.poll(seconds)
    if not ready:
        proc.kill()
    proc.join()
    assert ready, f"{kernel.name}: compiling one dot4 kernel took over {seconds} s"
    return parent.recv()


@pytest.mark.parametrize("splat", [False, True], ids=["per_lane", "broadcast"])
@pytest.mark.parametrize("fn", DOT4_FNS)
def test_dot4_calls_match_the_interpreter_at_extreme_bytes(fn, splat):
    """The loop IR's 8-bit x s8 dots (vpdpbusd, vpmaddubsw + vpmaddwd, generic; dot4_s8s8*
    shift int8 bytes of a to uint8 first; dot4_i8i8, __dp4a's, takes them signed) on 8 and 16 lanes and the scalar remainder against
    the interpreter and numpy: bytes 0/255 (int8: -128/127) with -128/127 (-64/64 for the AVX2
    form, whose operands the lowering keeps in that range); a per lane or one word broadcast
    (as the convs read it), each compile bounded in time."""
    from cnncc.ir.loop_interp import run_kernel
    t = cnncc.host_target(1)
    if fn.endswith("vnni") and not t.vnni or fn.endswith("avx2") and "avx2" not in t.flags:
        pytest.skip(f"{fn} needs a CPU with {fn.rsplit('_', 1)[1]} (this one: {t.isa})")
    n = 37
    lo, hi = (-64, 64) if fn.endswith("avx2") else (-128, 127)
    signed = fn.startswith(("dot4_s8", "dot4_i8"))    # a's bytes int8 (dot4_i8i8: not shifted)
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (n, 4)).astype(np.int8) if signed else \
        rng.integers(0, 256, (n, 4)).astype(np.uint8)
    w = rng.integers(lo, hi + 1, (n, 4)).astype(np.int8)
    a[:3] = 127 if signed else 255
    a[3:5] = -128 if signed else 0
    w[0], w[1], w[2], w[3] = lo, hi, [lo, hi, lo, hi], hi
    arrays = {"c": rng.integers(-2**24, 2**24, n).astype(np.int32),
              "a": np.ascontiguousarray(a.view(np.int32)[:, 0]),
              "w": w.view(np.int32)[:, 0].copy(), "y": np.zeros(n, np.int32)}
    ua = a.astype(np.int64) + (128 if fn.startswith("dot4_s8") else 0)     # what is multiplied
    want = arrays["c"] + ((ua[:1] if splat else ua) * w).sum(1)
    k = _dot4_kernel(fn, n, splat)
    interp = dict(arrays, y=np.zeros(n, np.int32))
    run_kernel(k, interp)
    np.testing.assert_array_equal(interp["y"], want)
    for lanes in (8, 16) if t.lanes >= 16 else (8,):
        got = _compiled_in_child(k, lanes, arrays, 60.0)
        np.testing.assert_array_equal(got, want, err_msg=f"{lanes} lanes")


def _matches_on_int16_pair_widths(kernel, arrays: dict, want: np.ndarray) -> None:
    """y of ``kernel`` equals ``want`` in the interpreter and compiled with 8 lanes (and 16
    where the host has AVX-512BW), each width in a child process."""
    from cnncc.ir.loop_interp import run_kernel
    interp = dict(arrays, y=np.zeros(len(want), np.int32))
    run_kernel(kernel, interp)
    np.testing.assert_array_equal(interp["y"], want)
    t = cnncc.host_target(1)
    for lanes in (8, 16) if t.lanes >= 16 and "avx512bw" in t.flags else (8,):
        got = _compiled_in_child(kernel, lanes, arrays, 60.0)
        np.testing.assert_array_equal(got, want, err_msg=f"{lanes} lanes")


@pytest.mark.parametrize("splat", [False, True], ids=["per_lane", "broadcast"])
@pytest.mark.parametrize("fn", DOT2_FNS)
def test_dot2_calls_match_the_interpreter_at_extreme_values(fn, splat):
    """The int16 pair dots (vpmaddwd on 8 and 16 lanes, generic on the scalar remainder) against
    the interpreter and numpy: a's bytes 0/255 (dot2_i16i16: a's int16 halves at
    -32768/32767) with int16 halves of b at -32768/32767 and 0, per lane or one broadcast
    word."""
    t = cnncc.host_target(1)
    if "avx2" not in t.flags:
        pytest.skip(f"{fn} is lowered for AVX2 and AVX-512BW targets (this one: {t.isa})")
    n = 37
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (n, 4)).astype(np.uint8)
    w = rng.integers(-2**15, 2**15, (n, 2)).astype(np.int16)
    a[:3], a[3:5] = 255, 0
    w[0], w[1], w[2], w[3], w[4] = -2**15, 2**15 - 1, [-2**15, 2**15 - 1], 0, 2**15 - 1
    arrays = {"c": rng.integers(-2**24, 2**24, n).astype(np.int32),
              "a": np.ascontiguousarray(a.view(np.int32)[:, 0]),
              "w": w.view(np.int32)[:, 0].copy(), "y": np.zeros(n, np.int32)}
    ua = a.astype(np.int64)[:, int(fn.endswith("odd"))::2]      # bytes 0, 2 or 1, 3
    if fn == "dot2_i16i16":
        a16 = rng.integers(-2**15, 2**15, (n, 2)).astype(np.int16)
        a16[:3], a16[3:5] = 2**15 - 1, -2**15
        arrays["a"] = np.ascontiguousarray(a16.view(np.int32)[:, 0])
        ua = a16.astype(np.int64)
    prod = (ua[:1] if splat else ua) * w
    wrap = lambda v: (v + 2**31) % 2**32 - 2**31      # noqa: E731 (vpmaddwd wraps -2^15 * -2^15 x 2)
    want = wrap(arrays["c"] + prod.sum(1)).astype(np.int32)
    k = _dot4_kernel(fn, n, splat)
    _matches_on_int16_pair_widths(k, arrays, want)


@pytest.mark.parametrize("types", [("uint8", "uint8"), ("int8", "int8"), ("uint8", "int8")])
def test_pair_dot_matches_the_interpreter_at_extreme_values(types):
    """dot2_pair (two depthwise taps a vpmaddwd: a0's and a1's bytes interleaved and widened by
    their own type) against the interpreter and numpy at the bytes' extremes and int16 weight
    halves at -32768 / 32767 / 0, on 8 and 16 lanes and the scalar remainder (37 lanes)."""
    from cnncc.ir import DType
    from cnncc.ir.loop import PAIR_DOT, Buffer, Call, For, Kernel, Store, Var
    t = cnncc.host_target(1)
    if "avx2" not in t.flags:
        pytest.skip(f"dot2_pair is lowered for AVX2 and AVX-512BW targets (this one: {t.isa})")
    n, i32 = 37, DType.int32
    rng = np.random.default_rng(3)
    dts = [getattr(np, d) for d in types]
    a0, a1 = (rng.integers(np.iinfo(d).min, np.iinfo(d).max + 1, n).astype(d) for d in dts)
    a0[:3], a1[:3] = np.iinfo(dts[0]).max, np.iinfo(dts[1]).min
    a0[3:5], a1[3:5] = np.iinfo(dts[0]).min, np.iinfo(dts[1]).max
    w = rng.integers(-2**15, 2**15, (n, 2)).astype(np.int16)
    w[0], w[1], w[2], w[3], w[4] = -2**15, 2**15 - 1, [-2**15, 2**15 - 1], 0, [2**15 - 1, -2**15]
    arrays = {"c": rng.integers(-2**24, 2**24, n).astype(np.int32), "a0": a0, "a1": a1,
              "w": w.view(np.int32)[:, 0].copy(), "y": np.zeros(n, np.int32)}
    want = (arrays["c"] + a0.astype(np.int64) * w[:, 0] + a1.astype(np.int64) * w[:, 1]
            ).astype(np.int32)
    c, y, wv = (Buffer(k, i32, (n,)) for k in "cyw")
    b0, b1 = (Buffer(k, DType(d), (n,)) for k, d in zip(("a0", "a1"), types))
    i = Var("i")
    k = Kernel("p", [y, c, b0, b1, wv], For(i, n, Store(y, (i,), Call(
        PAIR_DOT, (c[i], b0[i], b1[i], wv[i]), i32)), "vectorized"))
    _matches_on_int16_pair_widths(k, arrays, want)


# ---- whole models quantized by onnxruntime --------------------------------------------------------

def _float_model(path):
    rng = np.random.default_rng(0)
    c, m = 8, 16
    inits = [_c("w1", rng.normal(0, .3, (m, c, 3, 3)).astype(np.float32)),
             _c("b1", rng.normal(0, .1, (m,)).astype(np.float32)),
             _c("w2", rng.normal(0, .2, (m, m, 1, 1)).astype(np.float32)),
             _c("b2", rng.normal(0, .1, (m,)).astype(np.float32)),
             _c("w3", rng.normal(0, .3, (m, 1, 3, 3)).astype(np.float32)),
             _c("wf", rng.normal(0, .2, (m, 10)).astype(np.float32))]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             h.make_node("Add", ["c2", "r1"], ["a"]),
             h.make_node("Relu", ["a"], ["r2"]),
             h.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], group=m,
                         strides=[2, 2]),
             h.make_node("GlobalAveragePool", ["c3"], ["g"]),
             h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("MatMul", ["f", "wf"], ["y"])]
    g = h.make_graph(nodes, "t", [_vi("x", T.FLOAT, (1, c, 10, 10))], [_vi("y", T.FLOAT, (1, 10))],
                     inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def ort_quantized(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    _float_model(d / "f.onnx")
    data = [{"x": np.random.default_rng(i).normal(0, 1, (1, 8, 10, 10)).astype(np.float32)}
            for i in range(6)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)
    out = {}
    for fmt in ("QDQ", "QOperator"):
        for act in ("QUInt8", "QInt8"):
            path = d / f"{fmt}_{act}.onnx"
            quantization.quantize_static(
                str(d / "f.onnx"), str(path), Reader(), per_channel=True,
                quant_format=getattr(quantization.QuantFormat, fmt),
                activation_type=getattr(quantization.QuantType, act),
                weight_type=quantization.QuantType.QInt8)
            out[f"{fmt}_{act}"] = path
    return out


@pytest.mark.parametrize("kind", ["QDQ_QUInt8", "QDQ_QInt8", "QOperator_QUInt8",
                                  "QOperator_QInt8"])
def test_ort_quantized_models_match_onnxruntime(ort_quantized, kind):
    path = ort_quantized[kind]
    x = np.random.default_rng(99).normal(0, 1, (1, 8, 10, 10)).astype(np.float32)
    want = _ort(onnx.load(path), {"x": x})[0]
    out_scale = float(onnx.numpy_helper.to_array(next(
        t for t in onnx.load(path).graph.initializer if t.name == "y_scale")))
    ref = cnncc.compile(path, target="reference")(x)[0]
    assert np.abs(ref - want).max() <= out_scale * 1.001
    got = cnncc.compile(path, cache=False)(x)[0]        # QOperator: gemm_int8, pool_int8
    assert np.abs(got - want).max() <= 2 * out_scale * 1.001


def test_fuse_quantized_makes_one_qconv_per_conv_chain(ort_quantized):
    from cnncc.passes import PassContext, run_pipeline
    g = run_pipeline(cnncc.load_graph(ort_quantized["QDQ_QUInt8"]),     # QConvs, NCHW
                     PassContext(machine=cnncc.host_target(1), skip=NCHW_ONLY))
    ops = [n.op for n in g.nodes]
    assert ops.count("QConv") == 3 and "Conv" not in ops and "Add" not in ops
    residual = [n for n in g.nodes if n.op == "QConv" and len(n.inputs) > 9]
    assert len(residual) == 1            # the Add (and its Q/DQ) fused into the 1x1 conv
    assert g.types[residual[0].outputs[0]].dtype.np == np.uint8


def test_byte_dot_path_follows_the_target_and_the_weights():
    """Without VNNI, weights whose vpmaddubsw pairs cannot saturate (7-bit) take one
    vpmaddubsw call a word; 8-bit weights whose split would run on most words take the int16
    pairs (vpmaddwd), on AVX2 and on AVX-512BW; VNNI takes vpdpbusd whatever the weights."""
    from types import SimpleNamespace
    from cnncc.ir.target import Target
    from cnncc.lower.conv_int8_dot import dot_cycles, dot_plan, split_share
    rng = np.random.default_rng(3)
    seven = rng.integers(-63, 64, (32, 64, 3, 3))
    eight = rng.integers(-128, 128, (32, 64, 3, 3))
    bias = np.zeros(32, np.int64)

    def plan(features: str, w: np.ndarray) -> str:
        t = Target.from_features(features, cpu="znver4", threads=1)
        return dot_plan(SimpleNamespace(target=t, gpu=False, lanes=t.lanes), w, 64, 32, bias, 3)
    assert split_share(seven, 8) == 0.0 and split_share(eight, 8) > 0.9
    assert plan(AVX2, seven) == "dot4_u8s8_avx2" and plan(AVX2, eight) == "dot2_u8s16"
    assert plan(AVX512_NO_VNNI, seven) == plan(AVX512_NO_VNNI, eight) == "dot2_u8s16"
    assert plan(AVX512_NO_VNNI + ",+avx512vnni", eight) == "dot4_u8s8_vnni"
    # The crossover: the split path wins while few of its words run twice (per-tensor 8-bit
    # weights), later on 3 vector pipes than on 4, later without the int16 copy.
    assert dot_cycles("dot4_u8s8_avx2", 2, 4, 0.2) < dot_cycles("dot2_i16i16", 2, 4) \
        < dot_cycles("dot4_u8s8_avx2", 2, 4, 0.3) < dot_cycles("dot2_u8s16", 2, 4)
    assert dot_cycles("dot4_u8s8_avx2", 2, 3, 0.4) < dot_cycles("dot2_i16i16", 2, 3) \
        < dot_cycles("dot4_u8s8_avx2", 2, 3, 0.6)


@pytest.mark.parametrize("features", [AVX2, AVX512_NO_VNNI], ids=["avx2", "avx512_no_vnni"])
def test_int8_conv_without_vnni_matches_onnxruntime(ort_quantized, features):
    """The same int8 kernels compiled for AVX2 (8 lanes, 16 registers: vpmaddubsw, or vpmaddwd
    on int16 pairs for the 8-bit extreme weights) and for AVX-512 without VNNI (16 lanes,
    vpmaddwd) in a child process."""
    want_isa = "avx2" if features == AVX2 else "avx512"
    if want_isa == "avx512" and "avx512bw" not in cnncc.host_target(1).flags:
        pytest.skip(f"AVX-512BW code cannot run here ({cnncc.host_target(1).isa})")
    cases = {k: QCONV_CASES[k] for k in ("dense3x3_u8", "depthwise", "extreme_u8",
                                         "extreme_s8", "pointwise")}
    code = textwrap.dedent(f"""
        import json, sys, numpy as np, cnncc
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_quant import _qconv_model, _ort, _steps, QCONV_CASES
        out = {{"isa": cnncc.host_target(1).isa}}
        for name in {sorted(cases)!r}:
            model, x = _qconv_model(**QCONV_CASES[name])
            got = cnncc.compile(model, threads=1)(x)[0]
            out[name] = _steps(got, _ort(model, {{"x": x}})[0])
        x = np.random.default_rng(99).normal(0, 1, (1, 8, 10, 10)).astype(np.float32)
        p = {str(ort_quantized["QDQ_QUInt8"])!r}
        out["model"] = float(np.abs(cnncc.compile(p)(x)[0] - _ort(__import__("onnx").load(p),
                                                               {{"x": x}})[0]).max())
        print(json.dumps(out))
    """)
    out = run_for_features(code, features, 600)
    assert out.pop("isa") == want_isa
    assert out.pop("model") < 0.1
    assert all(v <= 1 for v in out.values()), out


# ---- cnncc quantize ----------------------------------------------------------------------------------

def test_cnncc_quantize_writes_qdq_that_onnxruntime_runs(tmp_path, capsys):
    from cnncc.dsl import zoo
    net = zoo.tiny_resnet()
    data = np.random.default_rng(4).standard_normal((6,) + net.input_shapes[0][1:]) \
        .astype(np.float32)
    np.savez(tmp_path / "cal.npz", data=data)
    from cnncc.cli import main
    out = tmp_path / "q.onnx"
    assert main(["quantize", "zoo:tiny_resnet", "-o", str(out), "--calibration",
                 str(tmp_path / "cal.npz"), "--per-channel"]) == 0
    err = capsys.readouterr().err
    assert "top-1 agreement" in err and "5/5" in err
    model = onnx.load(out)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    w = [t for t in model.graph.initializer if t.name.endswith("_w_quantized")]
    assert w and all(t.data_type == T.INT8 for t in w)
    x = np.random.default_rng(5).standard_normal(net.input_shapes[0]).astype(np.float32)
    want = _ort(model, {model.graph.input[0].name: x})[0]
    got = cnncc.compile(str(out), cache=False)(x)[0]
    fp32 = cnncc.compile(net)(x)[0]
    assert np.abs(got - want).max() <= MODEL_TOL * np.abs(want).max()
    assert np.linalg.norm(got - fp32) / np.linalg.norm(fp32) < 0.1     # int8 close to fp32


def test_quantize_api_and_dsl_and_bad_calibration(tmp_path):
    from cnncc.dsl import zoo
    net = zoo.tiny_mobilenet()
    proto, report = cnncc.quantize(net, calibration=None, samples=5, method="percentile",
                                   verbose=False)
    assert report.held_out == 1 and report.calibrated == 4 and report.convs > 0
    assert 0 <= report.top1_agreement <= 1 and report.rel_error < 0.5
    # ReLU6 (Clip(0, 6)) and depthwise convs fused into QConvs; the int8 model agrees with
    # onnxruntime running the same QDQ file.
    from cnncc.passes import PassContext, run_pipeline
    g = run_pipeline(cnncc.load_graph(proto), PassContext(machine=cnncc.host_target(1),
                                                          skip=NCHW_ONLY))
    qconvs = [n for n in g.nodes if n.op == "QConv"]
    assert any(n.attrs["relu_max"] == 6.0 for n in qconvs)
    assert any(n.attrs.get("group", 1) > 1 for n in qconvs)
    assert not any(n.op in ("Conv", "Clip") for n in g.nodes)
    x = np.random.default_rng(8).standard_normal(net.input_shapes[0]).astype(np.float32)
    want = _ort(proto, {proto.graph.input[0].name: x})[0]
    got = cnncc.compile(proto, cache=False)(x)[0]
    assert np.abs(got - want).max() <= MODEL_TOL * np.abs(want).max()
    small = net.quantize(None, samples=3, verbose=False, reduce_range=True)
    assert isinstance(small, onnx.ModelProto)
    w7 = [onnx.numpy_helper.to_array(t) for t in small.graph.initializer
          if t.name.endswith("_w_quantized")]
    assert w7 and max(int(np.abs(w.astype(np.int32)).max()) for w in w7) == 63
    with pytest.raises(cnncc.InputError, match="shape"):
        cnncc.quantize(net, calibration=np.zeros((4, 3, 5, 5), np.float32), verbose=False)
    with pytest.raises(cnncc.InputError, match="method"):
        cnncc.quantize(net, method="kl", verbose=False)
