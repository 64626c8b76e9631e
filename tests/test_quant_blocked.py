"""int8 on blocked activations (alter_layout_int8 -> QConvNCHWc): the graph after the passes
(one quantized region, layout changes only at its edges) and the blocked kernels (dense 3x3,
1x1 at strides 1 and 2, depthwise at strides 1 and 2, the stem reading NCHW, residuals,
ReLU/ReLU6, a max pool of the bytes, channel counts that leave padding lanes) on uint8
activations (`cnncc quantize`) and int8 ones (onnxruntime's default QDQ; a net whose int8
values all reach -128 and 127 at zero points -128, 0 and 127), on the host ISA and on AVX2.

Bounds: the blocked program computes what the NCHW int8 program computes with the same
arithmetic (int32 sums, float32 requantization), so their outputs are bit-identical; against
the reference target and onnxruntime on the same QDQ file, within MODEL_TOL of the largest
output (a one-step rounding difference grows through the layers; tests/test_quant.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

import cnncc
from cnncc.dsl import functional as F, layers as L
from cnncc.dsl.net import build

ort = pytest.importorskip("onnxruntime")

AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"
MODEL_TOL = 0.03
NCHW_ONLY = frozenset({"alter_layout_int8"})


def _conv_bn(x, out, k, stride=1, groups=1, act=F.relu6, name="c"):
    y = L.conv2d(x, out, k, stride=stride, padding=k // 2, groups=groups, bias=False,
                 name=f"{name}.conv")
    y = L.batch_norm(y, name=f"{name}.bn")
    return act(y) if act is not None else y


def _mixed(x):
    """Every blocked conv kind; 12, 20, 40 channels leave padding lanes for 8 and 16."""
    y = _conv_bn(x, 12, 3, name="stem")                        # 3 -> 12: reads NCHW
    y = F.max_pool2d(y, 3, 1, padding=1)                       # pools the bytes, padded
    y = _conv_bn(y, 12, 3, 2, groups=12, name="dw1")           # depthwise, stride 2
    y = _conv_bn(y, 20, 1, act=None, name="pw1")               # 1x1, stride 1
    z = _conv_bn(y, 40, 1, name="expand")
    z = _conv_bn(z, 40, 3, groups=40, name="dw2")              # depthwise, stride 1
    y = _conv_bn(z, 20, 1, act=None, name="project") + y       # residual
    y = _conv_bn(y, 24, 3, act=F.relu, name="dense")           # 3x3, padded
    y = _conv_bn(y, 16, 1, 2, act=F.relu, name="down")         # 1x1, stride 2
    return L.dense(F.flatten(F.global_avg_pool(y)), 10, name="fc")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The net quantized by `cnncc quantize` (uint8 activations) and by onnxruntime's
    quantize_static (its default QDQ form: int8 activations and weights)."""
    from onnxruntime import quantization as q
    net = build(_mixed, (1, 3, 19, 17), "mixed", 3)
    ours, _ = cnncc.quantize(net, samples=4, per_channel=True, verbose=False)
    d = tmp_path_factory.mktemp("qb")
    net.to_onnx(d / "f.onnx")
    rng = np.random.default_rng(2)
    name = ours.graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: rng.standard_normal((1, 3, 19, 17)).astype(np.float32)}
                            for _ in range(3)])

        def get_next(self):
            return next(self.it, None)
    # onnxruntime's pre-processing folds the BatchNorms into the convs (as it recommends).
    from onnxruntime.quantization.shape_inference import quant_pre_process
    quant_pre_process(str(d / "f.onnx"), str(d / "pre.onnx"), skip_symbolic_shape=True)
    q.quantize_static(str(d / "pre.onnx"), str(d / "ort.onnx"), Reader(), per_channel=True,
                      quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QInt8,
                      weight_type=q.QuantType.QInt8)
    x = np.random.default_rng(7).standard_normal((1, 3, 19, 17)).astype(np.float32)
    return {"cnncc_u8": ours, "ort_s8": onnx.load(d / "ort.onnx"),
            "extreme_s8": _extreme_s8(x)}, x


