"""Lowerings added for full ONNX node coverage on llvm, vs the reference interpreter or numpy:
float16 (computed in float32, rounded per op like numpy) and float64 arithmetic, casts,
run-time weights/indices, ScatterElements, TopK, MaxPool Indices, Lp/MVN normalization,
DeformConv, float Mod, integer Pow, run-time BatchNormalization statistics, Pad wrap."""
import numpy as np
import pytest

import cnncc
from cnncc.ir import DType, Graph, TensorType, run_graph

RNG = np.random.default_rng(7)


def build(inputs: dict):
    """A graph with one input per (name -> array); returns (graph, feeds)."""
    g = Graph("t")
    for name, a in inputs.items():
        g.add_input(name, TensorType(DType.from_numpy(a.dtype), a.shape))
    return g, dict(inputs)


def run_both(g: Graph, feeds: dict, threads=(1, 2)):
    ref = run_graph(g, feeds)
    outs = []
    for t in threads:
        out = cnncc.compile(g, target="llvm", threads=t).run(feeds)
        for name in g.outputs:
            assert out[name].dtype == ref[name].dtype and out[name].shape == ref[name].shape
        outs.append(out)
    return ref, outs


def check(g: Graph, feeds: dict, tol: float = 1e-5, threads=(1, 2)):
    ref, outs = run_both(g, feeds, threads)
    for out in outs:
        for name in g.outputs:
            if ref[name].dtype.kind == "f":
                np.testing.assert_allclose(out[name], ref[name], rtol=tol, atol=tol)
            else:
                np.testing.assert_array_equal(out[name], ref[name])


def f16_ulps(a: np.ndarray, b: np.ndarray) -> int:
    ia = a.astype(np.float16).view(np.int16).astype(np.int64)
    ib = b.astype(np.float16).view(np.int16).astype(np.int64)
    return int(np.abs(ia - ib).max())


@pytest.mark.parametrize("op", ["Add", "Mul", "Div", "Sub", "Max"])
def test_float16_binary_is_numpy_exact(op):
    a = (RNG.standard_normal((3, 37)) * 10).astype(np.float16)
    b = (RNG.standard_normal((37,)) * 3).astype(np.float16)
    g, feeds = build({"a": a, "b": b})
    y, = g.add_node(op, ["a", "b"])
    g.outputs = [y]
    out = cnncc.compile(g, target="llvm").run(feeds)[y]
    fn = {"Add": np.add, "Mul": np.multiply, "Div": np.divide, "Sub": np.subtract,
          "Max": np.maximum}[op]
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, fn(a, b))


@pytest.mark.parametrize("op", ["Exp", "Sigmoid", "Softmax", "Celu", "ReduceSum"])
def test_float16_math_within_one_ulp(op):
    x = RNG.standard_normal((4, 33)).astype(np.float16)
    g, feeds = build({"x": x})
    y, = g.add_node(op, ["x"])
    g.outputs = [y]
    ref, (out,) = run_both(g, feeds, threads=(1,))
    assert f16_ulps(out[y], ref[y]) <= 1


def test_cast_float64_to_float16_rounds_once():
    # Values halfway between float16 neighbours, nudged by less than a float32 ulp: a double
    # rounding through float32 would get these wrong.
    h = np.arange(1, 2000, dtype=np.float16)
    up = np.nextafter(h, np.float16(np.inf))
    mid = (h.astype(np.float64) + up.astype(np.float64)) / 2
    x = np.concatenate([mid, mid + 1e-12 * mid, mid - 1e-12 * mid, [np.inf, -np.inf, np.nan,
                                                                     1e300, -1e-300, 0.0]])
    g, feeds = build({"x": x})
    y, = g.add_node("Cast", ["x"], {"to": int(DType.float16.to_onnx())})
    g.outputs = [y]
    out = cnncc.compile(g, target="llvm").run(feeds)[y]
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, x.astype(np.float16))


