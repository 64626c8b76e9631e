"""CompiledModel's call contract on the reference target: inputs checked before running."""
from __future__ import annotations

import numpy as np
import pytest

import cnncc
from cnncc.ir import DType, Graph, InputError, TensorType

F32 = DType.float32


@pytest.fixture
def model():
    g = Graph("two_in_two_out")
    g.add_input("a", TensorType(F32, (2, 3)))
    g.add_input("b", TensorType(F32, (3,)))
    (s,) = g.add_node("Add", ["a", "b"], name="s")
    (p,) = g.add_node("Mul", ["a", "b"], name="p")
    g.outputs = [s, p]
    return cnncc.compile(g, target="reference")


def test_signature(model):
    assert model.input_names == ["a", "b"] and model.output_names == ["s", "p"]
    assert model.input_shapes == [(2, 3), (3,)] and model.output_shapes == [(2, 3), (2, 3)]
    assert model.input_dtypes == [np.float32, np.float32]
    assert "reference" in repr(model)


def test_call_and_run_agree(model):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 2, 3], np.float32)
    s, p = model(a, b)
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(p, a * b)
    out = model.run({"a": a, "b": b})
    assert list(out) == ["s", "p"]
    np.testing.assert_array_equal(out["p"], p)


def test_wrong_count(model):
    with pytest.raises(InputError, match="takes 2 input"):
        model(np.zeros((2, 3), np.float32))


def test_wrong_shape(model):
    with pytest.raises(InputError, match=r"input 'b': expected shape \[3\], got \[4\]"):
        model(np.zeros((2, 3), np.float32), np.zeros(4, np.float32))


def test_wrong_dtype(model):
    with pytest.raises(InputError, match="input 'a': expected dtype float32, got float64"):
        model(np.zeros((2, 3)), np.zeros(3, np.float32))


def test_not_an_array(model):
    with pytest.raises(InputError, match="expected a numpy array"):
        model([[0.0] * 3] * 2, np.zeros(3, np.float32))


def test_run_names(model):
    with pytest.raises(InputError, match=r"missing input\(s\) \['b'\].*unknown input\(s\) \['c'\]"):
        model.run({"a": np.zeros((2, 3), np.float32), "c": np.zeros(3, np.float32)})


def test_non_contiguous_input_is_copied(model):
    big = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = big[:2, :3]                      # a strided view
    b = np.arange(6, dtype=np.float32)[::2]
    s, _ = model(a, b)
    np.testing.assert_array_equal(s, np.ascontiguousarray(a) + np.ascontiguousarray(b))


def test_outputs_are_fresh_arrays(model):
    a = np.ones((2, 3), np.float32)
    b = np.ones(3, np.float32)
    s1, _ = model(a, b)
    s1[:] = 42
    s2, _ = model(a, b)
    np.testing.assert_array_equal(s2, a + b)


def test_compile_rejects_bad_options():
    g = Graph("g")
    g.add_input("x", TensorType(F32, (1,)))
    g.outputs = ["x"]
    with pytest.raises(cnncc.CompileError, match="unknown target 'tpu'"):
        cnncc.compile(g, target="tpu")
    with pytest.raises(cnncc.CompileError, match="opt_level"):
        cnncc.compile(g, target="reference", opt_level=7)
    with pytest.raises(cnncc.CompileError, match="threads"):
        cnncc.compile(g, target="reference", threads=0)
    with pytest.raises(cnncc.CompileError, match="cannot compile a int"):
        cnncc.compile(3, target="reference")
