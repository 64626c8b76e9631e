"""Random quantized (QDQ) CNN graphs for differential testing: what fuse_quantized and
fuse_quantized_ops rewrite, with random scales and zero points.

A float input is quantized (uint8 or int8, random scale and zero point); then a chain of
quantized layers, each reading DequantizeLinear of an earlier 8-bit value and ending in a
QuantizeLinear at a random scale / zero point: conv (int8 weights per tensor or per channel,
an int32 or float bias, optional Relu / Clip(0, 6), groups, strides, pads), residual add
[+ Relu] of two values of one shape, max pool (the Q's parameters equal to the DQ's, or not),
average pool, global average pool; optionally a classifier head (Flatten at equal parameters,
Gemm with int8 weights, a float or a quantized output). The model's output is dequantized.
"""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper

from graphgen import Builder, _out_dim

OPSET = 21
IR_VERSION = 10


class QBuilder(Builder):
    """Builder whose values are 8-bit: value -> (scale param, zero point param, dtype)."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.q: dict[str, tuple] = {}

    def dq(self, x: str) -> str:
        s, z, _ = self.q[x]
        return self.node("DequantizeLinear", [x, s, z], self.shapes[x])

    def quant(self, draw, x: str, like: str | None = None) -> str:
        """Q(x) at random parameters (or those of 8-bit value ``like``)."""
        if like is not None:
            s, z, dt = self.q[like]
        else:
            dt = draw(st.sampled_from([np.uint8, np.int8]))
            info = np.iinfo(dt)
            scale = np.float32(draw(st.sampled_from([0.004, 0.01, 0.03, 0.07, 0.2])) *
                               draw(st.floats(0.5, 2.0)))
            s = self.const("s", scale)
            z = self.const("z", np.array(draw(st.integers(info.min, info.max // 2)), dt))
        out = self.node("QuantizeLinear", [x, s, z], self.shapes[x])
        self.q[out] = (s, z, dt)
        return out


@st.composite
def qconv(draw, b: QBuilder, x: str) -> str:
    n, c, h, w = b.shapes[x]
    groups = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
    m = groups * draw(st.integers(1, 9)) if groups < c else c
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.integers(1, 2))
    pads = [draw(st.integers(0, k // 2)) for _ in range(4)]
    oh, ow = (_out_dim(d, k, stride, p0, p1, 1) for d, p0, p1 in
              ((h, pads[0], pads[2]), (w, pads[1], pads[3])))
    if oh < 1 or ow < 1:
        k, pads = 1, [0, 0, 0, 0]
        oh, ow = _out_dim(h, 1, stride, 0, 0, 1), _out_dim(w, 1, stride, 0, 0, 1)
    per_channel = draw(st.booleans())
    rng = np.random.default_rng(b.seed + b.count)
    wq = rng.integers(-127, 128, (m, c // groups, k, k)).astype(np.int8)
    ws = rng.uniform(0.002, 0.02, m if per_channel else ()).astype(np.float32)
    wdq = b.node("DequantizeLinear", [b.const("w", wq), b.const("ws", ws),
                                      b.const("wz", np.zeros(ws.shape, np.int8))],
                 wq.shape, axis=0)
    ins = [b.dq(x), wdq]
    bias = draw(st.sampled_from(["none", "int32", "float"]))
    if bias == "float":
        ins.append(b.const("b", b.rand(m, scale=0.3)))
    elif bias == "int32":
        x_scale = _value(b, b.q[x][0])
        step = (np.float32(x_scale) * np.broadcast_to(ws, (m,))).astype(np.float32)
        bq = rng.integers(-2000, 2000, m).astype(np.int32)
        ins.append(b.node("DequantizeLinear", [b.const("bq", bq), b.const("bs", step),
                                               b.const("bz", np.zeros(m, np.int32))], (m,), axis=0))
    y = b.node("Conv", ins, (n, m, oh, ow), kernel_shape=[k, k], strides=[stride, stride],
               pads=pads, group=groups)
    act = draw(st.sampled_from(["", "Relu", "Clip"]))
    if act == "Relu":
        y = b.node("Relu", [y], b.shapes[y])
    elif act == "Clip":
        y = b.node("Clip", [y, b.const("lo", np.float32(0)), b.const("hi", np.float32(6))],
                   b.shapes[y])
    return b.quant(draw, y)


@st.composite
def qlayer(draw, b: QBuilder, x: str) -> str:
    kind = draw(st.sampled_from(["conv", "conv", "add", "maxpool", "avgpool"]))
    shape = b.shapes[x]
    same = [v for v in b.history if b.shapes[v] == shape and v != x]
    if kind == "add" and same:
        other = draw(st.sampled_from(same))
        if b.q[other][2] == b.q[x][2]:
            y = b.node("Add", [b.dq(x), b.dq(other)], shape)
            if draw(st.booleans()):
                y = b.node("Relu", [y], shape)
            return b.quant(draw, y)
    if kind in ("maxpool", "avgpool") and min(shape[2:]) >= 2:
        k, s = draw(st.integers(2, 3)), draw(st.integers(1, 2))
        p = draw(st.integers(0, k - 1)) if k <= min(shape[2:]) else 0
        k = min(k, min(shape[2:]) + 2 * p)
        oh, ow = (_out_dim(d, k, s, p, p, 1) for d in shape[2:])
        op = "MaxPool" if kind == "maxpool" else "AveragePool"
        attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        if op == "AveragePool":
            attrs["count_include_pad"] = int(draw(st.booleans()))
        y = b.node(op, [b.dq(x)], shape[:2] + (oh, ow), **attrs)
        return b.quant(draw, y, like=x if op == "MaxPool" and draw(st.booleans()) else None)
    return draw(qconv(b, x))


@st.composite
def quantized_models(draw, max_layers: int = 5) -> tuple[onnx.ModelProto, np.ndarray, float]:
    """A random QDQ CNN as an ONNX model (float input and output), a seeded input and the
    output's step: the last QuantizeLinear's scale, or for a float Gemm output the change one
    input step makes at the largest weight (a_scale * 127 * w_scale) plus half an accumulator
    step (the float bias rounded to int32)."""
    seed = draw(st.integers(0, 2**16))
    b = QBuilder(seed)
    n = draw(st.sampled_from([1, 1, 2]))
    c = draw(st.sampled_from([1, 3, 4, 8, 13, 16]))
    h, w = draw(st.integers(2, 10)), draw(st.integers(2, 10))
    b.shapes["x"] = (n, c, h, w)
    x = b.quant(draw, "x")
    b.history.append(x)
    for _ in range(draw(st.integers(1, max_layers))):
        x = draw(qlayer(b, x))
        b.history.append(x)
    head = draw(st.sampled_from(["", "gap", "gemm_float", "gemm_q"]))
    if head:
        g = b.quant(draw, b.node("GlobalAveragePool", [b.dq(x)], b.shapes[x][:2] + (1, 1)))
        x = g
        if head != "gap":
            f = b.quant(draw, b.node("Flatten", [b.dq(g)], b.shapes[g][:2]), like=g)
            k = draw(st.integers(1, 12))
            rng = np.random.default_rng(seed)
            wq = rng.integers(-127, 128, (k, b.shapes[f][1])).astype(np.int8)
            wdq = b.node("DequantizeLinear", [b.const("fc", wq), b.const("fs", np.float32(0.01)),
                                              b.const("fz", np.int8(0))], wq.shape)
            y = b.node("Gemm", [b.dq(f), wdq, b.const("fb", b.rand(k))], (n, k), transB=1)
            x = b.quant(draw, y) if head == "gemm_q" else y
            a_scale = _value(b, b.q[f][0])
            step = a_scale * 0.01 * 127.5
    if x in b.q:
        step = _value(b, b.q[x][0])
    out = b.dq(x) if x in b.q else x
    graph = helper.make_graph(
        b.nodes, f"qfuzz{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(b.shapes["x"]))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(b.shapes[out]))], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    inp = np.random.default_rng(seed).standard_normal(b.shapes["x"]).astype(np.float32) * 2
    return model, inp, float(step)


def _value(b: Builder, name: str) -> float:
    return float(onnx.numpy_helper.to_array(next(t for t in b.inits if t.name == name)))
