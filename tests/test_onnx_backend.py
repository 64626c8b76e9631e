"""CnnccBackend (the onnx.backend interface), including binding runtime inputs as constants."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from cnncc.ir import CompileError
from cnncc.onnx_backend import CnnccBackend

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def reshape_model(x_shape=(2, 6)):
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, x_shape),
                                            helper.make_tensor_value_info("shape", I64, [2])],
                              [helper.make_tensor_value_info("y", F, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_prepare_and_run_plain_model():
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [3])],
                              [helper.make_tensor_value_info("y", F, [3])])
    rep = CnnccBackend.prepare(helper.make_model(graph), "CPU")
    assert rep.compiled is not None
    x = np.array([-1, 0, 2], np.float32)
    (y,) = rep.run([x])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(rep.run({"x": x}).y, np.maximum(x, 0))


def test_runtime_shape_input_is_bound_and_rebound():
    rep = CnnccBackend.prepare(reshape_model(), "CPU", target="reference")
    assert rep.compiled is None and "constant" in str(rep.error)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    (y,) = rep.run([x, np.array([3, 4], np.int64)])
    np.testing.assert_array_equal(y, x.reshape(3, 4))
    # New values for a bound input: recompiled, never a stale result.
    (y,) = rep.run([x, np.array([4, 3], np.int64)])
    np.testing.assert_array_equal(y, x.reshape(4, 3))
    # Same bound values, new data input: the specialized model is reused.
    compiled = rep.compiled
    (y,) = rep.run([x + 1, np.array([4, 3], np.int64)])
    assert rep.compiled is compiled
    np.testing.assert_array_equal(y, (x + 1).reshape(4, 3))


def test_binding_can_be_switched_off():
    with pytest.raises(CompileError, match="constant"):
        CnnccBackend.prepare(reshape_model(), "CPU", bind_inputs=False)


def test_symbolic_dims_taken_from_the_first_run():
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, ["N", 2])],
                              [helper.make_tensor_value_info("y", F, ["N", 2])])
    rep = CnnccBackend.prepare(helper.make_model(graph), "CPU")
    x = -np.ones((5, 2), np.float32)
    np.testing.assert_array_equal(rep.run([x])[0], np.zeros((5, 2), np.float32))
    assert rep.compiled.input_shapes == [(5, 2)]


def test_unsupported_model_still_fails_at_run():
    node = helper.make_node("Relu", ["x"], ["y"], name="r", bogus=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    rep = CnnccBackend.prepare(helper.make_model(graph), "CPU")
    with pytest.raises(CompileError, match="bogus"):
        rep.run([np.zeros(2, np.float32)])


def test_run_node_and_devices():
    node = helper.make_node("Add", ["a", "b"], ["c"])
    a, b = np.ones((2, 2), np.float32), np.arange(2, dtype=np.float32)
    (c,) = CnnccBackend.run_node(node, [a, b])
    np.testing.assert_array_equal(c, a + b)
    assert CnnccBackend.supports_device("CPU")
    assert not CnnccBackend.supports_device("TPU")


def test_symbolic_dims_recompile_for_new_shapes():
    node = helper.make_node("Neg", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, ["N"])],
                              [helper.make_tensor_value_info("y", F, ["N"])])
    rep = CnnccBackend.prepare(helper.make_model(graph), "CPU")
    for n in (3, 5, 3):
        x = np.arange(n, dtype=np.float32)
        np.testing.assert_array_equal(rep.run([x])[0], -x)


def test_only_inputs_feeding_constant_operands_are_bound():
    # The pad widths come from a runtime input through arithmetic; the data input stays an input.
    nodes = [helper.make_node("Add", ["p", "one"], ["pads"]),
             helper.make_node("Pad", ["x", "pads"], ["y"], name="pad")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2]),
                                           helper.make_tensor_value_info("p", I64, [2])],
                              [helper.make_tensor_value_info("y", F, None)],
                              initializer=[helper.make_tensor("one", I64, [1], [1])])
    rep = CnnccBackend.prepare(helper.make_model(graph), "CPU")
    x = np.array([1, 2], np.float32)
    (y,) = rep.run([x, np.array([0, 1], np.int64)])
    np.testing.assert_array_equal(y, [0, 1, 2, 0, 0])
    assert set(rep._bound) == {"p"} and rep.compiled.input_names == ["x"]
