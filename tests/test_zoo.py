"""The model zoo: every net exports to ONNX, and every target matches onnxruntime on it.

Tolerance: max|ours - ort| / max|ort| <= 1e-4 (float32 on both sides, different summation
orders). Architectures are checked against torchvision's parameter counts (weights, biases and
BN gammas/betas; BN running statistics are buffers there, not parameters).
"""
from __future__ import annotations

import functools
import gc

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cnncc
from cnncc.testing import target_params
from cnncc.dsl import zoo, zoo_blocks

RTOL = 1e-4

# torchvision.models.<name>(): sum(p.numel() for p in model.parameters()); MobileNetV1 (not in
# torchvision): Keras MobileNet(alpha=1.0) trainable parameters.
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v1": 4_231_976,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "lenet5": 61_706,
    "efficientnet_b0": 5_288_548,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "convnext_tiny": 28_589_128,
    "densenet121": 7_978_856,
    "resnext50_32x4d": 25_028_904,
    "regnet_y_400mf": 4_344_144,
    "shufflenet_v2_x1_0": 2_278_604,
    "googlenet": 6_624_904,       # inference: no auxiliary classifiers
    "squeezenet1_1": 1_235_496,
    "alexnet": 61_100_840,
}
# The nets of cnncc/dsl/zoo_blocks.py run here at a small input (the architecture, weights and
# parameter count are the same; the suite's time is not): 32 x 32, five halvings to 1 x 1.
SMALL_INPUT = {name: 32 for name in zoo_blocks.BLOCK_NETS}
TARGETS = target_params()
OUTPUT_SHAPES = {"tiny_unet": (1, 2, 32, 32), "lenet5": (1, 10), "tiny_cnn": (1, 10),
                 "tiny_resnet": (1, 10), "tiny_mobilenet": (1, 10), "all_conv": (1, 10),
                 "tiny_c3d": (1, 10)}


def trainable_params(net) -> int:
    return sum(v.size for k, v in net.to_graph().params.items()
               if k.endswith((".weight", ".bias", ".scale")))


@functools.lru_cache(maxsize=1)
def onnxruntime_result(name: str):
    """(net, input, onnxruntime's output) of zoo net ``name`` (the last one is kept: the
    targets of one net run one after another)."""
    kw = {"input_size": SMALL_INPUT[name]} if name in SMALL_INPUT else {}
    net = zoo.ZOO[name](seed=0, **kw)
    assert net.output_shapes == [OUTPUT_SHAPES.get(name, (1, 1000))]
    if name in PARAM_COUNTS:
        assert trainable_params(net) == PARAM_COUNTS[name]
    model = net.to_onnx()
    if model.ByteSize() < (1 << 28):      # the checker copies the model; skip it for VGG's 0.5 GB
        onnx.checker.check_model(model, full_check=True)
    x = net.example_inputs(seed=1)[0]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    del model
    expect = sess.run(None, {net.input_names[0]: x})[0]
    del sess
    gc.collect()
    return net, x, expect


# Under pytest-xdist (--dist loadgroup) the targets of one net run on one worker, one after
# another: onnxruntime_result (export, onnxruntime) runs once per net, not once per worker, and
# these groups, the suite's longest tests, are scheduled before the single tests.
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(f"zoo-{n}"))
                                  for n in sorted(zoo.ZOO)])
def test_zoo_net_matches_onnxruntime(name, target):
    net, x, expect = onnxruntime_result(name)
    assert np.abs(expect).max() > 1e-3           # a non-degenerate output
    model = cnncc.compile(net, target=target)
    got = model(x)
    assert got.shape == expect.shape and np.isfinite(got).all()
    err = float(np.abs(got - expect).max() / np.abs(expect).max())
    assert err <= RTOL, f"{name} on {target}: relative error {err:.2e}"
    if target == "llvm":
        # Batch at run time on the same compiled model (tests/test_batch.py has the small nets
        # at every batch): 2 images give exactly the two single runs.
        x2 = np.random.default_rng(2).standard_normal(x.shape).astype(x.dtype)
        assert np.array_equal(model(np.concatenate([x, x2])), np.concatenate([got, model(x2)]))
    gc.collect()


def _users(graph):
    return {k: [n.op for n in v] for k, v in graph.users().items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2",
                                  "tiny_resnet", "tiny_mobilenet"])
def test_every_conv_is_followed_by_batch_norm(name):
    g = zoo.ZOO[name]().to_graph()
    users = _users(g)
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert convs
    for n in convs:
        assert users[n.outputs[0]] == ["BatchNormalization"], n.name
        assert len(n.inputs) == 2, f"{n.name}: conv before BN has no bias"


@pytest.mark.parametrize("name,clips,depthwise,adds", [
    ("mobilenet_v1", 27, 13, 0), ("mobilenet_v2", 35, 17, 10), ("tiny_mobilenet", 13, 6, 2)])
def test_mobilenets_use_relu6_and_depthwise(name, clips, depthwise, adds):
    g = zoo.ZOO[name]().to_graph()
    ops = [n.op for n in g.nodes]
    assert "Relu" not in ops and ops.count("Clip") == clips and ops.count("Add") == adds
    for n in g.nodes:
        if n.op == "Clip":
            assert float(g.params[n.inputs[1]]) == 0.0 and float(g.params[n.inputs[2]]) == 6.0
    dw = [n for n in g.nodes if n.op == "Conv" and n.attrs["group"] > 1]
    assert len(dw) == depthwise
    for n in dw:
        assert n.attrs["group"] == g.types[n.inputs[0]].shape[1]


def test_resnet_structure():
    g = zoo.resnet50().to_graph()
    ops = [n.op for n in g.nodes]
    assert ops.count("Conv") == 53 and ops.count("Add") == 16 and ops.count("Gemm") == 1
    g = zoo.resnet18().to_graph()
    ops = [n.op for n in g.nodes]
    assert ops.count("Conv") == 20 and ops.count("Add") == 8 and ops.count("MaxPool") == 1


def test_zoo_options_and_seeds():
    net = zoo.resnet18(seed=3, batch=2, num_classes=10, input_size=64)
    assert net.input_shapes == [(2, 3, 64, 64)] and net.output_shapes == [(2, 10)]
    a, b = zoo.tiny_resnet(seed=1), zoo.tiny_resnet(seed=1)
    x = a.example_inputs()[0]
    ya = cnncc.compile(a, target="reference")(x)
    np.testing.assert_array_equal(ya, cnncc.compile(b, target="reference")(x))
    yc = cnncc.compile(zoo.tiny_resnet(seed=2), target="reference")(x)
    assert not np.allclose(ya, yc)
    assert zoo.mobilenet_v2(width=0.5, num_classes=7).output_shapes == [(1, 7)]
    with pytest.raises(cnncc.CompileError, match="multiple of 7x7"):
        zoo.vgg11(input_size=160)