# int8 activations of _extreme_s8 and their zero points: every value holds -128 and 127.
EXTREME_ZERO_POINTS = {"xq": 0, "a0": 127, "a1": -128, "a2": 127, "a3": 0, "a3c": 0, "a4": -128,
                       "a5": -128}


def _extreme_s8(x: np.ndarray) -> onnx.ModelProto:
    """A QDQ net on int8 activations at zero points -128, 0 and 127 (EXTREME_ZERO_POINTS),
    each layer's scale chosen from its float output so that both -128 and 127 occur; int8
    weights per channel with rows of -128 and of 127: stem 3x3 (NCHW input), 1x1 reading the
    blocked bytes in place, 3x3 padded with -128, depthwise 3x3 padded with 127, 1x1 + residual
    + ReLU, a padded max pool of the bytes."""
    from onnx import helper as h, numpy_helper as nh
    rng = np.random.default_rng(11)
    nodes, inits, channels = [], [], {"x": 3}

    def const(name, v):
        inits.append(nh.from_array(np.asarray(v), name))
        return name

    def model(out: str, extra=()) -> onnx.ModelProto:
        g = h.make_graph(nodes, "extreme", [h.make_tensor_value_info(
            "x", onnx.TensorProto.FLOAT, list(x.shape))], [onnx.ValueInfoProto(name=o)
                                                          for o in (out, *extra)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
        m.ir_version = 10
        return m

    def run(outs) -> list:
        return ort.InferenceSession(model(outs[0], outs[1:]).SerializeToString(), providers=[
            "CPUExecutionProvider"]).run(outs, {"x": x})

    def q(v: str, name: str) -> str:
        """Q(v) at zero point EXTREME_ZERO_POINTS[name], at a scale that saturates both ends."""
        zp = EXTREME_ZERO_POINTS[name]
        lo, hi = (float(f(run([v])[0])) for f in (np.min, np.max))
        reach = {0: min(hi, -lo) / 127, 127: -lo / 255, -128: hi / 255}[zp]
        scale = np.float32(0.45 * reach)
        nodes.append(h.make_node("QuantizeLinear", [v, const(f"{name}.s", scale),
                                                    const(f"{name}.z", np.int8(zp))], [name]))
        channels[name] = channels.get(v, 0)
        return name

    def dq(a: str) -> str:
        if not any(f"{a}.f" in n.output for n in nodes):
            nodes.append(h.make_node("DequantizeLinear", [a, f"{a}.s", f"{a}.z"],
                                     [f"{a}.f"]))
        return f"{a}.f"

    def conv(a: str, oc: int, k: int, name: str, group: int = 1) -> str:
        ic = channels[a]
        w = rng.integers(-128, 128, (oc, ic // group, k, k)).astype(np.int8)
        w[0], w[1] = -128, 127
        ws = (rng.uniform(0.5, 1.5, oc) / (64 * np.sqrt(ic // group * k * k))).astype(np.float32)
        wq = const(f"{name}.w.q", w)
        nodes.append(h.make_node("DequantizeLinear", [wq, const(f"{name}.w.s", ws), const(
            f"{name}.w.z", np.zeros(oc, np.int8))], [f"{name}.w"], axis=0))
        nodes.append(h.make_node("Conv", [dq(a), f"{name}.w"], [f"{name}.y"], group=group,
                                 pads=[k // 2] * 4))
        channels[f"{name}.y"] = oc
        return f"{name}.y"

    a0 = q(conv(q("x", "xq"), 16, 3, "stem"), "a0")
    a1 = q(conv(a0, 16, 1, "pw1"), "a1")
    a2 = q(conv(a1, 24, 3, "dense"), "a2")
    a3 = q(conv(a2, 24, 3, "dw", group=24), "a3")
    c = dq(q(conv(a3, 24, 1, "pw2"), "a3c"))
    nodes.append(h.make_node("Add", [c, dq(a3)], ["sum"]))
    nodes.append(h.make_node("Relu", ["sum"], ["relu"]))
    a4 = q("relu", "a4")
    nodes.append(h.make_node("MaxPool", [dq(a4)], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1]))
    nodes.append(h.make_node("QuantizeLinear", ["pool", "a4.s", "a4.z"], ["a5"]))
    bytes_ = dict(zip(EXTREME_ZERO_POINTS, run(list(EXTREME_ZERO_POINTS))))
    for name, v in bytes_.items():
        assert v.dtype == np.int8 and v.min() == -128 and v.max() == 127, (name, v.min(), v.max())
    nodes.append(h.make_node("DequantizeLinear", ["a5", "a4.s", "a4.z"], ["y"]))
    return model("y")


def _check(proto, x, threads: int = 1) -> dict:
    """Blocked vs NCHW int8 (max |diff|), and both vs reference and onnxruntime (relative to
    the largest output)."""
    import onnxruntime
    so = onnxruntime.SessionOptions()
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = onnxruntime.InferenceSession(proto.SerializeToString(), so, providers=[
        "CPUExecutionProvider"]).run(None, {proto.graph.input[0].name: x})[0]
    ref = cnncc.compile(proto, target="reference")(x)[0]
    blocked = cnncc.compile(proto, threads=threads)(x)[0]
    nchw = cnncc.compile(proto, threads=threads, skip_passes=NCHW_ONLY)(x)[0]
    scale = float(np.abs(want).max())
    step = _output_step(proto)
    return {"blocked_vs_nchw": float(np.abs(blocked - nchw).max()),
            "vs_reference": float(np.abs(blocked - ref).max()) / scale,
            "vs_onnxruntime": float(np.abs(blocked - want).max()) / scale,
            "vs_onnxruntime_steps": float(np.abs(blocked - want).max()) / step}


def _output_step(proto) -> float:
    """The scale of the DequantizeLinear giving the model's output (its quantization step)."""
    dq = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    if dq.op_type != "DequantizeLinear":
        return float("nan")
    return float(next(numpy_helper.to_array(t) for t in proto.graph.initializer
                      if t.name == dq.input[1]))


@pytest.mark.parametrize("kind", ["cnncc_u8", "ort_s8"])
def test_quantized_convs_form_one_blocked_region(quantized, kind):
    from cnncc.passes import PassContext, run_pipeline
    proto = quantized[0][kind]
    target = cnncc.host_target(1)
    g = run_pipeline(cnncc.load_graph(proto), PassContext(machine=target))
    ops = [n.op for n in g.nodes]
    convs = [n for n in g.nodes if n.op == "QConvNCHWc"]
    assert len(convs) == 8 and "QConv" not in ops and "Conv" not in ops
    pools = [n for n in g.nodes if n.op == "PoolNCHWc"]
    # int8 activations are held as uint8 inside the region (zero points + 128).
    assert len(pools) == 1 and g.types[pools[0].outputs[0]].dtype.np == np.uint8
    assert all(g.types[n.outputs[0]].dtype.np == np.uint8 for n in convs)
    assert "MaxPool" not in ops and "DequantizeLinear" not in ops[:ops.index("FromNCHWc")]
    # The stem reads the quantized image in NCHW; nothing is converted inside the region;
    # one FromNCHWc before the float pooling and classifier (then int8 bytes again: ShiftBytes).
    assert ops.count("ToNCHWc") == 0 and ops.count("FromNCHWc") == 1
    assert ops.count("ShiftBytes") == (kind == "ort_s8")
    if kind == "ort_s8":
        assert ops.index("ShiftBytes") == ops.index("FromNCHWc") + 1
    assert [n.attrs["in_layout"] for n in convs].count("NCHW") == 1
    assert all(n.attrs["block"] == target.lanes for n in convs)
    assert all(g.types[n.outputs[0]].shape[-1] == target.lanes for n in convs)
    residual = [n for n in convs if len(n.inputs) > 9]
    assert len(residual) == 1 and g.types[residual[0].inputs[9]].rank == 5


def _extreme_region(quantized):
    from cnncc.passes import PassContext, run_pipeline
    return run_pipeline(cnncc.load_graph(quantized[0]["extreme_s8"]),
                        PassContext(machine=cnncc.host_target(1)))


def _inside(node) -> bool:
    """A node of the blocked region that reads blocked bytes (not the stem reading NCHW)."""
    return node.op == "PoolNCHWc" or (node.op == "QConvNCHWc"
                                      and node.attrs["in_layout"] == "NCHWc")


def test_extreme_int8_bytes_stay_blocked(quantized):
    """_extreme_s8's convs and byte pool on blocked bytes, one region: its int8 activations are
    held as uint8 with zero points + 128 (-128 -> 0, 0 -> 128, 127 -> 255); the stem reads the
    int8 image, the one ShiftBytes turns the region's output back into int8."""
    g = _extreme_region(quantized)
    ops = [n.op for n in g.nodes]
    assert ops.count("QConvNCHWc") == 5 and ops.count("PoolNCHWc") == 1, ops
    assert ops.count("FromNCHWc") == 1 and "ToNCHWc" not in ops and "QConv" not in ops, ops
    assert ops[ops.index("FromNCHWc") + 1] == "ShiftBytes" and ops.count("ShiftBytes") == 1
    stem, *inside = [n for n in g.nodes if n.op in ("QConvNCHWc", "PoolNCHWc")]
    assert g.types[stem.inputs[0]].dtype.np == np.int8 and not _inside(stem)
    assert all(_inside(n) and g.types[n.inputs[0]].dtype.np == np.uint8 for n in inside)
    zps = {int(g.params[n.inputs[2]]) for n in inside if n.op == "QConvNCHWc"}
    assert zps == {EXTREME_ZERO_POINTS[a] + 128 for a in ("a0", "a1", "a2", "a3")}, zps


def test_no_kernel_inside_the_region_shifts_bytes(quantized):
    """Every kernel of the region's convs and pool (the 1x1 reading in place, the 3x3 and its
    padded row copy, the depthwise, the residual conv, the pool) reads plain uint8 bytes:
    no dot4_s8s8 (a xor per loaded word) and no byte converted through int32 + 128 in a copy.
    Only the edges convert: the stem's pack of the int8 image and the ShiftBytes after it."""
    from cnncc.ir.loop_printer import format_kernel
    from cnncc.lower.program import lower_graph
    g = _extreme_region(quantized)
    texts = {}
    for kernel, i in lower_graph(g, cnncc.host_target(1)).ctx.kernels:
        texts.setdefault(i, []).append(format_kernel(kernel))
    inside = [i for i, n in enumerate(g.nodes) if _inside(n)]
    # Each node's kernel + the 3x3's padded row copy (and, without VNNI, the int16-pair
    # copies of the 1x1 convs' inputs: cnncc/lower/conv_int8_dot.py blocked_words).
    copies = [t for i in inside for t in texts[i] if "_pad(" in t.splitlines()[0]]
    assert len(inside) == 5 and sum(len(texts[i]) for i in inside) == 5 + len(copies)
    assert len(copies) == (1 if cnncc.host_target(1).vnni else 3), copies
    for i in inside:
        for text in texts[i]:
            assert "dot4_s8s8" not in text and "u8((i32(" not in text, text
    stem = next(i for i, n in enumerate(g.nodes) if n.op == "QConvNCHWc")
    assert any("+ 128))" in t for t in texts[stem])         # the pattern the check looks for


@pytest.mark.parametrize("kind", ["cnncc_u8", "ort_s8", "extreme_s8"])
def test_blocked_int8_matches_nchw_reference_and_onnxruntime(quantized, kind):
    protos, x = quantized
    proto = protos[kind]
    out = _check(proto, x)
    assert out["blocked_vs_nchw"] == 0.0, out
    assert out["vs_reference"] <= MODEL_TOL and out["vs_onnxruntime"] <= MODEL_TOL, out
    if kind == "extreme_s8":
        # One layer deep per value, no rounding tie reached: equal to the reference, within
        # one output step of onnxruntime.
        assert out["vs_reference"] == 0.0 and out["vs_onnxruntime_steps"] <= 1, out
    two = cnncc.compile(proto, threads=2)(x)[0]          # the work split over 2 threads
    assert np.array_equal(two, cnncc.compile(proto, threads=1)(x)[0])


def test_blocked_int8_on_avx2(quantized, tmp_path):
    """The same program built for AVX2 (8 lanes, 16 registers, vpmaddubsw) in a child."""
    protos, x = quantized
    for kind, proto in protos.items():
        (tmp_path / f"{kind}.onnx").write_bytes(proto.SerializeToString())
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, CNNCC_FEATURES=AVX2, CNNCC_CACHE="0")
    env.pop("CNNCC_CPU", None)
    code = textwrap.dedent(f"""
        import json, sys, numpy as np, onnx, cnncc
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_quant_blocked import _check
        x = np.load({str(tmp_path / "x.npy")!r})
        out = {{k: _check(onnx.load(f"{tmp_path}/{{k}}.onnx"), x) for k in {sorted(protos)!r}}}
        out["isa"] = cnncc.host_target(1).isa
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.pop("isa") == "avx2"
    for kind, res in out.items():
        assert res["blocked_vs_nchw"] == 0.0, (kind, res)
        assert res["vs_reference"] <= MODEL_TOL and res["vs_onnxruntime"] <= MODEL_TOL, \
            (kind, res)
    assert out["extreme_s8"]["vs_reference"] == 0.0, out
    assert out["extreme_s8"]["vs_onnxruntime_steps"] <= 1, out


def _depthwise_qdq(shape, k, stride, dilation, pads, zp) -> onnx.ModelProto:
    """Q(x) -> one depthwise conv (int8 weights per channel, an int32 bias) -> Q -> DQ, int8
    activations at zero point ``zp``."""
    from onnx import helper as h
    rng = np.random.default_rng(3)
    ch = shape[1]
    w = rng.integers(-128, 128, (ch, 1, k, k)).astype(np.int8)
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("s", np.float32(0.02)), ("z", np.int8(zp)), ("w", w),
        ("ws", rng.uniform(0.5, 1.5, ch).astype(np.float32) / 256),
        ("wz", np.zeros(ch, np.int8)), ("b", rng.normal(0, 1, ch).astype(np.float32)),
        ("ys", np.float32(0.05)), ("yz", np.int8(-zp // 2)))]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
             h.make_node("Conv", ["xf", "wf", "b"], ["c"], group=ch, kernel_shape=[k, k],
                         strides=[stride] * 2, dilations=[dilation] * 2, pads=pads),
             h.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    g = h.make_graph(nodes, "dw", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                             list(shape))],
                     [onnx.ValueInfoProto(name="y")], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("shape,k,stride,dilation,pads,zp", [
    ((1, 20, 9, 23), 5, 2, 1, [2, 1, 0, 2], 127),     # asymmetric pads, border rows both ends
    ((1, 17, 4, 5), 3, 1, 2, [1, 2, 2, 1], 0),        # dilated, every row and column a border
])
def test_blocked_depthwise_reads_the_unpadded_input(shape, k, stride, dilation, pads, zp):
    """The blocked depthwise conv sums only the taps inside the image (no padded copy), its
    accumulators starting from bias - zx * the valid taps' weights: bit-identical to the NCHW
    int8 conv (which pads with the zero point), equal to the reference, within one output step
    of onnxruntime. The int8 image enters the region as uint8 through ShiftBytes + ToNCHWc and
    leaves it through FromNCHWc + ShiftBytes."""
    proto = _depthwise_qdq(shape, k, stride, dilation, pads, zp)
    from cnncc.passes import PassContext, run_pipeline
    g = run_pipeline(cnncc.load_graph(proto), PassContext(machine=cnncc.host_target(1)))
    assert [n.op for n in g.nodes] == ["QuantizeLinear", "ShiftBytes", "ToNCHWc", "QConvNCHWc",
                                       "FromNCHWc", "ShiftBytes", "DequantizeLinear"]
    x = np.random.default_rng(8).normal(0, 1.5, shape).astype(np.float32)
    out = _check(proto, x)
    assert out["blocked_vs_nchw"] == 0.0 and out["vs_reference"] == 0.0, out
    assert out["vs_onnxruntime_steps"] <= 1, out
