"""The squeeze-excitation block in NCHWc: EfficientNet-B0 and MobileNetV3 compile with every SE
gate applied inside the 1x1 conv that reads the gated map (fuse_channel_scale), no layout
transform inside the net and no elementwise kernel left; outputs against the reference
interpreter; look-alikes that must stay a Mul."""
from __future__ import annotations

import numpy as np
import pytest

import cnncc
from cnncc.dsl import zoo
from cnncc.ir import DType, Graph, TensorType
from cnncc.passes import PassContext, run_pipeline
from cnncc.passes.fuse_channel_scale import fuse_channel_scale
from cnncc import host_target
from cnncc.testing import relative_error

F32 = DType.float32
SE_BLOCKS = {"efficientnet_b0": 16, "mobilenet_v3_small": 9}


def _optimized(g: Graph) -> Graph:
    return run_pipeline(g, PassContext(opt_level=3, machine=host_target(1)))


@pytest.mark.parametrize("name", SE_BLOCKS)
def test_se_gate_inside_the_conv(name):
    net = zoo.ZOO[name](input_size=64)
    g = _optimized(net.to_graph())
    ops = [n.op for n in g.nodes]
    scaled = [n for n in g.nodes if n.op == "ConvNCHWc" and len(n.inputs) == 5]
    assert len(scaled) == SE_BLOCKS[name]
    assert "Mul" not in ops and "Sigmoid" not in ops and "HardSigmoid" not in ops, ops
    # One layout transform: the last one, before the classifier.
    assert "ToNCHWc" not in ops and ops.count("FromNCHWc") == 1
    assert ops.index("FromNCHWc") > max(k for k, n in enumerate(g.nodes) if n.op == "ConvNCHWc")
    x = net.example_inputs(seed=1)[0]
    ref = cnncc.compile(net, target="reference")(x)
    model = cnncc.compile(net, threads=2)
    assert relative_error(model(x), ref) <= 1e-4
    # A batch runs each image with its own gate (the weights are scaled per image).
    x2 = (x * 0.5 + 0.1).astype(np.float32)
    both = model(np.concatenate([x, x2]))
    assert relative_error(both[1:], cnncc.compile(net, target="reference")(x2)) <= 1e-4


def _blocked_graph(s_shape, extra_user=False, kernel=1, pads=0) -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("se")
    g.add_input("x", TensorType(F32, (1, 2, 5, 5, 16)))
    g.add_input("s", TensorType(F32, s_shape))
    (y,) = g.add_node("Mul", ["x", "s"], name="gate")
    w = g.add_param("w", (rng.standard_normal((24, 32, kernel, kernel)) * 0.2).astype(np.float32))
    (c,) = g.add_node("ConvNCHWc", [y, w], {"block": 16, "pads": [pads] * 4}, name="conv")
    g.outputs = [c]
    if extra_user:
        (r,) = g.add_node("Relu", [y], name="other")
        g.outputs.append(r)
    return g.verify()


@pytest.mark.parametrize("case,fused", [
    ("gate", True), ("spatial_scale", False), ("shared", False), ("padded_3x3", False)])
def test_fuse_channel_scale_rewrites(case, fused):
    kw = {"gate": {}, "spatial_scale": {"s_shape": (1, 2, 5, 5, 16)},
          "shared": {"extra_user": True}, "padded_3x3": {"kernel": 3, "pads": 1}}[case]
    g = _blocked_graph(kw.pop("s_shape", (1, 2, 1, 1, 16)), **kw)
    out = fuse_channel_scale(g).verify()
    assert ("Mul" not in [n.op for n in out.nodes]) == fused
    rng = np.random.default_rng(1)
    feeds = {i: rng.standard_normal(g.types[i].shape).astype(np.float32) for i in g.inputs}
    want = cnncc.compile(g, target="reference").run(feeds)
    got = cnncc.compile(out, target="reference").run(feeds)
    for k in want:
        assert relative_error(got[k], want[k]) <= 1e-6
    if fused:
        native = cnncc.compile(g, threads=1).run(feeds)
        for k in want:
            assert relative_error(native[k], want[k]) <= 1e-5
