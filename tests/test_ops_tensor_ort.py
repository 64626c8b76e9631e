"""Non-convolution ops against onnxruntime: randomized (hypothesis) and parametrized one-node
models, built both as a cnncc graph (inference + numpy reference) and as an ONNX model.

Where onnxruntime departs from the ONNX spec/reference in a corner, the test says so and keeps
out of that corner; cnncc follows the spec there.
"""
from __future__ import annotations

import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from cnncc.ir import Graph
from cnncc.ir.dtypes import DType
from cnncc.ir.interpreter import run_graph
from cnncc.ir.types import TensorType

F32 = DType.float32


def graph_with(inputs: dict[str, tuple]) -> Graph:
    g = Graph("t")
    for name, (dtype, shape) in inputs.items():
        g.add_input(name, TensorType(dtype, shape))
    return g


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def run_both(op: str, x: np.ndarray, consts: list[np.ndarray | None], attrs: dict,
             n_out: int = 1) -> None:
    """Build op(x, *consts) as a cnncc graph and as an ONNX model; compare with onnxruntime."""
    g = graph_with({"x": (DType.from_numpy(x.dtype), x.shape)})
    names = ["x"]
    inits = []
    for k, c in enumerate(consts):
        if c is None:
            names.append("")
            continue
        names.append(g.add_param(f"c{k}", c))
        inits.append(onnx.numpy_helper.from_array(c, names[-1]))
    outs = g.add_node(op, names, attrs, name="n", outputs=n_out)
    g.outputs = outs
    got = run_graph(g.verify(), {"x": x})
    node = helper.make_node(op, names, outs, **attrs)
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    model = helper.make_model(
        helper.make_graph([node], "t", [helper.make_tensor_value_info("x", elem, x.shape)],
                          [helper.make_tensor_value_info(o, g.types[o].dtype.to_onnx(), None)
                           for o in outs], inits),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})
    for o, w in zip(outs, want):
        assert got[o].shape == w.shape, (got[o].shape, w.shape)
        np.testing.assert_allclose(got[o], w, rtol=1e-4, atol=1e-5)


