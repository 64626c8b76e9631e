"""int8 on blocked activations (alter_layout_int8 -> QConvNCHWc): the graph after the passes
(one quantized region, layout changes only at its edges) and the blocked kernels (dense 3x3,
1x1 at strides 1 and 2, depthwise at strides 1 and 2, the stem reading NCHW, residuals,
ReLU/ReLU6, a max pool of the bytes, channel counts that leave padding lanes) on the host ISA
and on AVX2.

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
    return {"cnncc_u8": ours, "ort_s8": onnx.load(d / "ort.onnx")}, x


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
    return {"blocked_vs_nchw": float(np.abs(blocked - nchw).max()),
            "vs_reference": float(np.abs(blocked - ref).max()) / scale,
            "vs_onnxruntime": float(np.abs(blocked - want).max()) / scale}


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
    assert len(pools) == 1 and g.types[pools[0].outputs[0]].dtype.np == (
        np.uint8 if kind == "cnncc_u8" else np.int8)
    assert "MaxPool" not in ops and "DequantizeLinear" not in ops[:ops.index("FromNCHWc")]
    # The stem reads the quantized image in NCHW; nothing is converted inside the region;
    # one FromNCHWc before the float pooling and classifier.
    assert ops.count("ToNCHWc") == 0 and ops.count("FromNCHWc") == 1
    assert [n.attrs["in_layout"] for n in convs].count("NCHW") == 1
    assert all(n.attrs["block"] == target.lanes for n in convs)
    assert all(g.types[n.outputs[0]].shape[-1] == target.lanes for n in convs)
    residual = [n for n in convs if len(n.inputs) > 9]
    assert len(residual) == 1 and g.types[residual[0].inputs[9]].rank == 5


@pytest.mark.parametrize("kind", ["cnncc_u8", "ort_s8"])
def test_blocked_int8_matches_nchw_reference_and_onnxruntime(quantized, kind):
    protos, x = quantized
    proto = protos[kind]
    out = _check(proto, x)
    assert out["blocked_vs_nchw"] == 0.0, out
    assert out["vs_reference"] <= MODEL_TOL and out["vs_onnxruntime"] <= MODEL_TOL, out
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