@pytest.mark.parametrize("op", ["Tanh", "Erf", "Softmax", "ReduceLogSumExp", "Gelu"])
def test_float64_is_native(op):
    x = RNG.standard_normal((3, 19))
    g, feeds = build({"x": x})
    y, = g.add_node(op, ["x"])
    g.outputs = [y]
    check(g, feeds, tol=1e-9)


@pytest.mark.parametrize("trans_a,trans_b,cshape", [(0, 0, (5,)), (1, 1, (3, 1)), (0, 1, ())])
def test_gemm_runtime_b(trans_a, trans_b, cshape):
    a = RNG.standard_normal((4, 3) if trans_a else (3, 4)).astype(np.float32)
    b = RNG.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32)
    c = RNG.standard_normal(cshape).astype(np.float32)
    g, feeds = build({"a": a, "b": b, "c": c})
    y, = g.add_node("Gemm", ["a", "b", "c"], {"transA": trans_a, "transB": trans_b,
                                              "alpha": 0.5, "beta": 2.0})
    g.outputs = [y]
    check(g, feeds, tol=1e-5)


@pytest.mark.parametrize("op,attrs,wshape", [
    ("Conv", {"pads": [1, 0, 2, 1], "strides": [2, 1]}, (6, 4, 3, 2)),
    ("Conv", {"group": 2, "dilations": [2, 1]}, (4, 2, 2, 3)),
    ("ConvTranspose", {"strides": [2, 2], "pads": [1, 0, 0, 1]}, (4, 3, 3, 2)),
    ("ConvTranspose", {"group": 2}, (4, 2, 2, 2)),
])
def test_conv_runtime_weights(op, attrs, wshape):
    x = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = RNG.standard_normal(wshape).astype(np.float32)
    nb = wshape[0] if op == "Conv" else wshape[1] * attrs.get("group", 1)
    bias = RNG.standard_normal((nb,)).astype(np.float32)
    g, feeds = build({"x": x, "w": w, "b": bias})
    y, = g.add_node(op, ["x", "w", "b"], attrs)
    g.outputs = [y]
    check(g, feeds, tol=1e-4)


def test_gather_runtime_indices():
    x = RNG.standard_normal((3, 5, 4)).astype(np.float32)
    i = np.array([[0, -1], [4, 2]], np.int64)
    e = RNG.integers(-3, 3, (3, 2, 4)).astype(np.int32)
    g, feeds = build({"x": x, "i": i, "e": e})
    y, = g.add_node("Gather", ["x", "i"], {"axis": 1})
    z, = g.add_node("GatherElements", ["x", "e"], {"axis": 0})
    g.outputs = [y, z]
    check(g, feeds)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements(reduction):
    data = RNG.standard_normal((3, 4)).astype(np.float32)
    idx = np.array([[1, -1, 1], [0, 0, 3]], np.int64)       # repeated targets
    upd = RNG.standard_normal((2, 3)).astype(np.float32)
    g, feeds = build({"d": data, "i": idx, "u": upd})
    y, = g.add_node("ScatterElements", ["d", "i", "u"], {"axis": 1, "reduction": reduction})
    g.outputs = [y]
    check(g, feeds)


@pytest.mark.parametrize("largest,axis", [(1, -1), (0, 0), (1, 1)])
def test_topk_ties_and_nan(largest, axis):
    x = RNG.integers(0, 4, (5, 6)).astype(np.float32)
    x[1, 2] = np.nan
    g, feeds = build({"x": x})
    k = g.add_param("k", np.array([3], np.int64))
    v, i = g.add_node("TopK", ["x", k], {"largest": largest, "axis": axis}, outputs=2)
    g.outputs = [v, i]
    check(g, feeds)


