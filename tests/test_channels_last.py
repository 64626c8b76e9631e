"""LayerNorm over channels and Linear layers on channels-last tensors without transposes
(lift_channels_last, ChannelLayerNorm): ConvNeXt-Tiny compiles to one NCHWc region; exporter-style
graphs against onnxruntime, channel counts that are not a multiple of the block included;
stretches that branch stay as they are."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import cnncc
from cnncc import host_target
from cnncc.dsl import zoo
from cnncc.frontend.onnx import import_model
from cnncc.passes import PassContext, run_pipeline
from cnncc.testing import relative_error


def _ops(g) -> list[str]:
    return [n.op for n in g.nodes]


def test_convnext_is_one_nchwc_region():
    net = zoo.ZOO["convnext_tiny"](input_size=64)
    g = run_pipeline(net.to_graph(), PassContext(opt_level=3, machine=host_target(1)))
    ops = _ops(g)
    assert "Transpose" not in ops and "MatMul" not in ops and "ToNCHWc" not in ops
    assert ops.count("FromNCHWc") == 1 and ops.count("ChannelLayerNorm") == 23
    assert all(n.attrs["block"] == host_target(1).lanes for n in g.nodes
               if n.op == "ChannelLayerNorm")
    assert sum(n.attrs.get("activation") == "Gelu" for n in g.nodes) == 18
    x = net.example_inputs(seed=1)[0]
    ref = cnncc.compile(net, target="reference")(x)
    assert relative_error(cnncc.compile(net, threads=2)(x), ref) <= 1e-4


# 3 x 4 images: the subject is the channel count (a multiple of the block or not), and the
# unfused (opt 1) 1x1 conv + Gelu of a 5 x 6 image took ~25 CPU s of LLVM (6.7 MB of IR).
H, W = 3, 4


def _model(channels: int, branch: bool = False) -> onnx.ModelProto:
    """Conv -> LayerNorm2d (Transpose, LayerNormalization, Transpose) -> Linear block on
    channels-last (MatMul + Add, Gelu, MatMul + Add) -> Transpose -> layer scale -> + input."""
    rng = np.random.default_rng(0)
    c, k = channels, 2 * channels

    def t(name, shape, s=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)
    inits = [t("w", (c, 3, 3, 3)), t("b", (c,)), t("g", (c,), 1.0), t("beta", (c,)),
             t("w1", (c, k)), t("b1", (k,)), t("w2", (k, c)), t("b2", (c,)),
             t("gamma", (c, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "g", "beta"], ["n"], axis=-1,
                              epsilon=1e-6),
             helper.make_node("MatMul", ["n", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Gelu", ["a1"], ["ge"]),
             helper.make_node("MatMul", ["ge", "w2"], ["m2"]),
             helper.make_node("Add", ["b2", "m2"], ["a2"]),
             helper.make_node("Transpose", ["a2"], ["back"], perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["back", "gamma"], ["s"]),
             helper.make_node("Add", ["s", "c"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, H, W])]
    if branch:      # the LayerNorm's output is read twice: the stretch is not a chain
        nodes.append(helper.make_node("Relu", ["n"], ["r"]))
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, H, W, c]))
    g = helper.make_graph(nodes, "cl", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, H, W])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("channels,branch", [(32, False), (20, False), (20, True)])
def test_channels_last_block_against_onnxruntime(channels, branch):
    m = _model(channels, branch)
    g = run_pipeline(import_model(m), PassContext(opt_level=3, machine=host_target(1)))
    ops = _ops(g)
    assert ("Transpose" in ops) == branch and ("ChannelLayerNorm" in ops) != branch, ops
    x = np.random.default_rng(1).standard_normal((1, 3, H, W)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    for opt in (1, 3):     # ChannelLayerNorm on NCHW (opt 1) and blocked (opt 3)
        got = cnncc.compile(m, opt_level=opt, threads=1).run({"x": x})
        for name, w in zip(["y", "r"], want):
            assert relative_error(got[name], w) <= 1e-5, (opt, name)


def _decomposed(axis_last: bool) -> onnx.ModelProto:
    """LayerNorm spelled ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add:
    channels-last between transposes (an old exporter's LayerNorm2d) or over axis 1 (a
    hand-written channels-first LayerNorm)."""
    rng = np.random.default_rng(0)
    c = 24
    shape = [c] if axis_last else [c, 1, 1]
    inits = [numpy_helper.from_array((rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32),
                                     "w"),
             numpy_helper.from_array(np.array([-1 if axis_last else 1], np.int64), "axes"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, shape).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "b")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    src = "c"
    if axis_last:
        nodes.append(n("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]))
        src = "t"
    nodes += [n("ReduceMean", [src, "axes"], ["m"]), n("Sub", [src, "m"], ["d"]),
              n("Pow", ["d", "two"], ["p"]), n("ReduceMean", ["p", "axes"], ["v"]),
              n("Add", ["v", "eps"], ["e"]), n("Sqrt", ["e"], ["s"]), n("Div", ["d", "s"], ["q"]),
              n("Mul", ["q", "g"], ["qg"]), n("Add", ["qg", "b"], ["ln"])]
    if axis_last:
        nodes.append(n("Transpose", ["ln"], ["y"], perm=[0, 3, 1, 2]))
    else:
        nodes.append(n("Relu", ["ln"], ["y"]))
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 5, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, c, 5, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("axis_last", [True, False])
def test_decomposed_layer_norm(axis_last):
    m = _decomposed(axis_last)
    g = run_pipeline(import_model(m), PassContext(opt_level=3, machine=host_target(1)))
    ops = _ops(g)
    assert "ChannelLayerNorm" in ops and not {"ReduceMean", "Transpose", "Div", "ToNCHWc"} & set(
        ops), ops
    x = np.random.default_rng(1).standard_normal((1, 3, 5, 6)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert relative_error(cnncc.compile(m, threads=1)(x), want) <= 1e-5
    assert relative_error(cnncc.compile(m, target="reference")(x), want) <= 1e-5
