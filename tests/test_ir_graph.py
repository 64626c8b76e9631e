"""Graph IR: construction, verify() (each defect it must catch), printer, interpreter."""
from __future__ import annotations

import numpy as np
import pytest

from cnncc.ir import CompileError, DType, Graph, Node, TensorType, run_graph

F32 = DType.float32


def small_graph() -> Graph:
    g = Graph("small")
    g.add_input("x", TensorType(F32, (2, 3)))
    b = g.add_param("b", np.arange(3, dtype=np.float32))
    (y,) = g.add_node("Add", ["x", b], name="add0")
    (z,) = g.add_node("Mul", [y, y], name="mul0")
    g.outputs = [z]
    return g.verify()


def test_builder_infers_types_and_interpreter_runs():
    g = small_graph()
    assert g.types["mul0"] == TensorType(F32, (2, 3))
    x = np.ones((2, 3), np.float32)
    out = run_graph(g, {"x": x})["mul0"]
    np.testing.assert_array_equal(out, (x + np.arange(3)) ** 2)


def test_printer_is_deterministic_and_complete():
    text = str(small_graph())
    assert text == str(small_graph())
    assert "%x: f32[2x3]" in text and "param %b: f32[3]" in text
    assert "%add0: f32[2x3] = Add(%x, %b)  # add0" in text
    assert text.rstrip().endswith("return %mul0\n}")


def test_verify_catches_dangling_input():
    g = small_graph()
    g.nodes[1].inputs[1] = "nowhere"
    with pytest.raises(CompileError, match="'nowhere' is never defined"):
        g.verify()


def test_verify_catches_cycle():
    g = small_graph()
    g.nodes[0].inputs[0] = "mul0"         # add0 reads mul0, which reads add0
    with pytest.raises(CompileError, match="cycle"):
        g.verify()


def test_verify_catches_duplicate_node_and_value_names():
    g = small_graph()
    g.nodes[1].name = "add0"
    with pytest.raises(CompileError, match="duplicate"):
        g.verify()
    g = small_graph()
    g.nodes[1].outputs = ["add0"]
    with pytest.raises(CompileError, match="defined twice"):
        g.verify()


def test_verify_catches_type_mismatch():
    g = small_graph()
    g.types["mul0"] = TensorType(F32, (3, 2))
    with pytest.raises(CompileError, match="type mismatch on 'mul0'"):
        g.verify()
    g = small_graph()
    g.params["b"] = np.zeros(4, np.float32)
    with pytest.raises(CompileError, match="parameter 'b'"):
        g.verify()


def test_verify_catches_out_of_order_and_unknown_op():
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(CompileError, match="out of topological order"):
        g.verify()
    assert g.toposort().verify() is g
    g.nodes.append(Node("NoSuchOp", ["x"], ["q"], {}, "bad"))
    with pytest.raises(CompileError, match="unknown op 'NoSuchOp'"):
        g.verify()


def test_inference_errors_name_the_node():
    g = Graph("bad")
    g.add_input("x", TensorType(F32, (2, 3)))
    g.add_input("y", TensorType(F32, (4,)))
    with pytest.raises(CompileError, match="node 'clash'.*do not broadcast"):
        g.add_node("Add", ["x", "y"], name="clash")
    with pytest.raises(CompileError, match="unknown attribute 'foo'"):
        g.add_node("Add", ["x", "x"], {"foo": 1}, name="attr")
    with pytest.raises(CompileError, match="takes 2..2 inputs, got 1"):
        g.add_node("Add", ["x"], name="arity")


def test_tensor_type_rejects_bad_shapes():
    with pytest.raises(ValueError, match="negative"):
        TensorType(F32, (1, -3))
    with pytest.raises(ValueError, match="more than"):
        TensorType(F32, (1 << 20, 1 << 20))


def test_copy_is_independent():
    g = small_graph()
    h = g.copy()
    h.nodes[0].attrs["x"] = 1
    h.outputs.append("add0")
    assert "x" not in g.nodes[0].attrs and g.outputs == ["mul0"]