@pytest.mark.parametrize("seed", range(12))
def test_topk_small_slices_across_columns(seed):
    """Small slices (fully unrolled by LLVM) vectorized across the columns: the swap through
    the output buffers was miscompiled (a repeated index), e.g. column 1 of seed 0's 5 x 6
    input, [2, 0, 2, 3, 3], gave indices [1, 1, 2] instead of [1, 0, 2]."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (5, 6)).astype(np.float32)
    x[1, 2] = np.nan
    for largest in (0, 1):
        g, feeds = build({"x": x})
        k = g.add_param("k", np.array([3], np.int64))
        v, i = g.add_node("TopK", ["x", k], {"largest": largest, "axis": 0}, outputs=2)
        g.outputs = [v, i]
        check(g, feeds)


@pytest.mark.parametrize("dtype,order", [(np.float32, 0), (np.float32, 1), (np.int8, 0)])
def test_max_pool_indices(dtype, order):
    x = (RNG.standard_normal((2, 3, 7, 6)) * 20).astype(dtype)
    g, feeds = build({"x": x})
    y, i = g.add_node("MaxPool", ["x"], {"kernel_shape": [3, 2], "pads": [1, 1, 1, 0],
                                         "strides": [2, 2], "storage_order": order},
                      outputs=2)
    g.outputs = [y, i]
    check(g, feeds)


@pytest.mark.parametrize("op,attrs", [("LpNormalization", {"p": 1, "axis": 0}),
                                      ("LpNormalization", {"p": 2}),
                                      ("MeanVarianceNormalization", {}),
                                      ("MeanVarianceNormalization", {"axes": [1, 3]})])
def test_normalizations(op, attrs):
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[0, :, 1, :] = 0.0
    g, feeds = build({"x": x})
    y, = g.add_node(op, ["x"], attrs)
    g.outputs = [y]
    check(g, feeds, tol=1e-5)


def test_deform_conv_with_mask_and_groups():
    x = RNG.standard_normal((1, 4, 5, 6)).astype(np.float32)
    w = RNG.standard_normal((4, 2, 2, 3)).astype(np.float32)
    off = (RNG.standard_normal((1, 2 * 2 * 6, 6, 4)) * 1.5).astype(np.float32)
    mask = RNG.random((1, 2 * 6, 6, 4)).astype(np.float32)
    b = RNG.standard_normal((4,)).astype(np.float32)
    g, feeds = build({"x": x, "w": w, "off": off, "b": b, "m": mask})
    y, = g.add_node("DeformConv", ["x", "w", "off", "b", "m"],
                    {"group": 2, "offset_group": 2, "pads": [1, 0, 1, 0]})
    g.outputs = [y]
    check(g, feeds, tol=1e-4)


def test_float_mod_and_int_pow():
    a = np.array([5.5, -5.5, 5.5, -5.5, 0.0, -0.0, 3.0, np.inf, 2.0], np.float64)
    b = np.array([2.0, 2.0, -2.0, -2.0, -3.0, 3.0, 0.0, 2.0, np.inf], np.float64)
    p = np.array([2, 3, -1, 0, 5], np.int64)
    q = np.array([3, 2, 2, 7, 1], np.int64)
    g, feeds = build({"a": a, "b": b, "p": p, "q": q})
    m, = g.add_node("Mod", ["a", "b"], {"fmod": 0})
    w, = g.add_node("Pow", ["p", "q"])
    g.outputs = [m, w]
    out = cnncc.compile(g, target="llvm").run(feeds)
    with np.errstate(invalid="ignore"):
        expect = np.mod(a, b)
    np.testing.assert_array_equal(out[m], expect)
    np.testing.assert_array_equal(np.signbit(out[m]), np.signbit(expect))
    np.testing.assert_array_equal(out[w], p ** q)


def test_batch_norm_runtime_statistics_and_wrap_pad():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    s, bb, mu = (RNG.standard_normal(3).astype(np.float32) for _ in range(3))
    var = RNG.random(3).astype(np.float32) + 0.5
    g, feeds = build({"x": x, "s": s, "bb": bb, "mu": mu, "var": var})
    y, = g.add_node("BatchNormalization", ["x", "s", "bb", "mu", "var"], {"epsilon": 1e-3})
    pads = g.add_param("pads", np.array([0, 0, 2, 3, 0, 0, 1, 7], np.int64))
    z, = g.add_node("Pad", [y, pads], {"mode": "wrap"})
    g.outputs = [y, z]
    check(g, feeds, tol=1e-5)
