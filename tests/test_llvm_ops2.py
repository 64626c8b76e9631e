"""More lowered ops vs the reference: index-map gathers, reductions, compile-time folding."""
import numpy as np
import pytest

from test_llvm_ops import check, graph, param


@pytest.mark.parametrize("op,inputs,attrs", [
    ("Gather", [np.array([[0, 2], [1, -1]])], {"axis": 1}),
    ("GatherElements", [np.array([[[0], [1], [2]]] * 2).repeat(5, 2)[:, :, :5] % 3], {"axis": 1}),
    ("Tile", [np.array([1, 2, 1])], {}),
    ("Expand", [np.array([3, 1, 3, 5])], {}),
    ("DepthToSpace", [], {"blocksize": 1}),
])
def test_index_map_ops(op, inputs, attrs):
    g, (x,) = graph((2, 3, 5))
    if op == "Expand":
        g, (x,) = graph((3, 1, 5))
    ins = [x] + [g.add_param(f"c{i}", v.astype(np.int64)) for i, v in enumerate(inputs)]
    if op == "DepthToSpace":
        g, (x,) = graph((1, 8, 3, 2))
        ins, attrs = [x], {"blocksize": 2, "mode": "CRD"}
    y, = g.add_node(op, ins, attrs)
    g.outputs = [y]
    check(g, threads=(1,))


def test_space_to_depth_split_resize():
    g, (x,) = graph((1, 2, 6, 4))
    a, = g.add_node("SpaceToDepth", [x], {"blocksize": 2})
    s0, s1 = g.add_node("Split", [x, g.add_param("sp", np.array([1, 1]))], {"axis": 1},
                        outputs=2)
    r, = g.add_node("Resize", [x, "", g.add_param("sc", np.array([1, 1, 2, 1.5], np.float32))],
                    {"mode": "nearest"})
    g.outputs = [a, s0, s1, r]
    check(g)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                "ReduceL2", "ReduceSumSquare", "ReduceL1"])
@pytest.mark.parametrize("axes,keep", [([2, 3], 1), ([1], 0), ([0, 3], 1), (None, 0)])
def test_reduce(op, axes, keep):
    g, (x,) = graph((2, 3, 4, 19))
    ins = [x] + ([g.add_param("axes", np.array(axes))] if axes is not None else [])
    y, = g.add_node(op, ins, {"keepdims": keep})
    g.outputs = [y]
    check(g, threads=(1, 2) if op == "ReduceSum" else (1,))


def test_log_softmax_and_constant_folding():
    g, (x,) = graph((2, 3, 4))
    shp, = g.add_node("Shape", [x])
    y, = g.add_node("LogSoftmax", [x], {"axis": 1})
    c, = g.add_node("Add", [param(g, "p", (4,)), param(g, "q", (4,))])   # folded
    z, = g.add_node("Mul", [y, c])
    g.outputs = [z, shp]
    feeds = {x: np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    from cnncc.ir import run_graph
    import cnncc
    ref = run_graph(g, feeds)
    m = cnncc.compile(g, target="llvm")
    assert not any(k.name.startswith("add") for k in m.kernels)
    out = m.run(feeds)
    np.testing.assert_array_equal(out[shp], ref[shp])
    np.testing.assert_allclose(out[z], ref[z], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"])
def test_compare_where_logic(op):
    g, (a, b) = graph((2, 3, 17), (3, 1))
    c, = g.add_node(op, [a, b])
    d, = g.add_node("Not", [c])
    e, = g.add_node("Xor", [c, d])
    w, = g.add_node("Where", [c, a, b])
    f, = g.add_node("Cast", [c], {"to": 1})
    g.outputs = [d, e, w, f]
    feeds = {a: np.round(np.random.default_rng(1).standard_normal((2, 3, 17))).astype(np.float32),
             b: np.array([[0], [1], [-1]], np.float32)}
    check(g, threads=(1,), feeds=feeds)


@pytest.mark.parametrize("op", ["Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Atanh",
                                "Sign", "IsNaN", "IsInf", "Sin", "Cos", "Sqrt", "Log",
                                "Reciprocal", "Round"])
def test_more_unary(op):
    g, (x,) = graph((3, 19))
    y, = g.add_node(op, [x])
    g.outputs = [y]
    v = np.random.default_rng(2).uniform(-0.9, 0.9, (3, 19)).astype(np.float32)
    if op in ("Sqrt", "Log", "Reciprocal"):
        v = np.abs(v) + 0.1
    if op in ("IsNaN", "IsInf", "Sign"):
        v[0, :4] = [np.nan, np.inf, -np.inf, 0.0]
    check(g, threads=(1,), feeds={x: v})


def test_pow_cast_int_arith():
    g, (a, b) = graph((4, 9), (9,))
    p, = g.add_node("Pow", [a, b])
    i, = g.add_node("Cast", [a], {"to": 7})
    j, = g.add_node("Mul", [i, i])
    k, = g.add_node("Div", [j, g.add_param("three", np.array(3, np.int64))])
    g.outputs = [p, k]
    rng = np.random.default_rng(3)
    feeds = {a: rng.uniform(0.1, 9, (4, 9)).astype(np.float32),
             b: rng.uniform(-2, 2, 9).astype(np.float32)}
    check(g, threads=(1,), feeds=feeds)


@pytest.mark.parametrize("shape,cout,k,attrs", [
    ((1, 4, 5, 6), 6, 3, {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((2, 6, 4, 4), 4, 2, {"strides": [2, 2], "group": 2}),
    ((1, 3, 7, 5), 3, 3, {"group": 3, "pads": [1, 0, 1, 2]}),
    ((1, 2, 9), 5, 4, {"strides": [3], "dilations": [2], "auto_pad": "SAME_UPPER"}),
    ((1, 16, 3, 3), 20, 3, {"strides": [2, 2], "output_shape": [6, 7]}),
])
def test_conv_transpose(shape, cout, k, attrs):
    g, (x,) = graph(shape)
    grp = attrs.get("group", 1)
    nd = len(shape) - 2
    w = param(g, "w", (shape[1], cout // grp) + (k,) * nd, 0.3)
    y, = g.add_node("ConvTranspose", [x, w, param(g, "b", (cout,))], attrs)
    z, = g.add_node("Relu", [y])
    g.outputs = [z]
    check(g)


def test_instance_layer_norm_lrn():
    g, (x,) = graph((2, 5, 6, 7))
    a, = g.add_node("InstanceNormalization", [x, param(g, "s", (5,)), param(g, "b", (5,))])
    b, = g.add_node("LayerNormalization", [x, param(g, "ls", (6, 7)), param(g, "lb", (7,))],
                    {"axis": 2})
    c, = g.add_node("LRN", [x], {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 2.0})
    d, = g.add_node("LRN", [x], {"size": 4})
    g.outputs = [a, b, c, d]
    check(g)
