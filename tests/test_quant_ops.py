"""The native int8 matrix products and QOperator ops (cnncc/lower/gemm_int8.py, pool_int8.py):
ConvInteger, MatMulInteger, QLinearMatMul, MaxPool on 8-bit values and com.microsoft QGemm,
QLinearAdd, QLinearAveragePool and QLinearGlobalAveragePool in one model, compiled once per
ISA, against the reference target and onnxruntime; QOperator and QDQ CNNs made by
onnxruntime's quantize_static; the fuse_quantized_ops pass.

Bounds, per op: ConvInteger and MatMulInteger (int32 outputs) and MaxPool equal; QGemm with a
float output within 1e-5 of its largest magnitude; QLinearAdd equal to the
reference (the same float32 arithmetic), within one step of onnxruntime (whose broadcasting
QLinearAdd rounds differently); QLinearMatMul, QGemm and the quantized average pools within one
output step (float32 requantization where the reference rounds in float64).
The cases reach both kernel paths: u8 x s8 dot products (int8 weights: vpdpbusd with VNNI,
vpmaddubsw + vpmaddwd with 8-bit weights split in two on AVX2) and int32 products (uint8
weights whose w - w_zero_point leaves int8), with extreme bytes (0/255, -128/127).
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
from onnx import TensorProto as T, helper as h, numpy_helper as nh

import cnncc

ort = pytest.importorskip("onnxruntime")

AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"
EXACT = ("ci_plain", "ci_group", "ci_1x1", "mi_dot", "mi_plain", "add", "add_bc", "gemm_f",
         "mp_u8", "mp_s8")
ONE_STEP = ("qm_batched", "qm_sat", "gap_last", "gap_s8", "gemm_q", "avg_pad", "avg_s8")


def _c(name, value):
    return nh.from_array(np.asarray(value), name)


def _tt(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def ops_model():
    """One model holding every case; its inputs (with extreme values placed)."""
    rng = np.random.default_rng(5)
    u8, s8 = np.uint8, np.int8

    def ints(dtype, shape, lo=None, hi=None):
        i = np.iinfo(dtype)
        lo, hi = i.min if lo is None else lo, i.max if hi is None else hi
        v = rng.integers(lo, hi + 1, shape).astype(dtype)
        v.reshape(-1)[:2] = [lo, hi]
        return v
    feeds = {"xu": ints(u8, (1, 8, 7, 7)), "xs": ints(s8, (2, 6, 7, 6)),
             "au": ints(u8, (5, 20)), "as8": ints(s8, (2, 3, 12)),
             "c1": ints(u8, (1, 4, 5, 5)), "c2": ints(u8, (1, 4, 1, 5)),
             "gl": ints(u8, (1, 5, 5, 12)), "gs": ints(s8, (2, 10, 3, 3))}
    inits = [_c("wu", ints(u8, (16, 8, 3, 3))), _c("wuz", u8(100)), _c("xuz", u8(128)),
             _c("wg", ints(s8, (16, 3, 3, 2))),
             _c("wgz", s8(0)), _c("xsz", s8(-7)),
             _c("w1", ints(s8, (24, 8, 1, 1))),
             _c("bm", ints(s8, (20, 33))), _c("bm7", ints(s8, (20, 33), -120, 120)),
             _c("bmz", rng.integers(-2, 3, 33).astype(s8)),
             _c("auz", u8(3)), _c("bu", ints(u8, (20, 9))), _c("buz", u8(3)),
             _c("bb", ints(s8, (2, 12, 17))),
             _c("bbz", s8(0)), _c("bT", ints(s8, (33, 20))),
             _c("cb", rng.integers(-3000, 3000, 33).astype(np.int32)), _c("f1", np.float32(0.02)), _c("f2", np.float32(0.05)),
             _c("f3", np.float32(0.7)), _c("f4", np.float32(0.0005)), _c("z8", s8(5)),
             _c("zu", u8(128)), _c("zu2", u8(17))]
    N = h.make_node
    nodes = [N("ConvInteger", ["xu", "wu", "xuz", "wuz"], ["ci_plain"], pads=[1, 1, 1, 1]),
             N("ConvInteger", ["xs", "wg", "xsz", "wgz"], ["ci_group"], group=2,
               pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
             N("ConvInteger", ["xu", "w1"], ["ci_1x1"]),
             N("MatMulInteger", ["au", "bm7", "auz", "bmz"], ["mi_dot"]),
             N("MatMulInteger", ["au", "bu", "auz", "buz"], ["mi_plain"]),
             N("QLinearMatMul", ["as8", "f1", "xsz", "bb", "f2", "bbz", "f3", "z8"],
               ["qm_batched"]),
             N("QLinearMatMul", ["au", "f2", "auz", "bm", "f1", "bbz", "f4", "zu2"], ["qm_sat"]),
             N("QLinearAdd", ["c1", "f1", "zu", "c1", "f2", "zu2", "f3", "zu"], ["add"],
               domain="com.microsoft"),
             N("QLinearAdd", ["c1", "f3", "zu", "c2", "f2", "zu2", "f1"], ["add_bc"],
               domain="com.microsoft"),
             N("QGemm", ["au", "f2", "auz", "bT", "f1", "bbz", "cb", "f4", "zu2"], ["gemm_q"],
               domain="com.microsoft", transB=1, alpha=0.5),
             N("QGemm", ["au", "f2", "auz", "bm7", "f1", "bbz"], ["gemm_f"],
               domain="com.microsoft"),
             N("QLinearAveragePool", ["c1", "f1", "zu2", "f2", "zu"], ["avg_pad"],
               domain="com.microsoft", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1], count_include_pad=1, ceil_mode=1),
             N("QLinearAveragePool", ["gs", "f2", "xsz", "f1", "z8"], ["avg_s8"],
               domain="com.microsoft", kernel_shape=[2, 2], pads=[0, 1, 1, 0]),
             N("MaxPool", ["xu"], ["mp_u8"], kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1]),
             N("MaxPool", ["xs"], ["mp_s8"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             N("QLinearGlobalAveragePool", ["gl", "f1", "zu2", "f2", "zu"], ["gap_last"],
               domain="com.microsoft", channels_last=1),
             N("QLinearGlobalAveragePool", ["gs", "f2", "xsz", "f1", "z8"], ["gap_s8"],
               domain="com.microsoft")]
    shapes = {"ci_plain": (T.INT32, (1, 16, 7, 7)), "ci_group": (T.INT32, (2, 16, 4, 5)),
              "ci_1x1": (T.INT32, (1, 24, 7, 7)), "mi_dot": (T.INT32, (5, 33)),
              "mi_plain": (T.INT32, (5, 9)), "qm_batched": (T.INT8, (2, 3, 17)),
              "qm_sat": (T.UINT8, (5, 33)), "add": (T.UINT8, (1, 4, 5, 5)),
              "add_bc": (T.UINT8, (1, 4, 5, 5)), "gap_last": (T.UINT8, (1, 1, 1, 12)),
              "gap_s8": (T.INT8, (2, 10, 1, 1)), "gemm_q": (T.UINT8, (5, 33)),
              "gemm_f": (T.FLOAT, (5, 33)), "avg_pad": (T.UINT8, (1, 4, 3, 3)),
              "avg_s8": (T.INT8, (2, 10, 3, 3)), "mp_u8": (T.UINT8, (1, 8, 4, 4)),
              "mp_s8": (T.INT8, (2, 6, 4, 3))}
    g = h.make_graph(nodes, "ops", [h.make_tensor_value_info(k, _tt(v.dtype), v.shape)
                                    for k, v in feeds.items()],
                     [h.make_tensor_value_info(k, t, s) for k, (t, s) in shapes.items()], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m, feeds


def steps(got: dict, want: dict) -> dict:
    """Largest difference per output, in output steps (int32 units for the integer ops; a
    float output counts 1 when off by more than 1e-5 of its largest magnitude)."""
    out = {}
    for k in EXACT + ONE_STEP:
        if got[k].dtype == np.float32:
            out[k] = int(np.abs(got[k] - want[k]).max() > 1e-5 * np.abs(want[k]).max())
        else:
            out[k] = int(np.abs(got[k].astype(np.int64) - want[k].astype(np.int64)).max())
    return out


def _check(out: dict, ort_: bool = False) -> None:
    """Within the bounds (against onnxruntime QLinearAdd too may be one step off: it computes
    broadcast adds with another formula)."""
    one = ONE_STEP + (("add", "add_bc") if ort_ else ())
    bad = {k: v for k, v in out.items() if v > (1 if k in one else 0)}
    assert not bad, out


@pytest.fixture(scope="module")
def cases():
    model, feeds = ops_model()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    want = dict(zip(names, sess.run(None, feeds)))
    ref = cnncc.compile(model, target="reference").run(feeds)
    return model, feeds, want, ref


def test_reference_matches_onnxruntime(cases):
    _, _, want, ref = cases
    _check(steps(ref, want), ort_=True)


def test_native_matches_reference_and_onnxruntime(cases):
    model, feeds, want, ref = cases
    got = cnncc.compile(model, cache=False).run(feeds)
    for k in EXACT + ONE_STEP:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    _check(steps(got, ref))
    _check(steps(got, want), ort_=True)
    assert (want["qm_sat"] == 255).any() and (want["qm_sat"] == 0).any()   # saturates both ways


def test_cuda_kernels_compile_and_emulate(cases):
    """The GPU lowering of the same ops (int32 products, no dot4): nvcc compiles it for sm_80,
    and the cuda-emu target runs it within the bounds of the reference."""
    from cnncc.backends.cuda.build import find_nvcc, nvcc_check
    from cnncc.backends.cuda.model import generate
    from cnncc.driver import lower
    from cnncc.passes import PassContext, run_pipeline
    model, feeds, _, ref = cases
    if find_nvcc() is not None:
        graph = run_pipeline(cnncc.load_graph(model), PassContext(opt_level=3, target="cuda"))
        assert nvcc_check(generate(lower(graph, "cuda", 3)).module.source, ("sm_80",))
    _check(steps(cnncc.compile(model, target="cuda-emu", cache=False).run(feeds), ref))


def test_native_on_avx2_matches_reference():
    """The same model compiled for AVX2 (8 lanes, no VNNI) in a child process."""
    env = dict(os.environ, CNNCC_FEATURES=AVX2, CNNCC_CACHE="0")
    env.pop("CNNCC_CPU", None)
    code = textwrap.dedent(f"""
        import json, sys, cnncc
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_quant_ops import ops_model, steps
        model, feeds = ops_model()
        out = steps(cnncc.compile(model).run(feeds),
                    cnncc.compile(model, target="reference").run(feeds))
        print(json.dumps(dict(out, isa=cnncc.host_target(1).isa)))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.pop("isa") == "avx2"
    _check(out)


