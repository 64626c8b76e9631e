"""Real CNNs imported from ONNX and run on every target, checked against onnxruntime.

* The 9 "light" model-zoo CNNs shipped in onnx/backend/test/data/light (opset 9; their weights are
  ConstantOfShape nodes). Input as onnx's own backend runner makes it (arange / n over the input
  shape, `Runner.generate_dummy_data(random=False)`); expected output: the shipped
  light_*_output_0.pb AND onnxruntime on the same input, at relative error
  max|diff| / max|ref| <= 1e-4.
* The same models with their constant weights replaced by seeded random ones (so convolutions,
  pooling and dense layers see non-trivial data) against onnxruntime.
* The exported torchvision models of ../shared/models (beside the repository) when that folder
  exists: weights refilled by its fill_weights.py, compared with the stored onnxruntime output.
"""
from __future__ import annotations

import functools
import glob
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import cnncc
from cnncc.testing import target_params

TARGETS = target_params()

ort = pytest.importorskip("onnxruntime")

REL_TOL = 1e-4
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem[len("light_"):] for p in LIGHT_DIR.glob("light_*.onnx"))
SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, f"shape {got.shape}, expected {ref.shape}"
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def run_ort(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def runtime_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    assert len(inputs) == 1, [vi.name for vi in inputs]
    return inputs[0]


def dummy_input(vi: onnx.ValueInfoProto) -> np.ndarray:
    """The input onnx's backend runner feeds light models: arange(n) / n over the input shape."""
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                  for d in vi.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def test_light_models_present():
    assert len(LIGHT_MODELS) == 9, f"expected the 9 light models in {LIGHT_DIR}: {LIGHT_MODELS}"


# A model's targets are collected one after the other: each of these is made once for them
# (per test process), not once per target.
@functools.lru_cache(maxsize=2)
def light_case(name: str) -> tuple:
    """(path, input name, input, shipped expected output, onnxruntime's output) of a light
    model."""
    path = str(LIGHT_DIR / f"light_{name}.onnx")
    vi = runtime_input(onnx.load(path))
    x = dummy_input(vi)
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"light_{name}_output_0.pb")))
    return path, vi.name, x, expected, run_ort(path, {vi.name: x})[0]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model(name, target):
    path, input_name, x, expected, ref = light_case(name)
    compiled = cnncc.compile(path, target=target)
    got = compiled.run({input_name: x})
    out = got[compiled.output_names[0]]
    assert rel_err(out, ref) <= REL_TOL
    assert rel_err(out, expected) <= REL_TOL


def randomize_weights(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """Replace every float ConstantOfShape (the light models' weights) by seeded random data.

    A final Softmax is removed so that the logits are compared.

    Scales follow He initialization for 4-D (conv) and 2-D (dense) weights; 1-D tensors (biases,
    BatchNorm scale/mean/var) are drawn from [0.5, 1.5] so that variances stay positive.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        is_float = value is None or value.data_type == onnx.TensorProto.FLOAT
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits or not is_float:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        if len(shape) == 1:
            w = rng.uniform(0.5, 1.5, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            w = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), node.output[0]))
    if kept and kept[-1].op_type == "Softmax" and kept[-1].output[0] == graph.output[0].name:
        # Compare the logits: random weights can saturate the softmax into one-hot vectors,
        # which would hide differences.
        graph.output[0].name = kept.pop().input[0]
    del graph.node[:]
    graph.node.extend(kept)
    # IR version 3 required every initializer to be listed as a graph input; 4 dropped that.
    out.ir_version = max(out.ir_version, 4)
    return out


# The FC-heavy models have 100-400 MB of dense weights: random refills of those are slow and
# memory-hungry; the convolutional ones cover every op kind of the set.
RANDOM_WEIGHT_MODELS = [m for m in LIGHT_MODELS if m not in ("vgg19", "bvlc_alexnet", "zfnet512")]


@functools.lru_cache(maxsize=2)
def random_weights_case(name: str) -> tuple:
    """(model with random weights, input name, input, onnxruntime's output) of a light model
    (see light_case)."""
    model = randomize_weights(onnx.load(str(LIGHT_DIR / f"light_{name}.onnx")), seed=7)
    vi = runtime_input(model)
    shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    return model, vi.name, x, run_ort(model, {vi.name: x})[0]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", RANDOM_WEIGHT_MODELS)
def test_light_model_random_weights(name, target):
    model, input_name, x, ref = random_weights_case(name)
    compiled = cnncc.compile(model, target=target)
    out = compiled.run({input_name: x})[compiled.output_names[0]]
    assert np.isfinite(ref).all()
    assert rel_err(out, ref) <= REL_TOL


SHARED_NAMES = sorted(Path(p).name[: -len(".skel.onnx")]
                      for p in glob.glob(str(SHARED_MODELS / "*.skel.onnx"))) or ["(none)"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", SHARED_NAMES)
def test_shared_model(shared_models, name, target):
    path = shared_models / f"{name}.onnx"
    assert path.is_file(), f"fill_weights.py did not write {path}"
    data = np.load(shared_models / f"{name}.npz")
    compiled = cnncc.compile(str(path), target=target)
    out = compiled(data["input"])
    assert rel_err(out, data["output"]) <= REL_TOL


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"] + sys.argv[1:]))