# CNNCC_EXAMPLES raises the example count for a deeper local run.
SETTINGS = settings(max_examples=int(os.environ.get("CNNCC_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4)


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_slice_matches_onnxruntime(shape, data) -> None:
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                              unique_by=lambda a: a % rank))
    k = len(axes)
    bound = st.integers(-8, 8) | st.sampled_from([2**63 - 1, -2**63])
    starts = data.draw(st.lists(bound, min_size=k, max_size=k))
    ends = data.draw(st.lists(bound, min_size=k, max_size=k))
    steps = data.draw(st.lists(st.integers(-3, 3).filter(bool), min_size=k, max_size=k))
    # onnxruntime keeps one element for end=INT64_MAX with a negative step, where the ONNX spec
    # (and onnx's shape inference and reference) clamp end to dim-1: an empty slice. cnncc follows
    # the spec; keep the sentinels to their exporter usage here.
    ends = [e if abs(e) < 2**62 else (2**63 - 1 if s > 0 else -2**63) for e, s in zip(ends, steps)]
    run_both("Slice", _x(shape), [i64(*starts), i64(*ends), i64(*axes), i64(*steps)], {})


@SETTINGS
@given(shape=shapes, data=st.data())
def test_pad_matches_onnxruntime(shape, data) -> None:
    mode = data.draw(st.sampled_from(["constant", "reflect", "edge", "wrap"]))
    rank = len(shape)
    lo = 0 if mode != "constant" else -1
    pads = []
    for side in range(2):
        for d in shape:
            hi = d - 1 if mode == "reflect" else 3
            pads.append(data.draw(st.integers(min(lo, 0) if d > 1 else 0, max(hi, 0))))
    value = np.array(data.draw(st.floats(-2, 2, width=32)), np.float32)
    consts = [i64(*pads), value if mode == "constant" else None]
    assert len(pads) == 2 * rank
    run_both("Pad", _x(shape), consts, {"mode": mode})


def _nearest_tie(n_in: int, n_out: int, scale: float, ctm: str, nearest_mode: str) -> bool:
    """Whether some output index maps (within 1e-4) onto a rounding boundary of nearest mode."""
    y = np.arange(n_out, dtype=np.float64)
    if ctm == "align_corners":
        x = y * (n_in - 1) / max(n_out - 1, 1)
    elif ctm == "asymmetric":
        x = y / scale
    else:
        x = (y + 0.5) / scale - 0.5
        if ctm == "half_pixel_symmetric":
            x += n_in / 2 * (1 - n_out / (scale * n_in))
    boundary = 0.0 if nearest_mode in ("floor", "ceil") else 0.5
    frac = x - np.floor(x)
    return bool(np.any(np.abs(frac - boundary) < 1e-4) or np.any(np.abs(frac - 1) < 1e-4))


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=4, max_size=4), data=st.data())
def test_resize_matches_onnxruntime(shape, data) -> None:
    mode = data.draw(st.sampled_from(["nearest", "linear", "cubic"]))
    ctm = data.draw(st.sampled_from(["half_pixel", "pytorch_half_pixel", "align_corners",
                                     "asymmetric", "half_pixel_symmetric"]))
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if mode == "nearest":
        attrs["nearest_mode"] = data.draw(st.sampled_from(
            ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))
    else:
        attrs["antialias"] = data.draw(st.integers(0, 1))
    if mode == "cubic":         # (onnxruntime allows exclude_outside for cubic only)
        attrs["exclude_outside"] = data.draw(st.integers(0, 1))
    sizes = [data.draw(st.integers(1, 12)) for _ in shape[2:]]
    if data.draw(st.booleans()):
        policy = data.draw(st.sampled_from(["stretch", "not_larger", "not_smaller"]))
        # onnxruntime's antialias filter ignores the kept aspect ratio's scale on an axis whose
        # size does not change; cnncc matches onnx's reference there (checked with
        # onnx.reference.ReferenceEvaluator), so that corner is not compared with onnxruntime.
        assume(policy == "stretch" or not attrs.get("antialias"))
        attrs["keep_aspect_ratio_policy"] = policy
        attrs["axes"] = [2, 3]
        consts = [None, None, i64(*sizes)]
        ratios = [n / d for n, d in zip(sizes, shape[2:])]
        if policy != "stretch":
            r = (min if policy == "not_larger" else max)(ratios)
            ratios = [r, r]
            sizes = [int(r * d + 0.5) for d in shape[2:]]
    else:
        ratios = [data.draw(st.sampled_from([0.5, 0.75, 1.5, 2.0, 3.0])) for _ in shape[2:]]
        sizes = [math.floor(r * d) for r, d in zip(ratios, shape[2:])]
        consts = [None, np.array([1.0, 1.0] + ratios, np.float32)]
    if mode == "nearest":
        # onnxruntime computes source coordinates in float32, the ONNX reference (and cnncc) in
        # float64: a coordinate exactly on a rounding boundary may round either way.
        assume(not any(_nearest_tie(d, n, r, ctm, attrs["nearest_mode"])
                       for d, n, r in zip(shape[2:], sizes, ratios)))
    run_both("Resize", _x(shape), consts, attrs)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_reductions_match_onnxruntime(shape, data) -> None:
    op = data.draw(st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                    "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
                                    "ReduceLogSumExp"]))
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), max_size=rank,
                              unique_by=lambda a: a % rank))
    attrs = {"keepdims": data.draw(st.integers(0, 1))}
    run_both(op, _x(shape), [i64(*axes)] if axes else [], attrs)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_split_and_softmax_match_onnxruntime(shape, data) -> None:
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    dim = shape[axis]
    n = data.draw(st.integers(1, dim))
    cuts = sorted(data.draw(st.lists(st.integers(0, dim), min_size=n - 1, max_size=n - 1)))
    sizes = np.diff([0] + cuts + [dim]).astype(np.int64)
    run_both("Split", _x(shape), [sizes], {"axis": axis}, n_out=n)
    op = data.draw(st.sampled_from(["Softmax", "LogSoftmax", "Hardmax"]))
    run_both(op, _x(shape, 1), [], {"axis": axis})


