"""Random CNN graphs for differential testing (hypothesis strategies -> ONNX ModelProto).

A graph is a chain of layers over one NCHW input with occasional skip connections (residual adds,
channel concats) back to earlier tensors of the same shape. Layer attributes are drawn to hit the
hard cases: odd and prime channel counts, 1x1 maps, stride > kernel, asymmetric padding, dilation,
groups and depthwise, ceil_mode pooling, broadcasting adds, and the chains the fusion and layout
passes rewrite (conv -> BN -> activation, -> residual add).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
ACTIVATIONS = ["Relu", "LeakyRelu", "Relu6", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "SiLU", "Elu"]


@dataclass
class Builder:
    seed: int
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)      # value -> NCHW shape
    history: list = field(default_factory=list)     # values usable as skip sources
    count: int = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, base: str, value: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def rand(self, *shape, lo=None, hi=None, scale=1.0) -> np.ndarray:
        rng = np.random.default_rng(self.seed + self.count)
        if lo is not None:
            return rng.uniform(lo, hi, shape).astype(np.float32)
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def node(self, op: str, inputs: list[str], shape: tuple, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shapes[out] = tuple(shape)
        return out


def _out_dim(size: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool = False) -> int:
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        return 0
    n = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (n - 1) * s >= size + p0:      # ONNX: the last window must start inside
        n -= 1
    return n


@st.composite
def conv_layer(draw, b: Builder, x: str) -> str:
    n, c, h, w = b.shapes[x]
    depthwise = c > 1 and draw(st.booleans()) and draw(st.booleans())
    groups = c if depthwise else draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
    mult = draw(st.sampled_from([1, 2])) if depthwise else 1
    m = c * mult if depthwise else groups * draw(st.integers(1, 7))
    k = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 3])))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    dil = (draw(st.sampled_from([1, 1, 2])), 1)
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    oh = _out_dim(h, k[0], stride[0], pads[0], pads[2], dil[0])
    ow = _out_dim(w, k[1], stride[1], pads[1], pads[3], dil[1])
    if oh < 1 or ow < 1:
        pads = [k[0] // 2, k[1] // 2, k[0] // 2, k[1] // 2]
        k, dil = (min(k[0], h), min(k[1], w)), (1, 1)
        oh = _out_dim(h, k[0], stride[0], pads[0], pads[2], 1)
        ow = _out_dim(w, k[1], stride[1], pads[1], pads[3], 1)
    fan_in = (c // groups) * k[0] * k[1]
    wt = b.const("w", b.rand(m, c // groups, *k, scale=np.sqrt(2.0 / fan_in)))
    ins = [x, wt] + ([b.const("b", b.rand(m, scale=0.1))] if draw(st.booleans()) else [])
    return b.node("Conv", ins, (n, m, oh, ow), kernel_shape=list(k), strides=list(stride),
                  dilations=list(dil), pads=pads, group=groups)


@st.composite
def pool_layer(draw, b: Builder, x: str) -> str:
    n, c, h, w = b.shapes[x]
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    k = (draw(st.integers(1, min(3, h))), draw(st.integers(1, min(3, w))))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = [draw(st.integers(0, k[0] - 1)), draw(st.integers(0, k[1] - 1)),
            draw(st.integers(0, k[0] - 1)), draw(st.integers(0, k[1] - 1))]
    ceil = draw(st.booleans())
    oh = _out_dim(h, k[0], stride[0], pads[0], pads[2], 1, ceil)
    ow = _out_dim(w, k[1], stride[1], pads[1], pads[3], 1, ceil)
    attrs = dict(kernel_shape=list(k), strides=list(stride), pads=pads, ceil_mode=int(ceil))
    if op == "AveragePool":
        attrs["count_include_pad"] = int(draw(st.booleans()))
    return b.node(op, [x], (n, c, oh, ow), **attrs)


def activation(b: Builder, x: str, kind: str) -> str:
    shape = b.shapes[x]
    if kind == "Relu6":
        lo, hi = b.const("lo", np.float32(0)), b.const("hi", np.float32(6))
        return b.node("Clip", [x, lo, hi], shape)
    if kind == "SiLU":
        s = b.node("Sigmoid", [x], shape)
        return b.node("Mul", [x, s], shape)
    if kind == "LeakyRelu":
        return b.node("LeakyRelu", [x], shape, alpha=0.1)
    return b.node(kind, [x], shape)


def batch_norm(b: Builder, x: str) -> str:
    c = b.shapes[x][1]
    ps = [b.const("g", b.rand(c, lo=0.5, hi=1.5)), b.const("be", b.rand(c, scale=0.1)),
          b.const("mu", b.rand(c, scale=0.1)), b.const("var", b.rand(c, lo=0.5, hi=1.5))]
    return b.node("BatchNormalization", [x, *ps], b.shapes[x], epsilon=1e-5)


@st.composite
def layer(draw, b: Builder, x: str) -> str:
    kind = draw(st.sampled_from(["conv", "conv", "conv_bn_act", "pool", "act", "skip_add",
                                 "concat", "bias_add"]))
    shape = b.shapes[x]
    if kind == "conv":
        return draw(conv_layer(b, x))
    if kind == "conv_bn_act":
        y = batch_norm(b, draw(conv_layer(b, x)))
        return activation(b, y, draw(st.sampled_from(ACTIVATIONS)))
    if kind == "pool":
        return draw(pool_layer(b, x))
    if kind == "act":
        return activation(b, x, draw(st.sampled_from(ACTIVATIONS)))
    same = [v for v in b.history if b.shapes[v] == shape and v != x]
    if kind == "skip_add" and same:
        y = b.node("Add", [x, draw(st.sampled_from(same))], shape)
        return activation(b, y, "Relu") if draw(st.booleans()) else y
    spatial = [v for v in b.history if b.shapes[v][2:] == shape[2:] and v != x]
    if kind == "concat" and spatial:
        other = draw(st.sampled_from(spatial))
        out = (shape[0], shape[1] + b.shapes[other][1], *shape[2:])
        return b.node("Concat", [x, other], out, axis=1)
    # Broadcasting add of a per-channel (or scalar) constant.
    cshape = draw(st.sampled_from([(shape[1], 1, 1), (1,), (1, shape[1], 1, 1)]))
    return b.node("Add", [x, b.const("c", b.rand(*cshape))], shape)


@st.composite
def cnn_models(draw, max_layers: int = 6) -> tuple[onnx.ModelProto, np.ndarray]:
    """A random CNN as an ONNX model and a matching seeded input."""
    seed = draw(st.integers(0, 2**16))
    b = Builder(seed)
    n = draw(st.sampled_from([1, 1, 2]))
    c = draw(st.sampled_from([1, 2, 3, 5, 7, 8, 13, 16, 17]))
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    b.shapes["x"] = (n, c, h, w)
    x = "x"
    b.history.append(x)
    for _ in range(draw(st.integers(1, max_layers))):
        x = draw(layer(b, x))
        b.history.append(x)
    if draw(st.booleans()):       # classifier head: GAP -> Flatten -> Gemm
        g = b.node("GlobalAveragePool", [x], b.shapes[x][:2] + (1, 1))
        f = b.node("Flatten", [g], b.shapes[g][:2])
        k = draw(st.integers(1, 10))
        wt = b.const("fc", b.rand(k, b.shapes[f][1], scale=0.3))
        x = b.node("Gemm", [f, wt, b.const("fcb", b.rand(k))], (n, k), transB=1)
    graph = helper.make_graph(
        b.nodes, f"fuzz{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(b.shapes["x"]))],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, list(b.shapes[x]))], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    inp = np.random.default_rng(seed).standard_normal(b.shapes["x"]).astype(np.float32)
    return model, inp