def cnn(path, avg: bool) -> None:
    """A small float CNN: conv + ReLU, max pool, 1x1 conv with a residual add + ReLU, [average
    pool,] global average pool, flatten and a Gemm classifier (transB=1, as PyTorch writes)."""
    rng = np.random.default_rng(3)
    c, m = 8, 16

    def f(*shape, sd=0.2):
        return rng.normal(0, sd, shape).astype(np.float32)
    inits = [_c(k, v) for k, v in dict(w1=f(m, c, 3, 3, sd=.3), b1=f(m, sd=.1), w2=f(m, m, 1, 1),
                                       b2=f(m, sd=.1), wf=f(10, m, sd=.3), bf=f(10, sd=.1)).items()]
    N = h.make_node
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
             N("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Conv", ["p1", "w2", "b2"], ["c2"]), N("Add", ["c2", "p1"], ["a"]),
             N("Relu", ["a"], ["r2"])]
    if avg:
        nodes.append(N("AveragePool", ["r2"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes += [N("GlobalAveragePool", ["ap" if avg else "r2"], ["g"]), N("Flatten", ["g"], ["fl"]),
              N("Gemm", ["fl", "wf", "bf"], ["y"], transB=1)]
    g = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", T.FLOAT, (1, c, 12, 12))],
                     [h.make_tensor_value_info("y", T.FLOAT, (1, 10))], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def quantized_cnns(tmp_path_factory):
    """{(format, avg): path} of cnn() quantized by onnxruntime's quantize_static (uint8
    activations, int8 weights per channel)."""
    qz = pytest.importorskip("onnxruntime.quantization")
    d = tmp_path_factory.mktemp("cnn")
    out = {}
    for avg in (False, True):
        cnn(d / f"f{avg}.onnx", avg)
        for fmt in ("QOperator", "QDQ"):
            data = iter([{"x": np.random.default_rng(i).normal(0, 1, (1, 8, 12, 12))
                          .astype(np.float32)} for i in range(6)])

            class Reader(qz.CalibrationDataReader):
                def get_next(self):
                    return next(data, None)
            out[fmt, avg] = d / f"{fmt}{avg}.onnx"
            qz.quantize_static(str(d / f"f{avg}.onnx"), str(out[fmt, avg]), Reader(),
                               per_channel=True, quant_format=getattr(qz.QuantFormat, fmt),
                               activation_type=qz.QuantType.QUInt8,
                               weight_type=qz.QuantType.QInt8)
    return out


def _run_ort(path, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def _out_step(path) -> float:
    model = onnx.load(path)
    dq = model.graph.node[-1]
    return float(next(nh.to_array(t) for t in model.graph.initializer if t.name == dq.input[1]))


@pytest.mark.parametrize("avg", [False, True])
def test_qoperator_cnn_compiles_natively(quantized_cnns, avg):
    """QLinearConv, MaxPool on uint8, QLinearAdd, [QLinearAveragePool,] QLinearGlobalAveragePool,
    Flatten and QGemm: every node native, the output within 2 steps of onnxruntime's (a step
    off at a tie in one layer moves the next ones)."""
    path = quantized_cnns["QOperator", avg]
    x = np.random.default_rng(99).normal(0, 1, (1, 8, 12, 12)).astype(np.float32)
    want, step = _run_ort(path, x), _out_step(path)
    ref = cnncc.compile(path, target="reference")(x)[0]
    got = cnncc.compile(path, cache=False)(x)[0]
    assert np.abs(ref - want).max() <= 2 * step * 1.001
    assert np.abs(got - want).max() <= 2 * step * 1.001
    assert np.abs(got - ref).max() <= 2 * step * 1.001


@pytest.mark.parametrize("avg", [False, True])
def test_qdq_cnn_stays_int8(quantized_cnns, avg):
    """fuse_quantized_ops: the QDQ CNN's max pool, pools and Gemm classifier run on 8-bit
    values (no float op between the input's Q and the output's DQ), within 2 output steps of
    onnxruntime and of the reference (which runs the float chain between Q and DQ)."""
    from cnncc.passes import PassContext, run_pipeline
    path = quantized_cnns["QDQ", avg]
    g = run_pipeline(cnncc.load_graph(path), PassContext(machine=cnncc.host_target(1)))
    ops = [n.op for n in g.nodes]
    # alter_layout_int8 blocks the convs and the 8-bit max pool between them.
    assert ops == ["QuantizeLinear", "ToNCHWc", "QConvNCHWc", "PoolNCHWc", "QConvNCHWc",
                   "FromNCHWc"] + (["QLinearAveragePool"] if avg else []) + [
        "QLinearGlobalAveragePool", "Reshape", "QGemm", "DequantizeLinear"], ops
    x = np.random.default_rng(99).normal(0, 1, (1, 8, 12, 12)).astype(np.float32)
    want, step = _run_ort(path, x), _out_step(path)
    ref = cnncc.compile(path, target="reference")(x)[0]
    got = cnncc.compile(path, cache=False)(x)[0]
    assert np.abs(got - want).max() <= 2 * step * 1.001
    assert np.abs(got - ref).max() <= 2 * step * 1.001


def _qdq_chain(op, attrs, q_params, w=None, bias=None, relu=False):
    """x (uint8) -> DQ(0.05, 7) -> op [W = DQ(w), bias] [-> Relu] -> Q(q_params) -> y."""
    s, z = q_params
    inits = [_c("s", np.float32(0.05)), _c("z", np.uint8(7)), _c("ys", np.float32(s)),
             _c("yz", np.uint8(z))]
    ins = ["xf"]
    if w is not None:
        inits += [_c("w", w), _c("wsc", np.float32(0.01)), _c("wz", np.int8(0))]
        ins.append("wf")
    if bias is not None:
        inits.append(_c("bias", bias))
        ins.append("bias")
    nodes = [h.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"])] + (
        [h.make_node("DequantizeLinear", ["w", "wsc", "wz"], ["wf"])] if w is not None else []) + [
        h.make_node(op, ins, ["o0" if relu else "o"], **attrs)] + (
        [h.make_node("Relu", ["o0"], ["o"])] if relu else []) + [
        h.make_node("QuantizeLinear", ["o", "ys", "yz"], ["y"])]
    x = np.random.default_rng(4).integers(0, 256, (1, 6, 7, 7) if w is None else (3, 12))
    g = h.make_graph(nodes, "c", [h.make_tensor_value_info("x", T.UINT8, x.shape)],
                     [h.make_tensor_value_info("y", T.UINT8, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    return m, x.astype(np.uint8)


@pytest.mark.parametrize("case", ["maxpool_same", "maxpool_rescaled", "gemm_alpha_float_bias",
                                  "matmul"])
def test_fuse_quantized_ops_conditions_and_bounds(case):
    """Max pool fuses only where the Q's scale and zero point equal the DQ's, and is then
    equal to the float chain; Gemm (alpha, transB, a float bias rounded to the accumulator)
    and MatMul become QGemm within one step of it."""
    from cnncc.passes import PassContext, run_pipeline
    mp = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    w = np.random.default_rng(6).integers(-128, 128, (5, 12)).astype(np.int8)
    model, x = {
        "maxpool_same": lambda: _qdq_chain("MaxPool", mp, (0.05, 7)),
        "maxpool_rescaled": lambda: _qdq_chain("MaxPool", mp, (0.1, 7)),
        "gemm_alpha_float_bias": lambda: _qdq_chain(
            "Gemm", dict(transB=1, alpha=0.5, beta=2.0), (0.02, 120), w,
            np.linspace(-1, 1, 5).astype(np.float32)),
        "matmul": lambda: _qdq_chain("MatMul", {}, (0.03, 128), np.ascontiguousarray(w.T)),
    }[case]()
    ops = [n.op for n in run_pipeline(cnncc.load_graph(model),
                                      PassContext(machine=cnncc.host_target(1))).nodes]
    fused = {"maxpool_same": "MaxPool", "gemm_alpha_float_bias": "QGemm", "matmul": "QGemm"}
    assert ("DequantizeLinear" not in ops) == (case in fused), ops
    ref = cnncc.compile(model, target="reference").run({"x": x})["y"]
    got = cnncc.compile(model, cache=False).run({"x": x})["y"]
    diff = int(np.abs(got.astype(int) - ref.astype(int)).max())
    assert diff <= (0 if case.startswith("maxpool") else 1), diff


@pytest.mark.parametrize("case", ["gemm_relu", "global_max_pool"])
def test_relu_after_qgemm_and_global_max_pool_stay_8bit(case):
    """Q(Relu(Gemm(DQ, DQ))) becomes QGemm + a max with the Q's zero point (within one step of
    the float chain, as QGemm), Q(GlobalMaxPool(DQ)) at equal parameters the pool on the bytes
    (a MaxPool of the whole image, equal): no float op left, on llvm and cuda-emu, against the reference and onnxruntime."""
    from cnncc.passes import PassContext, run_pipeline
    w = np.random.default_rng(6).integers(-128, 128, (5, 12)).astype(np.int8)
    model, x = _qdq_chain("Gemm", dict(transB=1), (0.02, 9), w,
                          np.linspace(-1, 1, 5).astype(np.float32), relu=True) \
        if case == "gemm_relu" else _qdq_chain("GlobalMaxPool", {}, (0.05, 7))
    ops = [n.op for n in run_pipeline(cnncc.load_graph(model),
                                      PassContext(machine=cnncc.host_target(1))).nodes]
    assert ops == (["QGemm", "Max"] if case == "gemm_relu" else ["MaxPool"]), ops
    ref = cnncc.compile(model, target="reference").run({"x": x})["y"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString(), so, providers=[
        "CPUExecutionProvider"]).run(None, {"x": x})[0]
    bound = 1 if case == "gemm_relu" else 0
    for target in ("llvm", "cuda-emu"):
        got = cnncc.compile(model, target=target, cache=False).run({"x": x})["y"]
        assert got.dtype == ref.dtype and got.shape == ref.shape
        for other in (ref, want):
            assert int(np.abs(got.astype(int) - other.astype(int)).max()) <= bound, target
    if case == "gemm_relu":
        assert (ref == 9).any() and (ref > 9).any()      # the ReLU clamps some outputs


def test_relu_read_elsewhere_stays_float():
    """A Relu whose float output is also a graph output is not folded into the QGemm."""
    from cnncc.passes import PassContext, run_pipeline
    w = np.random.default_rng(6).integers(-128, 128, (5, 12)).astype(np.int8)
    model, _ = _qdq_chain("Gemm", dict(transB=1), (0.02, 9), w, relu=True)
    model.graph.output.append(h.make_tensor_value_info("o", T.FLOAT, None))
    ops = [n.op for n in run_pipeline(cnncc.load_graph(model),
                                      PassContext(machine=cnncc.host_target(1))).nodes]
    assert "Relu" in ops and "Max" not in ops, ops


def test_runtime_weights_are_refused_by_name():
    node = h.make_node("MatMulInteger", ["a", "b"], ["y"])
    g = h.make_graph([node], "m", [h.make_tensor_value_info("a", T.UINT8, (2, 4)),
                                   h.make_tensor_value_info("b", T.INT8, (4, 3))],
                     [h.make_tensor_value_info("y", T.INT32, (2, 3))])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    with pytest.raises(cnncc.CompileError, match="MatMulInteger.*input 1 .*must be a constant"):
        cnncc.compile(m, cache=False)