@SETTINGS
@given(a=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       b=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_matmul_broadcasting_matches_numpy(a, b, data) -> None:
    # Make the inner dimensions agree and the batch dimensions broadcastable.
    if len(b) >= 2:
        b[-2] = a[-1]
    else:
        b[0] = a[-1]
    ba, bb = a[:-2], b[:-2]
    for i in range(1, min(len(ba), len(bb)) + 1):
        if ba[-i] != bb[-i] and data.draw(st.booleans()):
            bb[-i] = 1
        elif ba[-i] != bb[-i]:
            ba[-i] = bb[-i]
    a = ba + a[-2:] if len(a) >= 2 else a
    b = bb + b[-2:] if len(b) >= 2 else b
    x, y = _x(a), _x(b, 1)
    g = graph_with({"x": (F32, tuple(a)), "y": (F32, tuple(b))})
    (o,) = g.add_node("MatMul", ["x", "y"], name="mm")
    g.outputs = [o]
    got = run_graph(g, {"x": x, "y": y})[o]
    want = np.matmul(x.astype(np.float64), y.astype(np.float64))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trans_a,trans_b,c_shape", [(0, 0, None), (1, 0, (5,)), (0, 1, (1, 5)),
                                                     (1, 1, (3, 1)), (0, 0, ())])
def test_gemm_matches_onnxruntime(trans_a, trans_b, c_shape) -> None:
    a = _x((4, 3) if trans_a else (3, 4))
    b = _x((5, 4) if trans_b else (4, 5), 1)
    consts = [b] + ([] if c_shape is None else [_x(c_shape, 2)])
    run_both("Gemm", a, consts, {"alpha": 0.5, "beta": 2.0, "transA": trans_a,
                                 "transB": trans_b})


@pytest.mark.parametrize("op,attrs", [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {}),
    ("HardSwish", {}), ("Tanh", {}), ("Elu", {"alpha": 0.7}), ("Selu", {}),
    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Erf", {}), ("Exp", {}), ("Softplus", {}),
    ("Softsign", {}), ("Mish", {}), ("Celu", {"alpha": 2.0}), ("ThresholdedRelu", {}),
    ("Neg", {}), ("Abs", {}), ("Sign", {}), ("Floor", {}), ("Ceil", {}), ("Round", {}),
])
def test_unary_matches_onnxruntime(op: str, attrs: dict) -> None:
    x = _x((2, 3, 7), 3) * 4
    x[0, 0, :3] = [0.5, -0.5, 2.5]          # rounding ties
    if op == "Gelu":                          # ORT has Gelu from opset 20
        x64 = x.astype(np.float64)
        g = graph_with({"x": (F32, x.shape)})
        (o,) = g.add_node(op, ["x"], attrs, name="n")
        g.outputs = [o]
        if attrs:
            c = math.sqrt(2 / math.pi)
            want = 0.5 * x64 * (1 + np.tanh(c * (x64 + 0.044715 * x64 ** 3)))
        else:
            want = 0.5 * x64 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64.ravel()
                                              ]).reshape(x.shape))
        np.testing.assert_allclose(run_graph(g, {"x": x})[o], want, rtol=1e-6, atol=1e-7)
        return
    run_both(op, x, [], attrs)


@pytest.mark.parametrize("src,dst", [
    (np.float32, TensorProto.INT32), (np.float32, TensorProto.INT8), (np.float32, TensorProto.BOOL),
    (np.int64, TensorProto.FLOAT), (np.bool_, TensorProto.FLOAT), (np.int32, TensorProto.INT64),
    (np.float64, TensorProto.UINT8)])
def test_cast_matches_onnxruntime(src, dst) -> None:
    # In-range values only: out-of-range float -> int casts are undefined in ONNX.
    x = (np.random.default_rng(4).standard_normal((3, 5)) * 20).clip(-100, 100)
    x[0, :4] = [0.0, -0.0, 2.7, -2.7]
    if src == np.float64 and dst == TensorProto.UINT8:
        x = np.abs(x)
    run_both("Cast", x.astype(src), [], {"to": dst})
