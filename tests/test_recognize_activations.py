"""recognize_activations: the exporters' spellings of SiLU, HardSwish, Gelu (erf and tanh) and Mish
become one op and fuse into the conv epilogue; compiled models match onnxruntime; look-alikes
that compute something else, or whose intermediates are read elsewhere, stay as they are."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import cnncc
from cnncc.frontend.onnx import import_model
from cnncc.passes import PassContext, run_pipeline
from cnncc.testing import relative_error

SQRT2 = 1.4142135623730951


def _model(pattern: str) -> onnx.ModelProto:
    """x -> Conv(8 -> 8, 3x3) -> c -> the activation as ``pattern`` spells it -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]

    def const(name, v):
        inits.append(numpy_helper.from_array(np.array(v, np.float32), name))
        return name

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    if pattern == "silu":
        n("Mul", ["c", n("Sigmoid", ["c"], "s")], "y")
    elif pattern == "silu_swapped":
        n("Mul", [n("Sigmoid", ["c"], "s"), "c"], "y")
    elif pattern == "hardswish_hsig":
        n("Mul", ["c", n("HardSigmoid", ["c"], "h", alpha=1 / 6, beta=0.5)], "y")
    elif pattern == "hardswish_clip":
        a = n("Add", ["c", const("three", 3.0)], "a")
        cl = n("Clip", [a, const("zero", 0.0), const("six", 6.0)], "cl")
        n("Div", [n("Mul", ["c", cl], "m"), "six"], "y")
    elif pattern == "gelu_erf":          # torch.onnx's GELU below opset 20
        e = n("Erf", [n("Div", ["c", const("sqrt2", SQRT2)], "d")], "e")
        m = n("Mul", ["c", n("Add", [e, const("one", 1.0)], "a")], "m")
        n("Mul", [m, const("half", 0.5)], "y")
    elif pattern == "gelu_tanh":
        p = n("Pow", ["c", const("three", 3.0)], "p")
        inner = n("Add", ["c", n("Mul", [p, const("k", 0.044715)], "kp")], "i")
        t = n("Tanh", [n("Mul", [inner, const("beta", np.sqrt(2 / np.pi))], "bi")], "t")
        m = n("Mul", [n("Mul", ["c", const("half", 0.5)], "hx"), n("Add", [t, const("one", 1.0)],
                                                                   "a")], "y")
    elif pattern == "mish":
        n("Mul", ["c", n("Tanh", [n("Softplus", ["c"], "sp")], "t")], "y")
    elif pattern == "swish2":            # x * sigmoid(2x): no candidate computes this
        n("Mul", ["c", n("Sigmoid", [n("Mul", ["c", const("two", 2.0)], "c2")], "s")], "y")
    elif pattern == "silu_shared":       # the Sigmoid is read again: SiLU would drop it
        s = n("Sigmoid", ["c"], "s")
        n("Add", [n("Mul", ["c", s], "m"), s], "y")
    elif pattern == "silu_of_other":     # Mul(c, Sigmoid(x)): two different values
        n("Mul", ["c", n("Sigmoid", ["x"], "s")], "y")
    g = helper.make_graph(nodes, pattern, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, 8, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


# pattern -> (the ops left after opt_level 1: the epilogue fusion included)
CASES = {
    "silu": ["FusedConv:Swish"],
    "silu_swapped": ["FusedConv:Swish"],
    "hardswish_hsig": ["FusedConv:HardSwish"],
    "hardswish_clip": ["FusedConv:HardSwish"],
    "gelu_erf": ["FusedConv:Gelu"],
    "gelu_tanh": ["FusedConv:GeluTanh"],       # Gelu(approximate=tanh) in the epilogue
    "mish": ["FusedConv:Mish"],
    "swish2": ["Conv", "Mul", "Sigmoid", "Mul"],
    "silu_shared": ["Conv", "Sigmoid", "Mul", "Add"],
    "silu_of_other": ["Sigmoid", "Conv", "Mul"],
}


def _ops(g) -> list[str]:
    return [n.op + (f":{n.attrs['activation']}" if n.attrs.get("activation") else "")
            for n in g.nodes]


@pytest.mark.parametrize("pattern", CASES)
def test_recognized_and_fused(pattern):
    m = _model(pattern)
    g = run_pipeline(import_model(m), PassContext(opt_level=1))
    got = _ops(g)
    want = CASES[pattern]
    assert sorted(got) == sorted(want), got
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32) * 3
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    y = cnncc.compile(m, threads=1)(x)
    assert relative_error(y, ref) <= 1e-5, pattern
