"""The ONNX frontend's rewrites: old op forms (opset 7..12) and constant folding, vs onnxruntime.

Each old-form model is run by onnxruntime (which implements every old opset natively) and by cnncc's
reference target after the frontend turned it into the canonical newest form.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cnncc
from cnncc.frontend.onnx import import_model

ort = pytest.importorskip("onnxruntime")
F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def one_node_model(op, opset, inputs, attrs=None, inits=None, n_out=1, out_shapes=None):
    """A model of one node; ``inputs`` maps name -> array (runtime inputs), ``inits`` constants."""
    inits = inits or {}
    node = helper.make_node(op, list(inputs) + list(inits), [f"y{i}" for i in range(n_out)],
                            name="node", **(attrs or {}))
    outputs = [helper.make_value_info(f"y{i}", onnx.TypeProto()) for i in range(n_out)]
    graph = helper.make_graph(
        [node], "g", [vi(k, v.shape, helper.np_dtype_to_tensor_dtype(v.dtype))
                      for k, v in inputs.items()], outputs,
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset <= 13 else model.ir_version
    return model


def run_both(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    compiled = cnncc.compile(model, target="reference")
    got = compiled.run(feeds)
    return [got[n] for n in compiled.output_names], ref


def x4(shape=(2, 3, 4, 5)):
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*v):
    return np.array(v, dtype=np.int64)


CASES = {
    "clip6_attrs": ("Clip", 7, {"x": x4()}, {"min": -0.5, "max": 0.7}, None, 1),
    "clip6_max_only": ("Clip", 7, {"x": x4()}, {"max": 0.1}, None, 1),
    "slice1_attrs": ("Slice", 9, {"x": x4()}, {"starts": [1, 0], "ends": [3, -1],
                                               "axes": [2, 3]}, None, 1),
    "slice1_no_axes": ("Slice", 9, {"x": x4()}, {"starts": [0, 1], "ends": [1, 3]}, None, 1),
    "pad2_constant": ("Pad", 10, {"x": x4()}, {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 1.5},
                      None, 1),
    "pad2_reflect": ("Pad", 10, {"x": x4()}, {"pads": [0, 0, 1, 2, 0, 0, 2, 1],
                                              "mode": "reflect"}, None, 1),
    "squeeze1": ("Squeeze", 11, {"x": x4((2, 1, 3, 1))}, {"axes": [1, -1]}, None, 1),
    "unsqueeze1": ("Unsqueeze", 11, {"x": x4((2, 3))}, {"axes": [0, 3]}, None, 1),
    "reducemean1": ("ReduceMean", 12, {"x": x4()}, {"axes": [1, 3], "keepdims": 0}, None, 1),
    "reducesum1": ("ReduceSum", 12, {"x": x4()}, {"axes": [-1]}, None, 1),
    "reducemax1_all": ("ReduceMax", 12, {"x": x4()}, {}, None, 1),
    "split2_attr": ("Split", 11, {"x": x4((2, 6, 4))}, {"axis": 1, "split": [1, 2, 3]}, None, 3),
    "split2_equal": ("Split", 11, {"x": x4((2, 6, 4))}, {"axis": 1}, None, 2),
    "split13_input": ("Split", 13, {"x": x4((2, 6, 4))}, {"axis": 1}, {"s": i64(4, 2)}, 2),
    "upsample7_nearest": ("Upsample", 7, {"x": x4((1, 2, 3, 4))},
                          {"scales": [1.0, 1.0, 2.0, 3.0]}, None, 1),
    "upsample9_nearest": ("Upsample", 9, {"x": x4((1, 2, 3, 4))}, {},
                          {"s": np.array([1, 1, 2, 2], np.float32)}, 1),
    "upsample9_linear": ("Upsample", 9, {"x": x4((1, 2, 3, 4))}, {"mode": "linear"},
                         {"s": np.array([1, 1, 2, 2], np.float32)}, 1),
    "resize10_nearest_up": ("Resize", 10, {"x": x4((1, 2, 3, 4))}, {},
                            {"s": np.array([1, 1, 2, 3], np.float32)}, 1),
    "resize10_nearest_down": ("Resize", 10, {"x": x4((1, 2, 6, 8))}, {},
                              {"s": np.array([1, 1, 0.5, 0.5], np.float32)}, 1),
    "resize10_linear": ("Resize", 10, {"x": x4((1, 2, 3, 4))}, {"mode": "linear"},
                        {"s": np.array([1, 1, 2, 2], np.float32)}, 1),
    "softmax1_axis1": ("Softmax", 11, {"x": x4()}, {"axis": 1}, None, 1),
    "softmax1_default": ("Softmax", 9, {"x": x4()}, {}, None, 1),
    "logsoftmax1_axis2": ("LogSoftmax", 11, {"x": x4()}, {"axis": 2}, None, 1),
    "hardmax1_axis1": ("Hardmax", 11, {"x": x4()}, {"axis": 1}, None, 1),
    "softmax1_last": ("Softmax", 11, {"x": x4()}, {"axis": 3}, None, 1),
    "batchnorm7": ("BatchNormalization", 7, {"x": x4()}, {"epsilon": 1e-3, "spatial": 1},
                   {"s": RNG.uniform(0.5, 1.5, 3).astype(np.float32),
                    "b": RNG.standard_normal(3).astype(np.float32),
                    "m": RNG.standard_normal(3).astype(np.float32),
                    "v": RNG.uniform(0.5, 1.5, 3).astype(np.float32)}, 1),
    "dropout7": ("Dropout", 7, {"x": x4()}, {"ratio": 0.3}, None, 1),
    "dropout10_mask": ("Dropout", 10, {"x": x4()}, {"ratio": 0.3}, None, 2),
    "topk1": ("TopK", 9, {"x": x4((3, 7))}, {"k": 3}, None, 2),
    "gemm7_broadcast": ("Gemm", 7, {"a": x4((3, 4))}, {"transB": 1, "alpha": 0.5},
                        {"b": x4((5, 4)), "c": x4((5,))}, 1),
    "maxpool1": ("MaxPool", 7, {"x": x4((1, 2, 7, 7))}, {"kernel_shape": [3, 3],
                                                        "strides": [2, 2], "pads": [1, 1, 1, 1]},
                 None, 1),
    "avgpool7_count_pad": ("AveragePool", 7, {"x": x4((1, 2, 7, 7))},
                           {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                            "count_include_pad": 1}, None, 1),
    "scatter9": ("Scatter", 9, {"x": x4((3, 3))}, {"axis": 1},
                 {"i": i64(1, 0, 2, 0, 2, 1, 2, 2, 0).reshape(3, 3), "u": x4((3, 3))}, 1),
    "resize11_sizes": ("Resize", 11, {"x": x4((1, 2, 3, 4))}, {"mode": "nearest"},
                       {"roi": np.zeros(0, np.float32), "sc": np.zeros(0, np.float32),
                        "sz": i64(1, 2, 5, 7)}, 1),
    "resize11_scales_linear": ("Resize", 11, {"x": x4((1, 2, 3, 4))}, {"mode": "linear"},
                               {"roi": np.zeros(0, np.float32),
                                "sc": np.array([1, 1, 2, 1.5], np.float32)}, 1),
    "resize13_cubic": ("Resize", 13, {"x": x4((1, 2, 4, 4))}, {"mode": "cubic"},
                       {"roi": np.zeros(0, np.float32),
                        "sc": np.array([1, 1, 2, 2], np.float32)}, 1),
    "squeeze1_all": ("Squeeze", 11, {"x": x4((1, 3, 1, 2))}, {}, None, 1),
    "slice1_int_max": ("Slice", 9, {"x": x4()}, {"starts": [-3], "ends": [2**63 - 1],
                                                 "axes": [3]}, None, 1),
    "pad2_edge": ("Pad", 10, {"x": x4()}, {"pads": [0, 0, 2, 1, 0, 0, 1, 3], "mode": "edge"},
                  None, 1),
    "reducel2_1": ("ReduceL2", 11, {"x": x4()}, {"axes": [0, 2]}, None, 1),
    "reducelogsumexp_1": ("ReduceLogSumExp", 12, {"x": x4()}, {"axes": [1], "keepdims": 0},
                          None, 1),
    "clip11_inputs": ("Clip", 11, {"x": x4()}, {},
                      {"lo": np.array(-0.2, np.float32), "hi": np.array(0.4, np.float32)}, 1),
    "split7_attr": ("Split", 7, {"x": x4((2, 6, 4))}, {"axis": 2, "split": [3, 1]}, None, 2),
    "conv_opset7": ("Conv", 7, {"x": x4((1, 2, 6, 6))}, {"pads": [1, 1, 1, 1]},
                    {"w": x4((3, 2, 3, 3))}, 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_form_matches_onnxruntime(name):
    op, opset, inputs, attrs, inits, n_out = CASES[name]
    model = one_node_model(op, opset, inputs, attrs, inits, n_out)
    got, ref = run_both(model, inputs)
    if name == "dropout10_mask":
        # onnxruntime returns an all-False mask in inference mode; ONNX's own reference (and
        # the spec of newer versions) an all-True one: compare the mask with ONNX's reference.
        from onnx.reference import ReferenceEvaluator
        ref[1] = ReferenceEvaluator(model).run(None, inputs)[1]
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        if r.dtype == np.bool_ or r.dtype.kind in "iu":
            np.testing.assert_array_equal(g, r)
        else:
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_old_forms_become_canonical():
    model = one_node_model("Clip", 7, {"x": x4()}, {"min": -0.5, "max": 0.7})
    graph = import_model(model)
    (node,) = graph.nodes
    assert node.op == "Clip" and not node.attrs and len(node.inputs) == 3
    assert all(i in graph.params for i in node.inputs[1:])
    graph = import_model(one_node_model("Softmax", 11, {"x": x4()}, {"axis": 1}))
    assert [n.op for n in graph.nodes] == ["Flatten", "Softmax", "Reshape"]


def shape_chain_model():
    """What exporters write for x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("Shape", ["y"], ["yshape"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(i64(0), "axes0"),
             numpy_helper.from_array(i64(-1), "minus1")]
    graph = helper.make_graph(nodes, "g", [vi("x", [2, 3, 4])],
                              [vi("y", [2, 12]), vi("yshape", [2], TensorProto.INT64)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8        # onnxruntime reads IR versions up to 13 only
    return model


def test_shape_arithmetic_folds_to_constants():
    model = shape_chain_model()
    graph = import_model(model)
    assert [n.op for n in graph.nodes] == ["Reshape"]
    assert graph.nodes[0].inputs[1] in graph.params
    # A graph output that is a constant stays an output (a parameter).
    assert "yshape" in graph.params
    np.testing.assert_array_equal(graph.params["yshape"], [2, 12])
    x = x4((2, 3, 4))
    got, ref = run_both(model, {"x": x})
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_folding_is_size_limited():
    shape = numpy_helper.from_array(i64(4096, 8192), "s")     # 128 MiB of float32
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"],
                              value=numpy_helper.from_array(np.array([1], np.float32))),
             helper.make_node("ReduceSum", ["c"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [], [vi("y", [])], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = import_model(model)
    assert [n.op for n in g.nodes] == ["ConstantOfShape", "ReduceSum"]
    g = import_model(model, fold_limit=1 << 28)
    assert not g.nodes and float(g.params["y"]) == 4096 * 8192


def test_dead_nodes_and_unused_initializers_removed():
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Neg", ["x"], ["unused"])]
    inits = [numpy_helper.from_array(np.ones(3, np.float32), "w_unused")]
    graph = helper.make_graph(nodes, "g", [vi("x", [3])], [vi("y", [3])], initializer=inits)
    g = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op for n in g.nodes] == ["Relu"] and not g.params


def test_initializer_listed_as_input_is_a_param():
    w = np.arange(3, dtype=np.float32)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [vi("x", [3]), vi("w", [3])], [vi("y", [3])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    compiled = cnncc.compile(model, target="reference")
    assert compiled.input_names == ["x"]
    np.testing.assert_array_equal(compiled(np.ones(3, np.float32)), w + 1)


def test_every_supported_opset_imports():
    for opset in range(7, onnx.defs.onnx_opset_version() + 1):
        model = one_node_model("Relu", opset, {"x": x4((2, 2))})
        compiled = cnncc.compile(model, target="reference")
        x = x4((2, 2))
        np.testing.assert_array_equal(compiled(x), np.maximum(x, 0))


def test_legacy_attributes_accepted():
    """consumed_inputs, Gemm's broadcast and Cast's string type name (opset-1..6 spellings)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], consumed_inputs=[0]),
             helper.make_node("Gemm", ["r", "b", "c"], ["g"], broadcast=1),
             helper.make_node("Cast", ["g"], ["y"], to="DOUBLE")]
    b, c = x4((3, 4)), x4((4,))
    graph = helper.make_graph(nodes, "g", [vi("x", [2, 3])], [vi("y", [2, 4], TensorProto.DOUBLE)],
                              initializer=[numpy_helper.from_array(b, "b"),
                                           numpy_helper.from_array(c, "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    x = x4((2, 3))
    y = cnncc.compile(model, target="reference")(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, np.maximum(x, 0) @ b + c, rtol=1e-5)


def test_batchnorm_old_attributes():
    stats = {k: RNG.uniform(0.5, 1.5, 3).astype(np.float32) for k in "sbmv"}
    ok = one_node_model("BatchNormalization", 7, {"x": x4()}, {"spatial": 0, "is_test": 1},
                        stats)
    x = x4()
    got = cnncc.compile(ok, target="reference")(x)
    s, b, m, v = (stats[k].reshape(1, 3, 1, 1) for k in "sbmv")
    np.testing.assert_allclose(got, (x - m) / np.sqrt(v + 1e-5) * s + b, rtol=1e-5, atol=1e-6)
    training = one_node_model("BatchNormalization", 7, {"x": x4()}, {}, stats, n_out=3)
    with pytest.raises(cnncc.CompileError, match="statistics outputs"):
        import_model(training)


def test_local_functions_are_inlined():
    body = [helper.make_node("Mul", ["a", "a"], ["sq"]),
            helper.make_node("Add", ["sq", "a"], ["out"])]
    func = helper.make_function("custom.fn", "SquarePlus", ["a"], ["out"], body,
                                [helper.make_opsetid("", 17)])
    node = helper.make_node("SquarePlus", ["x"], ["y"], domain="custom.fn")
    graph = helper.make_graph([node], "g", [vi("x", [3])], [vi("y", [3])])
    model = helper.make_model(graph, functions=[func],
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("custom.fn", 1)])
    x = x4((3,))
    np.testing.assert_allclose(cnncc.compile(model, target="reference")(x), x * x + x, rtol=1e-6)
