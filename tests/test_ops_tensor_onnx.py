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
    "Resize": (1, 2, 3), "Dropout": (1, 2), **{op: (1,) for op in REDUCE_OPS},
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
                np.testing.assert_allclose(have, want, rtol=rtol, atol=atol, equal_nan=True,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(have, want, err_msg=name)
