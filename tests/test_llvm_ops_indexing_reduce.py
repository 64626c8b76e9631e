"""More lowered ops vs the reference: index-map gathers, reductions, compile-time folding."""
import numpy as np
import pytest

from test_llvm_ops_core import check, graph, param


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
                                "ReduceL2", "ReduceSumSquare", "ReduceL1", "ReduceLogSumExp"])
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
    b, mean, inv = g.add_node("LayerNormalization", [x, param(g, "ls", (6, 7)),
                                                     param(g, "lb", (7,))], {"axis": 2}, outputs=3)
    c, = g.add_node("LRN", [x], {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 2.0})
    d, = g.add_node("LRN", [x], {"size": 4})
    g.outputs = [a, b, c, d, mean, inv]
    check(g)


@pytest.mark.parametrize("sa,sb", [((3, 5, 7), (3, 7, 19)), ((2, 1, 4, 6), (3, 6, 9)),
                                   ((7,), (2, 7, 5)), ((4, 6), (6,)), ((5, 8), (8, 17))])
def test_matmul_runtime_operands(sa, sb):
    g, (a, b) = graph(sa, sb)
    y, = g.add_node("MatMul", [a, b])
    g.outputs = [y]
    check(g)


def test_nan_and_inf_propagate():
    g, (x, y) = graph((1, 2, 6, 6), (1, 2, 6, 6))
    outs = [g.add_node("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]})[0],
            g.add_node("GlobalMaxPool", [x])[0],
            g.add_node("ReduceMin", [x, g.add_param("ax", np.array([3]))])[0],
            g.add_node("Max", [y, x])[0], g.add_node("Min", [x, y])[0],
            g.add_node("Relu", [x])[0], g.add_node("Softmax", [x])[0],
            g.add_node("Conv", [x, param(g, "w", (3, 2, 3, 3))], {"pads": [1, 1, 1, 1]})[0]]
    g.outputs = outs
    rng = np.random.default_rng(4)
    xv = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    xv[0, 0, 1, 1] = np.nan
    xv[0, 1, 4, 5] = np.inf
    xv[0, 1, 0, 0] = -np.inf
    check(g, threads=(1,), feeds={x: xv, y: rng.standard_normal((1, 2, 6, 6)).astype(np.float32)})


@pytest.mark.parametrize("op,attrs", [("ArgMax", {"axis": 1}), ("ArgMin", {"axis": -1}),
                                      ("ArgMax", {"axis": 2, "keepdims": 0,
                                                  "select_last_index": 1}),
                                      ("Hardmax", {"axis": 1}), ("Hardmax", {})])
def test_arg_and_hardmax(op, attrs):
    g, (x,) = graph((2, 5, 4))
    y, = g.add_node(op, [x], attrs)
    g.outputs = [y]
    v = np.round(np.random.default_rng(5).standard_normal((2, 5, 4)) * 2).astype(np.float32)
    v[0, 2, 1] = np.nan
    check(g, feeds={x: v})


@pytest.mark.parametrize("attrs,scales", [
    ({"mode": "linear"}, [1, 1, 2, 2]),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 1, 1.5, 0.5]),
    ({"mode": "cubic", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 2, 3]),
    ({"mode": "linear", "antialias": 1}, [1, 1, 0.5, 0.75]),
    ({"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, [1, 1, 1.7, 1]),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
      "extrapolation_value": 3.0}, [1, 1, 2, 2]),
])
def test_resize_linear_cubic(attrs, scales):
    g, (x,) = graph((1, 3, 6, 9))
    roi = ""
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        roi = g.add_param("roi", np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], np.float32))
    y, = g.add_node("Resize", [x, roi, g.add_param("sc", np.array(scales, np.float32))], attrs)
    g.outputs = [y]
    check(g)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # reference INT_MIN/-1
@pytest.mark.parametrize("dtype,fmod", [(np.int32, 0), (np.int64, 1), (np.float32, 1)])
def test_mod_and_int_division_by_zero(dtype, fmod):
    from cnncc.ir import DType, Graph, TensorType
    g = Graph("t")
    a = g.add_input("a", TensorType(DType.from_numpy(dtype), (4, 9)))
    b = g.add_input("b", TensorType(DType.from_numpy(dtype), (9,)))
    y, = g.add_node("Mod", [a, b], {"fmod": fmod})
    outs = [y]
    if dtype != np.float32:
        outs.append(g.add_node("Div", [a, b])[0])
    g.outputs = outs
    rng = np.random.default_rng(6)
    av = rng.integers(-20, 20, (4, 9)).astype(dtype)
    bv = np.array([3, -3, 1, -1, 7, 0, 2, -5, 4], dtype)
    if dtype == np.float32:
        av, bv = av * 0.7, bv + 0.5
    av[0, 3] = np.iinfo(dtype).min if dtype != np.float32 else av[0, 3]
    check(g, feeds={a: av, b: bv})


def test_runtime_clip_pad_value_celu_shrink_dropout_mask():
    g, (x, lo, cv) = graph((2, 9), (), ())
    c, = g.add_node("Clip", [x, lo, ""])
    p, = g.add_node("Pad", [x, g.add_param("pads", np.array([0, 1, 0, 2])), cv])
    e, = g.add_node("Celu", [x], {"alpha": 0.7})
    s, = g.add_node("Shrink", [x], {"lambd": 0.3, "bias": 0.1})
    d, m = g.add_node("Dropout", [x], outputs=2)
    g.outputs = [c, p, e, s, d, m]
    check(g, threads=(1,))


def test_layer_norm_runtime_scale():
    g, (x, s) = graph((3, 4, 5), (4, 5))
    y, = g.add_node("LayerNormalization", [x, s], {"axis": 1, "epsilon": 1e-3})
    g.outputs = [y]
    check(g)
