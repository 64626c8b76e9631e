"""Non-convolution ops of the op table: validation errors (CompileError naming the node), the erf
approximation, and small exact checks of inference + reference.

The ONNX backend node tests for the same ops run in test_onnx_node.py, comparisons with
onnxruntime in test_ops_tensor_ort.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto

from cnncc.ir import Graph
from cnncc.ir.dtypes import DType
from cnncc.ir.errors import CompileError
from cnncc.ir.interpreter import run_graph
from cnncc.ir.ops.activation import erf
from cnncc.ir.types import TensorType

F32 = DType.float32


def graph_with(inputs: dict[str, tuple], params: dict[str, np.ndarray] | None = None) -> Graph:
    g = Graph("t")
    for name, (dtype, shape) in inputs.items():
        g.add_input(name, TensorType(dtype, shape))
    for name, value in (params or {}).items():
        g.params[name] = value
        g.types[name] = TensorType(DType.from_numpy(value.dtype), value.shape)
    return g


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- validation: every bad node is a CompileError that names the node ----------------------------

X4 = {"x": (F32, (1, 4, 6, 6))}
BAD_NODES = [
    # (op, inputs, params, attrs, message fragment)
    ("Reshape", X4, {"s": i64(5, -1)}, {}, "cannot reshape"),
    ("Reshape", X4, {"s": i64(-1, -1)}, {}, "more than one -1"),
    ("Reshape", X4, {"s": i64(1, 2, 3, 4, 0)}, {}, "copies a dimension"),
    ("Reshape", X4, {"s": i64(-2, 72)}, {}, "negative dimension"),
    ("Expand", X4, {"s": i64(3, 6, 6)}, {}, "cannot expand"),
    ("Transpose", X4, {}, {"perm": [0, 1, 1, 2]}, "not a permutation"),
    ("Squeeze", X4, {"a": i64(1)}, {}, "cannot squeeze axis 1"),
    ("Unsqueeze", X4, {"a": i64(0, 0)}, {}, "repeat an axis"),
    ("Unsqueeze", X4, {"a": i64(9)}, {}, "out of range"),
    ("Flatten", X4, {}, {"axis": 5}, "out of range"),
    ("Concat", {"x": (F32, (1, 2)), "y": (F32, (2, 2))}, {}, {"axis": 1}, "does not match"),
    ("Concat", {"x": (F32, (1, 2)), "y": (DType.int64, (1, 2))}, {}, {"axis": 0}, "input 1 is"),
    ("Split", X4, {"s": i64(2, 3)}, {"axis": 1}, "sums to 5"),
    ("Slice", X4, {"a": i64(0), "b": i64(2), "c": i64(1), "d": i64(0)}, {}, "step for axis"),
    ("Slice", X4, {"a": i64(0, 0), "b": i64(2)}, {}, "differ in length"),
    ("Pad", X4, {"p": i64(1, 1, 1)}, {}, "2 entries per padded axis"),
    ("Pad", X4, {"p": i64(0, 0, 0, 9, 0, 0, 0, 0)}, {"mode": "reflect"}, "reflect padding"),
    ("Pad", X4, {"p": i64(0, 0, -7, 0, 0, 0, 0, 0)}, {}, "invalid size"),
    ("Pad", X4, {"p": i64(0, 0, 0, 0, 0, 0, 0, 0)}, {"mode": "mirror"}, "mode must be"),
    ("Gather", X4, {"i": i64(4)}, {"axis": 1}, "indices out of range"),
    ("Tile", X4, {"r": i64(1, 2)}, {}, "one entry per axis"),
    ("DepthToSpace", X4, {}, {"blocksize": 3}, "not divisible"),
    ("SpaceToDepth", X4, {}, {"blocksize": 4}, "not divisible"),
    ("Gemm", {"a": (F32, (2, 3)), "b": (F32, (4, 5))}, {}, {}, "inner dimensions"),
    ("Gemm", {"a": (F32, (2, 3)), "b": (F32, (3, 5)), "c": (F32, (3, 5))}, {}, {},
     "does not broadcast"),
    ("MatMul", {"a": (F32, (2, 2, 3)), "b": (F32, (3, 3, 4))}, {}, {}, "do not broadcast"),
    ("MatMul", {"a": (F32, (2, 3)), "b": (F32, (2, 3))}, {}, {}, "inner dimensions"),
    ("Softmax", X4, {}, {"axis": 4}, "out of range"),
    ("ReduceSum", X4, {"a": i64(1, -3)}, {}, "repeat an axis"),
    ("ReduceMean", X4, {"a": np.array([1.0], np.float32)}, {}, "integer tensor"),
    ("ArgMax", X4, {}, {"axis": -5}, "out of range"),
    ("PRelu", {"x": (F32, (1, 4, 6, 6)), "s": (F32, (3, 1, 1))}, {}, {}, "does not broadcast"),
    ("Clip", {"x": (F32, (4,)), "lo": (F32, (2,))}, {}, {}, "must be a scalar"),
    ("Relu", {"x": (DType.bool, (4,))}, {}, {}, "not supported"),
    ("Cast", X4, {}, {"to": TensorProto.BFLOAT16}, "not supported"),
    ("ConstantOfShape", {}, {"s": i64(2, -1)}, {}, "invalid shape"),
    ("Range", {}, {"a": np.array(0, np.int64), "b": np.array(5, np.int64),
                   "c": np.array(0, np.int64)}, {}, "delta is 0"),
    ("Resize", X4, {"s": np.array([1, 1, 2], np.float32)}, {}, "3 entries for 4 axes"),
    ("Resize", X4, {"s": np.array([1, 1, -2, 2], np.float32)}, {}, "must be positive"),
    ("Resize", X4, {"s": np.array([1, 1, 2, 2], np.float32)}, {"mode": "area"}, "mode must be"),
    ("Dropout", X4, {"r": np.array(0.3, np.float32), "t": np.array(True)}, {}, "training-mode"),
    ("Where", {"c": (F32, (2,)), "x": (F32, (2,)), "y": (F32, (2,))}, {}, {}, "must be bool"),
    ("TopK", X4, {"k": i64(7)}, {"axis": 1}, "out of range"),
    ("GatherElements", {"x": (F32, (2, 3)), "i": (DType.int64, (2,))}, {}, {},
     "must equal data rank"),
    ("Constant", {}, {}, {"value_float": 1.0, "value_int": 1}, "exactly one value"),
]


def _wire(op: str, inputs: dict, params: dict) -> list[str]:
    names = list(inputs) + list(params)
    if op == "Resize":          # X, roi (omitted), scales
        return [names[0], "", names[1]]
    return names


@pytest.mark.parametrize("op,inputs,params,attrs,fragment", BAD_NODES,
                         ids=[f"{b[0]}-{b[4]}" for b in BAD_NODES])
def test_invalid_node_raises_named_error(op, inputs, params, attrs, fragment) -> None:
    g = graph_with(inputs, params)
    with pytest.raises(CompileError, match=fragment) as info:
        g.add_node(op, _wire(op, inputs, params), attrs, name="bad_node",
                   outputs=2 if op in ("Split", "TopK") else 1)
    assert info.value.node == "bad_node"
    assert "bad_node" in str(info.value) and op in str(info.value)


@pytest.mark.parametrize("op,slot", [("Reshape", 1), ("Expand", 1), ("Tile", 1), ("Slice", 1),
                                     ("Pad", 1), ("ReduceSum", 1), ("Unsqueeze", 1)])
def test_shape_input_must_be_constant(op: str, slot: int) -> None:
    g = graph_with({"x": (F32, (2, 3)), "s": (DType.int64, (2,))},
                   {"e": i64(1, 1)})
    ins = ["x", "s"] + (["e"] if op == "Slice" else [])
    with pytest.raises(CompileError, match="must be a constant") as info:
        g.add_node(op, ins, name="dyn")
    assert info.value.node == "dyn"


def test_missing_required_attribute_and_unknown_attribute() -> None:
    g = graph_with({"x": (F32, (1, 8, 2, 2))})
    with pytest.raises(CompileError, match="missing required attribute 'blocksize'"):
        g.add_node("DepthToSpace", ["x"], name="d2s")
    with pytest.raises(CompileError, match="unknown attribute 'ratio'"):
        g.add_node("Dropout", ["x"], {"ratio": 0.5}, name="old_dropout")


def test_resize_needs_exactly_one_of_scales_and_sizes() -> None:
    g = graph_with({"x": (F32, (1, 1, 2, 2))},
                   {"sc": np.array([1, 1, 2, 2], np.float32), "sz": i64(1, 1, 4, 4),
                    "empty": np.zeros(0, np.float32)})
    with pytest.raises(CompileError, match="exactly one of scales and sizes"):
        g.add_node("Resize", ["x", "", "sc", "sz"], name="r1")
    with pytest.raises(CompileError, match="exactly one of scales and sizes"):
        g.add_node("Resize", ["x"], name="r2")
    # An empty scales tensor next to sizes is the exporters' way of omitting scales.
    (out,) = g.add_node("Resize", ["x", "", "empty", "sz"], name="r3")
    assert g.types[out].shape == (1, 1, 4, 4)


def test_gather_runtime_index_out_of_range_is_caught() -> None:
    g = graph_with({"x": (F32, (3, 2)), "i": (DType.int64, (2,))})
    (y,) = g.add_node("Gather", ["x", "i"], name="g")
    g.outputs = [y]
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(run_graph(g, {"x": x, "i": i64(-1, 0)})[y], x[[2, 0]])
    with pytest.raises(IndexError):
        run_graph(g, {"x": x, "i": i64(3, 0)})


# ---- erf -----------------------------------------------------------------------------------------

def test_erf_matches_math_erf() -> None:
    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, -0.0, 1e-300, 2.999999, 3.0, 3.000001]])
    want = np.array([math.erf(v) for v in x])
    got = erf(x)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
    assert np.isnan(erf(np.array([np.nan])))[0]
    np.testing.assert_array_equal(erf(np.array([np.inf, -np.inf])), [1.0, -1.0])


def test_clip_with_runtime_bounds_and_min_above_max() -> None:
    g = graph_with({"x": (F32, (5,)), "lo": (F32, ()), "hi": (F32, ())})
    (o,) = g.add_node("Clip", ["x", "lo", "hi"], name="clip")
    (o2,) = g.add_node("Clip", ["x", "", "hi"], name="clip_max_only")
    g.outputs = [o, o2]
    x = np.array([-3, -1, 0, 1, 3], np.float32)
    out = run_graph(g, {"x": x, "lo": np.float32(-1.5), "hi": np.float32(2)})
    np.testing.assert_array_equal(out[o], [-1.5, -1, 0, 1, 2])
    np.testing.assert_array_equal(out[o2], [-3, -1, 0, 1, 2])
    out = run_graph(g, {"x": x, "lo": np.float32(2), "hi": np.float32(1)})
    np.testing.assert_array_equal(out[o], [1, 1, 1, 1, 1])     # min > max: everything is max


def test_dropout_inference_is_identity_with_true_mask() -> None:
    g = graph_with({"x": (F32, (2, 3))}, {"r": np.array(0.5, np.float32)})
    y, mask = g.add_node("Dropout", ["x", "r"], name="drop", outputs=2)
    g.outputs = [y, mask]
    x = _x((2, 3))
    out = run_graph(g.verify(), {"x": x})
    np.testing.assert_array_equal(out[y], x)
    assert out[mask].dtype == np.bool_ and out[mask].all()


def test_shape_size_and_constant_of_shape_types() -> None:
    g = graph_with({"x": (F32, (2, 3, 4))}, {"s": i64(2, 2)})
    (s,) = g.add_node("Shape", ["x"], {"start": -2}, name="shape")
    (n,) = g.add_node("Size", ["x"], name="size")
    (c,) = g.add_node("ConstantOfShape", ["s"], {"value": np.array([7], np.int32)}, name="cos")
    assert g.types[s] == TensorType(DType.int64, (2,))
    assert g.types[n] == TensorType(DType.int64, ())
    assert g.types[c] == TensorType(DType.int32, (2, 2))
    g.outputs = [s, n, c]
    out = run_graph(g, {"x": _x((2, 3, 4))})
    np.testing.assert_array_equal(out[s], [3, 4])
    assert out[n] == 24
    np.testing.assert_array_equal(out[c], np.full((2, 2), 7, np.int32))


def test_topk_ties_keep_lower_index_first() -> None:
    g = graph_with({"x": (DType.int64, (2, 5))}, {"k": i64(3)})
    for largest in (0, 1):
        v, i = g.add_node("TopK", ["x", "k"], {"largest": largest}, name=f"topk{largest}",
                          outputs=2)
        g.outputs = [v, i]
        x = np.array([[3, 1, 3, 2, 1], [2**62, -2**62, 2**62, 0, 0]], np.int64)
        out = run_graph(g, {"x": x})
        want_i = [[0, 2, 3], [0, 2, 3]] if largest else [[1, 4, 3], [1, 3, 4]]
        np.testing.assert_array_equal(out[i], want_i)
        np.testing.assert_array_equal(out[v], np.take_along_axis(x, np.array(want_i), 1))
