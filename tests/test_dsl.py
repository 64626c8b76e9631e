"""The Python DSL: layer shapes, errors, explicit and random weights, ONNX export.

Numbers are checked against independent references: onnxruntime on the exported model, and
straightforward float64 numpy formulas for layers given explicit weights.
Tolerance: max|diff| / max|ref| <= 1e-4 (float32 vs float64 or vs onnxruntime).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cnncc
from cnncc import dsl
from cnncc.export_onnx import IR_VERSION, ORT_MAX_OPSET, to_onnx
from cnncc.ir import CompileError, DType, Graph, Node, TensorType

RTOL = 1e-4


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def run_both(net: dsl.Net, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(reference-target outputs, onnxruntime outputs) of ``net`` on random inputs; the exported
    model must pass the full ONNX checker (which re-infers every shape)."""
    model = net.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    xs = net.example_inputs(seed)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ort_out = sess.run(None, dict(zip(net.input_names, xs)))
    ref = cnncc.compile(net, target="reference").run(dict(zip(net.input_names, xs)))
    return [ref[n] for n in net.output_names], ort_out


def assert_matches_ort(net: dsl.Net) -> None:
    ours, theirs = run_both(net)
    assert len(ours) == len(theirs) == len(net.output_names)
    for a, b, shape in zip(ours, theirs, net.output_shapes):
        assert a.shape == shape
        assert rel_err(a, b) <= RTOL


def one_op(fn, shape=(1, 4, 9, 9), **kw) -> dsl.Net:
    return dsl.build(fn, shape, **kw)


# ---- layer output shapes -------------------------------------------------------------------------

SHAPE_CASES = [
    ("conv3x3", lambda x: dsl.conv2d(x, 8, 3), (1, 8, 7, 7)),
    ("conv_pad1", lambda x: dsl.conv2d(x, 8, 3, padding=1), (1, 8, 9, 9)),
    ("conv_stride2", lambda x: dsl.conv2d(x, 8, 3, stride=2, padding=1), (1, 8, 5, 5)),
    ("conv_rect", lambda x: dsl.conv2d(x, 8, (1, 3), padding=(0, 1)), (1, 8, 9, 9)),
    ("conv_asym4", lambda x: dsl.conv2d(x, 8, 3, padding=(0, 1, 2, 0)), (1, 8, 9, 8)),
    ("conv_pairs", lambda x: dsl.conv2d(x, 8, 3, padding=((2, 0), (0, 1))), (1, 8, 9, 8)),
    ("conv_same_s1", lambda x: dsl.conv2d(x, 8, 4, padding="same"), (1, 8, 9, 9)),
    ("conv_same_s2", lambda x: dsl.conv2d(x, 8, 3, 2, padding="same"), (1, 8, 5, 5)),
    ("conv_valid", lambda x: dsl.conv2d(x, 8, 5, padding="valid"), (1, 8, 5, 5)),
    ("conv_dilated", lambda x: dsl.conv2d(x, 8, 3, dilation=2), (1, 8, 5, 5)),
    ("conv_groups", lambda x: dsl.conv2d(x, 6, 3, groups=2, bias=False), (1, 6, 7, 7)),
    ("depthwise", lambda x: dsl.depthwise_conv2d(x, 3, padding=1), (1, 4, 9, 9)),
    ("depthwise_x2", lambda x: dsl.depthwise_conv2d(x, 3, 2, multiplier=2), (1, 8, 4, 4)),
    ("convT", lambda x: dsl.conv_transpose2d(x, 3, 2, stride=2), (1, 3, 18, 18)),
    ("convT_outpad", lambda x: dsl.conv_transpose2d(x, 3, 3, stride=2, padding=1,
                                                     output_padding=1), (1, 3, 18, 18)),
    ("maxpool", lambda x: dsl.max_pool2d(x, 2), (1, 4, 4, 4)),
    ("maxpool_ceil", lambda x: dsl.max_pool2d(x, 2, ceil_mode=True), (1, 4, 5, 5)),
    ("maxpool_s2p1", lambda x: dsl.max_pool2d(x, 3, 2, padding=1), (1, 4, 5, 5)),
    ("avgpool", lambda x: dsl.avg_pool2d(x, 3, 1, padding=1), (1, 4, 9, 9)),
    ("gap", dsl.global_avg_pool, (1, 4, 1, 1)),
    ("gmp", dsl.global_max_pool, (1, 4, 1, 1)),
    ("flatten", dsl.flatten, (1, 324)),
    ("reshape", lambda x: dsl.reshape(x, (0, -1, 3)), (1, 108, 3)),
    ("transpose", lambda x: dsl.transpose(x, (0, 2, 3, 1)), (1, 9, 9, 4)),
    ("concat", lambda x: dsl.concat([x, dsl.relu(x)], axis=1), (1, 8, 9, 9)),
    ("pad", lambda x: dsl.pad(x, [(0, 0), (0, 0), (1, 2), (3, 0)]), (1, 4, 12, 12)),
    ("pad_flat", lambda x: dsl.pad(x, [0, 0, 1, 1, 0, 0, 1, 1], mode="edge"), (1, 4, 11, 11)),
    ("upsample", lambda x: dsl.upsample(x, 2), (1, 4, 18, 18)),
    ("resize_size", lambda x: dsl.resize(x, size=(4, 5), mode="linear"), (1, 4, 4, 5)),
    ("softmax", lambda x: dsl.softmax(x, axis=1), (1, 4, 9, 9)),
    ("dropout", dsl.dropout, (1, 4, 9, 9)),
    ("bn", dsl.batch_norm, (1, 4, 9, 9)),
    ("reduce_mean", lambda x: dsl.reduce_mean(x, [2, 3], keepdims=False), (1, 4)),
    ("broadcast_add", lambda x: x + dsl.global_avg_pool(x), (1, 4, 9, 9)),
    ("const_ops", lambda x: (2.0 - x) * 0.5 / (x * x + 1.0), (1, 4, 9, 9)),
    ("dense", lambda x: dsl.dense(dsl.flatten(x), 5), (1, 5)),
    ("matmul", lambda x: x @ np.ones((9, 2), np.float32), (1, 4, 9, 2)),
]


