"""A small CNN end to end on the llvm target: matches the reference; threads=1 and 2 agree."""
import numpy as np

import cnncc
from cnncc.ir import DType, Graph, TensorType, run_graph


def small_cnn():
    rng = np.random.default_rng(0)
    g = Graph("small")
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 30, 31)))
    y, cin = x, 3
    for cout in (16, 24):
        w = g.add_param("w", (rng.standard_normal((cout, cin, 3, 3)) * 0.2).astype(np.float32))
        b = g.add_param("b", rng.standard_normal(cout).astype(np.float32))
        y, = g.add_node("Conv", [y, w, b], {"pads": [1, 1, 1, 1]})
        p = [g.add_param(n, (rng.random(cout) + 0.5).astype(np.float32)) for n in "sbmv"]
        y, = g.add_node("BatchNormalization", [y] + p)
        y, = g.add_node("Relu", [y])
        y, = g.add_node("MaxPool", [y], {"kernel_shape": [2, 2], "strides": [2, 2]})
        cin = cout
    r = y
    dw = g.add_param("dw", rng.standard_normal((cin, 1, 3, 3)).astype(np.float32))
    y, = g.add_node("Conv", [y, dw], {"pads": [1, 1, 1, 1], "group": cin})
    y, = g.add_node("Add", [y, r])
    y, = g.add_node("GlobalAveragePool", [y])
    y, = g.add_node("Flatten", [y])
    fc = g.add_param("fc", (rng.standard_normal((10, cin)) * 0.1).astype(np.float32))
    y, = g.add_node("Gemm", [y, fc], {"transB": 1})
    y, = g.add_node("Softmax", [y])
    g.outputs = [y]
    return g


def test_small_cnn_end_to_end():
    g = small_cnn()
    x = np.random.default_rng(1).standard_normal((2, 3, 30, 31)).astype(np.float32)
    ref = run_graph(g, {"x": x})[g.outputs[0]]
    m1 = cnncc.compile(g, target="llvm", threads=1)
    m2 = cnncc.compile(g, target="llvm", threads=2)
    y1, y2 = m1(x), m2(x)
    np.testing.assert_allclose(y1, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-7)
    assert m1.program.arena_bytes > 0 and len(m1.kernels) >= 8
    # Repeated calls reuse the arena and give the same answer.
    np.testing.assert_array_equal(m1(x), y1)


def test_arena_reuses_memory():
    g = small_cnn()
    m = cnncc.compile(g, target="llvm", threads=1)
    total = sum(g.types[o].nbytes for n in g.nodes for o in n.outputs if o)
    assert m.program.arena_bytes < total


def test_opt_level_zero_is_unfused_and_agrees():
    g = small_cnn()
    x = np.random.default_rng(2).standard_normal((2, 3, 30, 31)).astype(np.float32)
    m0 = cnncc.compile(g, target="llvm", opt_level=0, threads=1)
    m3 = cnncc.compile(g, target="llvm", opt_level=3, threads=1)
    assert len(m0.kernels) > len(m3.kernels)
    np.testing.assert_allclose(m0(x), m3(x), rtol=1e-5, atol=1e-7)


def test_outputs_aliasing_inputs_constants_and_each_other():
    g = Graph("edge")
    x = g.add_input("x", TensorType(DType.float32, (2, 3)))
    c = g.add_param("c", np.arange(6, dtype=np.float32).reshape(2, 3))
    r, = g.add_node("Relu", [x])
    f, = g.add_node("Flatten", [r])
    i, = g.add_node("Identity", [c])
    g.outputs = [x, r, f, i, r]
    x_v = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    outs = cnncc.compile(g, target="llvm", threads=1)(x_v)
    ref = run_graph(g, {"x": x_v})
    for o, name in zip(outs, g.outputs):
        np.testing.assert_array_equal(o, ref[name])
    assert not np.shares_memory(outs[1], outs[4])


def test_empty_tensor_and_scalar_graph():
    g = Graph("empty")
    x = g.add_input("x", TensorType(DType.float32, (0, 3)))
    s = g.add_input("s", TensorType(DType.float32, ()))
    y, = g.add_node("Relu", [x])
    z, = g.add_node("Mul", [s, s])
    g.outputs = [y, z]
    m = cnncc.compile(g, target="llvm")
    y_v, z_v = m(np.zeros((0, 3), np.float32), np.array(3, np.float32))
    assert y_v.shape == (0, 3) and z_v == 9
