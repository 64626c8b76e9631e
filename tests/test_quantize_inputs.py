"""`cnncc quantize` beyond one-input conv nets: a model with two inputs (calibration from an
.npz with one array per input name) and a classifier head (max pool, global average pool,
Flatten, Gemm) that then runs int8 end to end (fuse_quantized_ops). Bounds: the int8 model
against onnxruntime running the same QDQ file within 3% of the largest output (a step off at
a tie moves later layers), and its top-1 agreement with the float model reported."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper as h, numpy_helper as nh

import cnncc

ort = pytest.importorskip("onnxruntime")
MODEL_TOL = 0.03


def two_input_model(path) -> None:
    rng = np.random.default_rng(11)

    def f(*shape, sd=0.3):
        return nh.from_array(rng.normal(0, sd, shape).astype(np.float32))
    inits = []
    for name, shape in (("wa", (8, 3, 3, 3)), ("wb", (8, 2, 3, 3)), ("w2", (8, 8, 3, 3)),
                        ("fc", (5, 8)), ("fb", (5,))):
        t = f(*shape)
        t.name = name
        inits.append(t)
    N = h.make_node
    nodes = [N("Conv", ["a", "wa"], ["ca"], pads=[1, 1, 1, 1]),
             N("Conv", ["b", "wb"], ["cb"], pads=[1, 1, 1, 1]),
             N("Add", ["ca", "cb"], ["s"]), N("Relu", ["s"], ["r"]),
             N("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Conv", ["p", "w2"], ["c2"], pads=[1, 1, 1, 1]), N("Relu", ["c2"], ["r2"]),
             N("GlobalAveragePool", ["r2"], ["g"]), N("Flatten", ["g"], ["fl"]),
             N("Gemm", ["fl", "fc", "fb"], ["y"], transB=1)]
    g = h.make_graph(nodes, "two", [h.make_tensor_value_info("a", T.FLOAT, (1, 3, 8, 8)),
                                    h.make_tensor_value_info("b", T.FLOAT, (1, 2, 8, 8))],
                     [h.make_tensor_value_info("y", T.FLOAT, (1, 5))], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def test_two_inputs_and_a_classifier_head(tmp_path):
    src = tmp_path / "two.onnx"
    two_input_model(src)
    rng = np.random.default_rng(0)
    npz = tmp_path / "calib.npz"
    np.savez(npz, a=rng.standard_normal((10, 3, 8, 8)).astype(np.float32),
             b=rng.standard_normal((10, 2, 8, 8)).astype(np.float32))
    proto, report = cnncc.quantize(str(src), tmp_path / "q.onnx", calibration=str(npz),
                                   per_channel=True, verbose=False)
    assert report.calibrated == 8 and report.held_out == 2 and report.convs == 4
    assert 0 <= report.top1_agreement <= 1 and report.rel_error < 0.2
    from cnncc.passes import PassContext, run_pipeline
    g = run_pipeline(cnncc.load_graph(proto), PassContext(machine=cnncc.host_target(1)))
    ops = [n.op for n in g.nodes]
    assert ops.count("QuantizeLinear") == 2 and "DequantizeLinear" not in ops, ops
    # The max pool runs on the 8-bit values (blocked by alter_layout_int8 between convs).
    assert "MaxPool" in ops or any(n.op == "PoolNCHWc" and g.types[n.outputs[0]].dtype.np ==
                                   np.uint8 for n in g.nodes), ops
    assert {"QLinearGlobalAveragePool", "QGemm"} <= set(ops), ops
    feeds = {"a": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
             "b": rng.standard_normal((1, 2, 8, 8)).astype(np.float32)}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(proto.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = cnncc.compile(proto, cache=False).run(feeds)["y"]
    assert np.abs(got - want).max() <= MODEL_TOL * np.abs(want).max()


def test_two_input_calibration_errors_name_the_inputs(tmp_path):
    src = tmp_path / "two.onnx"
    two_input_model(src)
    with pytest.raises(cnncc.InputError, match=r"inputs \['a', 'b'\].*one array per input"):
        cnncc.quantize(str(src), calibration={"a": np.zeros((2, 3, 8, 8), np.float32)},
                       verbose=False)
    with pytest.raises(cnncc.InputError, match="sample counts"):
        cnncc.quantize(str(src), calibration={"a": np.zeros((2, 3, 8, 8), np.float32),
                                              "b": np.zeros((3, 2, 8, 8), np.float32)},
                       verbose=False)
    _, report = cnncc.quantize(str(src), samples=3, verbose=False)     # random, per input
    assert report.calibrated == 2 and report.held_out == 1