@pytest.mark.parametrize("fn,shape", [c[1:] for c in SHAPE_CASES],
                         ids=[c[0] for c in SHAPE_CASES])
def test_layer_shapes_and_values(fn, shape):
    net = one_op(fn)
    assert net.output_shapes == [shape]
    assert_matches_ort(net)


@pytest.mark.parametrize("size,k,s,d", [(9, 3, 1, 1), (9, 4, 1, 1), (10, 3, 2, 1), (9, 3, 2, 1),
                                        (11, 5, 3, 1), (8, 2, 2, 1)])
def test_same_padding_matches_onnx_same_upper(size, k, s, d):
    """padding='same' gives ceil(size / stride) and the numbers of ONNX auto_pad=SAME_UPPER
    (onnxruntime has no dilated SAME_UPPER: test_same_padding_dilated covers that)."""
    net = dsl.build(lambda x: dsl.conv2d(x, 3, k, s, padding="same", dilation=d, bias=False),
                    (1, 2, size, size))
    assert net.output_shapes == [(1, 3, -(-size // s), -(-size // s))]
    g = net.to_graph()
    w_name = g.nodes[0].inputs[1]
    from onnx import helper, numpy_helper
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[s, s],
                            dilations=[d, d], kernel_shape=[k, k])
    graph = helper.make_graph([node], "same", [helper.make_tensor_value_info("x", 1, None)],
                              [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(g.params[w_name], "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = net.example_inputs()[0]
    expect = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = cnncc.compile(net, target="reference")(x)
    assert rel_err(got, expect) <= RTOL


def test_same_padding_dilated():
    """Stride 1: 'same' pads (k - 1) * d in total, the extra pixel (if odd) at the end."""
    net = dsl.build(lambda x: dsl.conv2d(x, 3, 3, padding="same", dilation=2), (1, 2, 9, 9))
    assert net.to_graph().nodes[0].attrs["pads"] == [2, 2, 2, 2]
    net = dsl.build(lambda x: dsl.conv2d(x, 3, (2, 3), padding="same", dilation=3), (1, 2, 9, 9))
    assert net.to_graph().nodes[0].attrs["pads"] == [1, 3, 2, 3]
    assert net.output_shapes == [(1, 3, 9, 9)]
    assert_matches_ort(net)


ACTIVATIONS = {
    "relu": (dsl.relu, lambda x: np.maximum(x, 0)),
    "relu6": (dsl.relu6, lambda x: np.clip(x, 0, 6)),
    "clip": (lambda x: dsl.clip(x, -0.5, None), lambda x: np.maximum(x, -0.5)),
    "leaky_relu": (lambda x: dsl.leaky_relu(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    "hard_sigmoid": (dsl.hard_sigmoid, lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "hard_swish": (dsl.hard_swish, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "sigmoid": (dsl.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "silu": (dsl.silu, lambda x: x / (1 + np.exp(-x))),
    "tanh": (dsl.tanh, np.tanh),
    "gelu_tanh": (lambda x: dsl.gelu(x, "tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
    "neg": (lambda x: -x, np.negative),
    "softplus": (dsl.softplus, lambda x: np.log1p(np.exp(x))),
    "mish": (dsl.mish, lambda x: x * np.tanh(np.log1p(np.exp(x)))),
    "celu_via_activation": (lambda x: dsl.activation("Celu", x, alpha=2.0),
                            lambda x: np.maximum(x, 0) + np.minimum(0, 2 * np.expm1(x / 2))),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_numpy_formula(name):
    fn, formula = ACTIVATIONS[name]
    net = dsl.build(fn, (2, 3, 5, 7))
    x = 4 * net.example_inputs()[0]
    got = cnncc.compile(net, target="reference")(x)
    assert rel_err(got, formula(x.astype(np.float64))) <= RTOL
    assert_matches_ort(net)


def test_activation_names_the_known_ops():
    with pytest.raises(cnncc.CompileError, match="unknown op 'Swishy'.*Mish"):
        dsl.build(lambda x: dsl.activation("Swishy", x), (1, 3))


def test_gelu_exact_matches_onnxruntime():
    assert_matches_ort(dsl.build(dsl.gelu, (2, 3, 5, 7)))


# ---- explicit weights ----------------------------------------------------------------------------

def np_conv2d(x, w, b, stride, pads, dilation, groups):
    """Direct float64 convolution: sum over kernel taps of strided input slices."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    ow = (wd - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for g in range(groups):
        xs, ws = x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation[0], j * dilation[1]
                patch = xs[:, :, r0:r0 + stride[0] * (oh - 1) + 1:stride[0],
                           c0:c0 + stride[1] * (ow - 1) + 1:stride[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out + (0 if b is None else b.astype(np.float64)[None, :, None, None])


@pytest.mark.parametrize("stride,padding,pads,dilation,groups", [
    (1, 0, [0, 0, 0, 0], 1, 1),
    (2, 1, [1, 1, 1, 1], 1, 1),
    (1, (0, 1, 2, 0), [0, 1, 2, 0], 2, 2),
    ((2, 1), ((1, 0), (0, 2)), [1, 0, 0, 2], 1, 4),
])
def test_conv2d_uses_given_weights(stride, padding, pads, dilation, groups):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    net = dsl.build(lambda x: dsl.conv2d(x, weight=w, bias=b, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups), (2, 4, 10, 11))
    g = net.to_graph()
    conv = g.nodes[0]
    assert conv.op == "Conv" and conv.attrs["pads"] == pads and conv.attrs["group"] == groups
    np.testing.assert_array_equal(g.params[conv.inputs[1]], w)
    np.testing.assert_array_equal(g.params[conv.inputs[2]], b)
    x = net.example_inputs()[0]
    s = [stride] * 2 if isinstance(stride, int) else list(stride)
    expect = np_conv2d(x, w, b, s, pads, [dilation] * 2, groups)
    assert rel_err(cnncc.compile(net, target="reference")(x), expect) <= RTOL


def test_dense_and_batch_norm_use_given_weights():
    rng = np.random.default_rng(2)
    w, bias = rng.standard_normal((5, 12)).astype(np.float32), rng.standard_normal(5)
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)

    def f(x):
        y = dsl.batch_norm(x, eps=1e-3, scale=gamma, bias=beta, mean=mean, var=var)
        return dsl.dense(dsl.flatten(y), weight=w, bias=bias)

    net = dsl.build(f, (2, 3, 2, 2))
    x = net.example_inputs()[0]
    c = (slice(None), None, None)
    bn = (x - mean[c]) / np.sqrt(var[c] + 1e-3) * gamma[c] + beta[c]
    expect = bn.reshape(2, 12) @ w.T.astype(np.float64) + bias
    assert rel_err(cnncc.compile(net, target="reference")(x), expect) <= RTOL
    assert_matches_ort(net)


def test_conv_transpose_given_weights_matches_ort():
    w = np.random.default_rng(3).standard_normal((4, 3, 3, 3)).astype(np.float32)
    net = dsl.build(lambda x: dsl.conv_transpose2d(x, weight=w, stride=2, padding=1,
                                                   output_padding=1, bias=False), (1, 4, 5, 5))
    assert net.output_shapes == [(1, 3, 10, 10)]
    np.testing.assert_array_equal(net.to_graph().params["convtranspose.weight"], w)
    assert_matches_ort(net)


def test_no_bias_means_no_bias_input():
    net = dsl.build(lambda x: dsl.conv2d(x, 4, 1, bias=False), (1, 2, 3, 3))
    conv = net.to_graph().nodes[0]
    assert len(conv.inputs) == 2


# ---- random weights ------------------------------------------------------------------------------

def _net_for_seed(seed):
    return dsl.build(lambda x: dsl.dense(dsl.flatten(dsl.batch_norm(dsl.conv2d(x, 64, 3))), 10),
                     (1, 32, 8, 8), seed=seed)


def test_random_weights_are_seeded():
    a, b, c = _net_for_seed(0).to_graph(), _net_for_seed(0).to_graph(), _net_for_seed(1)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.params["conv.weight"], c.to_graph().params["conv.weight"])


def test_random_weights_are_he_normal_and_bn_is_sane():
    g = _net_for_seed(0).to_graph()
    w = g.params["conv.weight"]
    assert w.dtype == np.float32 and w.shape == (64, 32, 3, 3)
    assert abs(w.mean()) < 0.01
    assert abs(w.std() / np.sqrt(2 / (32 * 9)) - 1) < 0.05           # 18432 samples: ~0.5%
    fc = g.params["fc.weight"]
    assert abs(fc.std() / np.sqrt(2 / fc.shape[1]) - 1) < 0.05
    gamma, var = g.params["bn.scale"], g.params["bn.var"]
    assert gamma.min() >= 0.5 and gamma.max() <= 1.5 and var.min() >= 0.5 and var.max() <= 1.5
    assert gamma.std() > 0.1                      # not constant: BN is exercised for real
    for key in ("bn.bias", "bn.mean"):
        assert 0.02 < g.params[key].std() < 0.3


# ---- nets: skip connections, several inputs and outputs, naming ----------------------------------

@dsl.net(input_shape=(1, 3, 16, 16), name="skip", seed=5)
def skip_net(x: dsl.Tensor) -> dsl.Tensor:
    y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 8, 3, padding=1, bias=False)))
    y = dsl.batch_norm(dsl.conv2d(y, 8, 3, padding=1, bias=False))
    y = dsl.relu(y + dsl.conv2d(x, 8, 1))                   # projection shortcut
    z = dsl.relu6(dsl.batch_norm(dsl.depthwise_conv2d(y, 3, padding=1)))
    y = y + dsl.conv2d(z, 8, 1)                             # identity shortcut
    return dsl.dense(dsl.flatten(dsl.global_avg_pool(y)), 10)


def test_skip_connection_net_matches_ort():
    net = skip_net()
    assert net.name == "skip" and net.output_shapes == [(1, 10)]
    adds = [n for n in net.to_graph().nodes if n.op == "Add"]
    assert len(adds) == 2
    assert_matches_ort(net)


def test_multiple_inputs_and_outputs():
    @dsl.net(input_shape={"img": (2, 3, 8, 8), "extra": (2, 5)})
    def two(img, extra, hidden=7):
        feat = dsl.flatten(dsl.global_avg_pool(dsl.conv2d(img, 4, 3, padding=1)))
        joined = dsl.concat([feat, extra], axis=1)
        return {"logits": dsl.dense(joined, hidden), "probs": dsl.softmax(dsl.dense(feat, 3)),
                "echo": extra}

    net = two(hidden=6)
    assert net.input_names == ["img", "extra"]
    assert net.output_names == ["logits", "probs", "echo"]
    assert net.output_shapes == [(2, 6), (2, 3), (2, 5)]
    assert_matches_ort(net)
    xs = net.example_inputs(3)
    out = cnncc.compile(net, target="reference")(*xs)
    np.testing.assert_array_equal(out[2], xs[1])
    np.testing.assert_allclose(out[1].sum(axis=1), 1, rtol=1e-5)


def test_tuple_outputs_get_numbered_names_and_repeats_work():
    def f(a, b):
        y = dsl.relu(a)
        return a * b, y, y, b, dsl.relu(a)

    net = dsl.build(f, [(3, 4), (3, 4)])
    assert net.output_names == [f"output{i}" for i in range(5)]
    assert_matches_ort(net)
    xs = net.example_inputs()
    out = cnncc.compile(net, target="reference")(*xs)
    np.testing.assert_array_equal(out[1], np.maximum(xs[0], 0))
    np.testing.assert_array_equal(out[2], out[1])
    np.testing.assert_array_equal(out[3], xs[1])


def test_decorator_overrides_and_kwargs():
    @dsl.net
    def widen(x, width=4):
        return dsl.conv2d(x, width, 1)

    a = widen(input_shape=(1, 2, 5, 5), width=6, seed=1, name="w6")
    assert a.name == "w6" and a.seed == 1 and a.output_shapes == [(1, 6, 5, 5)]
    with pytest.raises(CompileError, match="no input_shape"):
        widen()
    b = skip_net(seed=6)
    assert not np.array_equal(b.to_graph().params["conv.weight"],
                              skip_net().to_graph().params["conv.weight"])


def test_scopes_name_nodes_and_weights():
    def f(x):
        with dsl.scope("block1"):
            y = dsl.conv2d(x, 4, 3, name="conv")
            with dsl.scope("inner"):
                y = dsl.relu(y, name="act")
        return y

    g = dsl.build(f, (1, 2, 5, 5)).to_graph()
    assert [n.name for n in g.nodes] == ["block1.conv", "block1.inner.act"]
    assert {"block1.conv.weight", "block1.conv.bias"} == set(g.params)


def test_net_api_surface(tmp_path):
    net = skip_net()
    assert net.input_names == ["x"] and net.output_names == ["output"]
    assert net.input_shapes == [(1, 3, 16, 16)]
    assert net.num_params == sum(v.size for v in net.to_graph().params.values())
    assert "skip" in repr(net) and "Conv(" in str(net)
    g1 = net.to_graph()
    g1.nodes.clear()
    assert net.to_graph().nodes, "to_graph must hand out copies"
    model = net.compile(target="reference")
    x = net.example_inputs()[0]
    np.testing.assert_array_equal(model(x), cnncc.compile(net, target="reference")(x))
    path = tmp_path / "skip.onnx"
    net.to_onnx(path)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.ir_version == IR_VERSION <= 10
    assert loaded.opset_import[0].version == min(onnx.defs.onnx_opset_version(), ORT_MAX_OPSET)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert rel_err(sess.run(None, {"x": x})[0], model(x).astype(np.float64)) <= RTOL


# ---- errors --------------------------------------------------------------------------------------

ERROR_CASES = [
    ("groups", lambda x: dsl.conv2d(x, 8, 3, groups=3), "groups=3 does not divide"),
    ("kernel_too_big", lambda x: dsl.conv2d(x, 8, 11), "Conv"),
    ("out_channels", lambda x: dsl.conv2d(x, 0, 3), "out_channels must be a positive"),
    ("no_kernel", lambda x: dsl.conv2d(x, 8), "give out_channels and kernel_size"),
    ("bad_padding", lambda x: dsl.conv2d(x, 8, 3, padding="full"), "padding must be"),
    ("neg_padding", lambda x: dsl.conv2d(x, 8, 3, padding=-1), "padding must be >= 0"),
    ("stride0", lambda x: dsl.conv2d(x, 8, 3, stride=0), "stride must be >= 1"),
    ("weight_shape", lambda x: dsl.conv2d(x, weight=np.zeros((8, 3, 3, 3))), "weight shape"),
    ("weight_vs_out", lambda x: dsl.conv2d(x, 4, weight=np.zeros((8, 4, 3, 3))),
     "out_channels=4 but weight has 8"),
    ("bias_shape", lambda x: dsl.conv2d(x, 8, 3, bias=np.zeros(7)), "bias: expected shape"),
    ("dense_4d", lambda x: dsl.dense(x, 10), "flatten it first"),
    ("broadcast", lambda x: x + dsl.conv2d(x, 5, 1), "do not broadcast"),
    ("concat", lambda x: dsl.concat([x, dsl.max_pool2d(x, 2)]), "Concat"),
    ("rank", lambda x: dsl.conv2d(dsl.flatten(x), 8, 3), "rank-4"),
    ("reshape", lambda x: dsl.reshape(x, (5, -1)), "Reshape"),
    ("pool_big", lambda x: dsl.max_pool2d(x, 12), "MaxPool"),
    ("bn_given", lambda x: dsl.batch_norm(x, mean=np.zeros(3)), "mean: expected shape"),
    ("not_tensor", lambda x: dsl.relu(np.zeros(3)), "expected a dsl.Tensor"),
    ("returns_int", lambda x: 3, "must return a dsl.Tensor"),
    ("truthiness", lambda x: x if x else x, "no truth value"),
    ("resize_both", lambda x: dsl.resize(x, 2, size=(4, 4)), "exactly one of"),
    ("huge_weight", lambda x: dsl.conv2d(x, 10**9, 3), "too large"),
    ("huge_dilation", lambda x: dsl.conv2d(x, 4, 3, dilation=10**9), "larger than the padded"),
]


@pytest.mark.parametrize("fn,match", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_definitions_raise_compile_error(fn, match):
    with pytest.raises(CompileError, match=match):
        dsl.build(fn, (1, 4, 9, 9))


def test_error_names_the_user_line():
    def bad(x):
        y = dsl.relu(x)
        return dsl.conv2d(y, 8, 3, groups=3)          # this line is reported

    with pytest.raises(CompileError) as info:
        dsl.build(bad, (1, 4, 9, 9))
    line = bad.__code__.co_firstlineno + 2
    assert f"{__file__}:{line}" in str(info.value)
    with pytest.raises(CompileError) as info:
        dsl.build(lambda x: x + dsl.conv2d(x, 5, 1), (1, 4, 9, 9))
    assert "node 'add'" in str(info.value) and __file__ in str(info.value)


def test_mixing_nets_and_misc_errors():
    holder = {}
    dsl.build(lambda x: holder.setdefault("x", x), (1, 2))
    with pytest.raises(CompileError, match="belongs to another net"):
        dsl.build(lambda x: x + holder["x"], (1, 2))
    with pytest.raises(CompileError, match="no net is being built"):
        dsl.constant(1.0)
    with pytest.raises(CompileError, match="shape must be a sequence of ints"):
        dsl.build(lambda x: x, (1, 2.5))
    with pytest.raises(CompileError, match="2 input shapes"):
        dsl.build(lambda x: x, [(1, 2), (1, 2)])
    with pytest.raises(CompileError, match="bad shape|zero-sized"):
        dsl.build(lambda x: x, (1, 0))


def test_constants_inside_nets():
    w = np.array([[1.0, 2.0, 3.0]])
    net = dsl.build(lambda x: (x * dsl.constant([1.0, 2.0, 3.0]) + dsl.constant(0.5)) / w
                    - np.float32(1) + np.ones((2, 2), np.float32) @ (2 * x), (2, 3))
    x = net.example_inputs()[0]
    xd = x.astype(np.float64)
    expect = (xd * [1, 2, 3] + 0.5) / w - 1 + np.ones((2, 2)) @ (2 * xd)
    assert rel_err(cnncc.compile(net, target="reference")(x), expect) <= RTOL
    assert_matches_ort(net)


def test_export_rejects_non_onnx_ops():
    g = dsl.build(dsl.relu, (1, 4)).to_graph()
    g.nodes.append(Node("LayoutTransformNCHWc", [g.outputs[0]], ["blocked"], {}, "lt"))
    with pytest.raises(CompileError, match="not ONNX ops"):
        to_onnx(g)


def test_export_of_plain_graph_round_trips_attributes():
    """A hand-built graph (attributes of every kind the DSL does not make) exports faithfully."""
    g = Graph("attrs")
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 4)))
    (y,) = g.add_node("Transpose", [x], {"perm": [2, 0, 1]})
    (z,) = g.add_node("LeakyRelu", [y], {"alpha": 1})            # int given for a float attr
    g.outputs.append(z)
    model = to_onnx(g.verify())
    onnx.checker.check_model(model, full_check=True)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for n in model.graph.node
             for a in n.attribute}
    assert attrs == {"perm": [2, 0, 1], "alpha": 1.0}
    xv = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    out = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    np.testing.assert_array_equal(out, np.transpose(xv, (2, 0, 1)))     # LeakyRelu(alpha=1): id


@pytest.mark.parametrize("make", [skip_net, lambda: dsl.build(ACTIVATIONS["silu"][0], (1, 3, 4)),
                                  lambda: one_op(SHAPE_CASES[-2][1])],
                         ids=["skip_net", "silu", "dense"])
def test_onnx_round_trip_through_the_frontend(make):
    """DSL -> ONNX -> cnncc's ONNX frontend gives the same ops and the same numbers."""
    net = make()
    back = cnncc.load_graph(net.to_onnx())
    assert [n.op for n in back.nodes] == [n.op for n in net.to_graph().nodes]
    x = net.example_inputs()
    ours = cnncc.compile(net, target="reference")(*x)
    assert rel_err(cnncc.compile(back, target="reference")(*x), ours.astype(np.float64)) <= 1e-6


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(1, 4), s=st.integers(1, 3), d=st.integers(1, 2),
       groups=st.sampled_from([1, 2]), pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       size=st.integers(6, 11),
       pool=st.sampled_from(["max", "avg", "none"]), ceil=st.booleans(), seed=st.integers(0, 99))
def test_random_conv_and_pool_configs_match_onnxruntime(k, s, d, groups, pads, size, pool, ceil,
                                                        seed):
    def f(x):
        y = dsl.conv2d(x, 4, k, s, padding=pads, dilation=d, groups=groups)
        if pool == "max":
            y = dsl.max_pool2d(y, 2, 1, padding=1, ceil_mode=ceil)
        elif pool == "avg":
            y = dsl.avg_pool2d(y, 2, 2, padding=(1, 0), ceil_mode=ceil, count_include_pad=ceil)
        return y

    assume((size + pads[0] + pads[2] - (k - 1) * d - 1) // s >= 1)
    assume((size + pads[1] + pads[3] - (k - 1) * d - 1) // s >= 1)
    assert_matches_ort(dsl.build(f, (1, 2, size, size + 1), seed=seed))
