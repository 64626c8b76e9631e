"""Run ONNX backend node-test cases through the op table (inference + numpy reference).

A tiny private converter (independent of cnncc.frontend): a few-node ModelProto becomes a cnncc
Graph. Graph inputs that feed a must-be-constant slot (Reshape's shape, Slice's starts, ...) become
params with the test data's values; nodes whose inputs are all constants are folded (after checking
that their inferred type matches the reference result), the way exporters' shape subgraphs are.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnncc.ir import Graph
from cnncc.ir.dtypes import DType
from cnncc.ir.graph import Node
from cnncc.ir.interpreter import run_graph
from cnncc.ir.ops import infer_node, run_reference
from cnncc.ir.types import TensorType

REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
# (op -> input slots that must be compile-time constants in cnncc's IR).
CONST_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Slice": (1, 2, 3, 4),
    "Pad": (1, 3), "Split": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Resize": (1, 2, 3), "Dropout": (1, 2), "TopK": (1,), **{op: (1,) for op in REDUCE_OPS},
}
# Ops whose output depends only on input types: always foldable.
SHAPE_ONLY = ("Shape", "Size")


@functools.lru_cache(maxsize=1)
def node_cases() -> dict[str, object]:
    """All ONNX backend node test cases by name (generated in memory by onnx)."""
    import onnx.backend.test.loader as loader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in loader.load_model_tests(kind="node")}


def case_ops(case) -> set[str]:
    return {n.op_type for n in case.model.graph.node}


def _attr(a: onnx.AttributeProto):
    v = helper.get_attribute_value(a)
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    return v


def as_array(value) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if not isinstance(value, (np.ndarray, np.generic)):
        raise TypeError(f"non-tensor value ({type(value).__name__}): sequences and optionals "
                        "are not supported")
    return np.asarray(value)


def convert(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[Graph, dict]:
    """(graph, runtime feeds) for one data set of a node-test model."""
    og = model.graph
    g = Graph(og.name)
    for init in og.initializer:
        g.params[init.name] = np.array(numpy_helper.to_array(init))
        g.types[init.name] = TensorType(DType.from_numpy(g.params[init.name].dtype),
                                        g.params[init.name].shape)
    const_inputs = {n.input[i] for n in og.node for i in CONST_SLOTS.get(n.op_type, ())
                    if i < len(n.input) and n.input[i]}
    runtime_inputs = [i for i in og.input if i.name not in g.params]
    feeds = {}
    for vi, value in zip(runtime_inputs, inputs):
        value = as_array(value)
        if vi.name in const_inputs:
            g.params[vi.name] = value
        else:
            feeds[vi.name] = value
            g.inputs.append(vi.name)
        g.types[vi.name] = TensorType(DType.from_numpy(value.dtype), value.shape)
    for k, on in enumerate(og.node):
        node = Node(on.op_type, list(on.input), list(on.output),
                    {a.name: _attr(a) for a in on.attribute}, on.name or f"n{k}")
        types = infer_node(node, g.types, g.params)
        present = [i for i in node.inputs if i]
        if on.op_type in SHAPE_ONLY or all(i in g.params for i in present):
            args = [g.params.get(i) if i else None for i in node.inputs]
            if on.op_type in SHAPE_ONLY:
                args = [np.zeros(g.types[node.inputs[0]].shape, g.types[node.inputs[0]].dtype.np)]
            results = run_reference(node, args, [g.types[i] if i else None
                                                 for i in node.inputs])
            for name, t, r in zip(node.outputs, types, results):
                if name:
                    assert (r.dtype, r.shape) == (t.dtype.np, t.shape), (node.op, r.dtype,
                                                                         r.shape, t)
                    g.params[name] = np.array(r)  # (ascontiguousarray makes 0-d 1-d)
                    g.types[name] = t
            continue
        for name, t in zip(node.outputs, types):
            if name:
                g.types[name] = t
        g.nodes.append(node)
    g.outputs = [o.name for o in og.output]
    return g, feeds


def check_case(case) -> None:
    """Run every data set of ``case``; raise AssertionError/CompileError on any mismatch."""
    rtol, atol = max(case.rtol, 1e-3), max(case.atol, 1e-5)
    for inputs, expected in case.data_sets:
        graph, feeds = convert(case.model, inputs)
        graph.verify()
        with np.errstate(all="ignore"):
            got = run_graph(graph, feeds)
        for name, want in zip(graph.outputs, expected):
            have = got[name]
            want = as_array(want)
            assert have.dtype == want.dtype, f"{name}: dtype {have.dtype}, expected {want.dtype}"
            assert have.shape == want.shape, f"{name}: shape {have.shape}, expected {want.shape}"
            if want.dtype.kind == "f":
                # float16 results of multi-op cases may differ by a couple of half ulps (2^-11).
                tol = max(rtol, 4e-3) if want.dtype == np.float16 else rtol
                np.testing.assert_allclose(have, want, rtol=tol, atol=atol, equal_nan=True,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(have, want, err_msg=name)


# ---- the tests -----------------------------------------------------------------------------------

import pytest  # noqa: E402

from cnncc.ir.dtypes import _FROM_ONNX  # noqa: E402
from cnncc.ir.ops import OP_TABLE  # noqa: E402

OUR_MODULES = {f"cnncc.ir.ops.{m}" for m in (
    "elementwise", "activation", "linalg", "reduce", "shape", "tensor", "pad", "creation",
    "resize")}
OUR_OPS = {name for name, op in OP_TABLE.items() if op.reference.__module__ in OUR_MODULES}

# Cases cnncc rejects on purpose (CompileError), by reason; each is a strict xfail, so a case that
# starts passing is reported.
OLD_FORM = "old opset form with an attribute that newer opsets made an input: the frontend " \
           "rewrites it"
EXPECTED_FAILURES: dict[str, str] = {
    **{f"test_{k}_expanded": OLD_FORM + " (ReduceMax/ReduceMean 'axes' attribute)" for k in (
        "softmax_axis_0", "softmax_axis_1", "softmax_axis_2", "softmax_default_axis",
        "softmax_example", "softmax_large_number", "softmax_negative_axis",
        "logsoftmax_axis_0", "logsoftmax_axis_1", "logsoftmax_axis_2",
        "logsoftmax_default_axis", "logsoftmax_example_1", "logsoftmax_large_number",
        "logsoftmax_negative_axis", "mvn")},
    **{f"test_layer_normalization_{k}_expanded": OLD_FORM + " (ReduceMean 'axes' attribute)"
       for k in ("2d_axis0", "2d_axis1", "2d_axis_negative_1", "2d_axis_negative_2",
                 "3d_axis0_epsilon", "3d_axis1_epsilon", "3d_axis2_epsilon",
                 "3d_axis_negative_1_epsilon", "3d_axis_negative_2_epsilon",
                 "3d_axis_negative_3_epsilon", "4d_axis0", "4d_axis1", "4d_axis2", "4d_axis3",
                 "4d_axis_negative_1", "4d_axis_negative_2", "4d_axis_negative_3",
                 "4d_axis_negative_4", "default_axis")},
    "test_dropout_random_old": OLD_FORM + " (Dropout 'ratio' attribute)",
    **{f"test_training_dropout{k}": "training-mode Dropout (random mask) is not an inference op"
       for k in ("", "_default", "_default_mask", "_mask")},
    **{f"test_{k}_expanded": "data-dependent shape: Range's limit comes from a runtime input "
       "of the test model" for k in ("blackmanwindow", "blackmanwindow_symmetric",
                                      "hammingwindow", "hammingwindow_symmetric",
                                      "hannwindow", "hannwindow_symmetric")},
    **{f"test_center_crop_pad_{k}_expanded": "data-dependent shape: Pad's pads come from a "
       "runtime input of the test model" for k in (
           "crop_and_pad", "crop_axes_chw", "crop_axes_hwc", "crop", "crop_negative_axes_hwc",
           "pad")},
    **{f"test_resize_downsample_scales_{k}_align_corners": "align_corners with a fractional "
       "output length: cnncc follows the ONNX spec's formula with the integer output length, as "
       "onnxruntime does (checked: onnxruntime gives cnncc's numbers); onnx's Python reference, "
       "which made the expected data, uses the fractional length" for k in ("linear", "cubic")},
}


def unsupported_dtype(case) -> int | None:
    """An ONNX element type the case uses that cnncc's DType lacks (bfloat16, float8, ...)."""
    g = case.model.graph
    codes = [v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)]
    codes += [i.data_type for i in g.initializer]
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to":
                codes.append(a.i)
            if a.type == onnx.AttributeProto.TENSOR:
                codes.append(a.t.data_type)
    return next((c for c in codes if c not in _FROM_ONNX), None)


def _selected() -> list:
    params = []
    for name, case in sorted(node_cases().items()):
        if not case_ops(case) <= OUR_OPS:
            continue
        marks = []
        code = unsupported_dtype(case)
        reason = EXPECTED_FAILURES.get(name)
        if code is not None:
            kind = onnx.TensorProto.DataType.Name(code) if code else "non-tensor"
            reason = f"element type {kind} is not supported"
        if reason:
            marks.append(pytest.mark.xfail(reason=reason, strict=True))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _selected())
def test_onnx_node_case(name: str) -> None:
    check_case(node_cases()[name])


def test_every_listed_failure_is_a_selected_case() -> None:
    """The expected-failure list names real cases that this file runs (no stale entries)."""
    cases = node_cases()
    for name in EXPECTED_FAILURES:
        assert name in cases and case_ops(cases[name]) <= OUR_OPS, name


def test_our_ops_all_have_node_cases() -> None:
    """Each ONNX op we registered is exercised by at least one passing-by-design node case."""
    covered = set()
    for name, case in node_cases().items():
        if case_ops(case) <= OUR_OPS and name not in EXPECTED_FAILURES \
                and unsupported_dtype(case) is None:
            covered |= case_ops(case)
    assert OUR_OPS - covered == set()
