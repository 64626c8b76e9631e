"""Neural-network ops of the op table (conv, pooling, normalization) against onnxruntime.

Each case builds a one-node cnncc Graph and runs it with the reference interpreter, and builds the
same node as a one-node ONNX model run by onnxruntime (CPU), comparing at rtol 1e-4 / atol 1e-5.
Bad attributes must give a CompileError naming the node. (The ONNX backend node tests of these ops
are in test_onnx_node.py.)
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from cnncc.ir import Graph, run_graph
from cnncc.ir.dtypes import DType
from cnncc.ir.errors import CompileError
from cnncc.ir.types import TensorType

ort.set_default_logger_severity(3)
RTOL, ATOL = 1e-4, 1e-5


def run_ort(op: str, inputs: list, attrs: dict, n_out: int = 1) -> list[np.ndarray]:
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                  v.shape)
                    for n, v in zip(names, inputs) if n]
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [onnx.ValueInfoProto(name=o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: v for n, v in zip(names, inputs) if n})


def one_node(op: str, inputs: list, attrs: dict, n_out: int = 1,
             name: str = "node0") -> tuple[Graph, list[str]]:
    """Graph with input 0 as a runtime input and the other inputs as params."""
    g = Graph("one")
    names = []
    for i, v in enumerate(inputs):
        if v is None:
            names.append("")
        elif i == 0:
            names.append(g.add_input("x", TensorType(DType.from_numpy(v.dtype), v.shape)))
        else:
            names.append(g.add_param(f"p{i}", v))
    outs = g.add_node(op, names, attrs, name=name, outputs=n_out)
    g.outputs = list(outs)
    return g, outs


def run_cnncc(op: str, inputs: list, attrs: dict, n_out: int = 1) -> list[np.ndarray]:
    g, outs = one_node(op, inputs, attrs, n_out)
    res = run_graph(g, {"x": inputs[0]})
    return [res[o] for o in outs]


def check(op: str, inputs: list, attrs: dict, n_out: int = 1, rtol=RTOL, atol=ATOL) -> None:
    want = run_ort(op, inputs, attrs, n_out)
    got = run_cnncc(op, inputs, attrs, n_out)
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# ---- Conv --------------------------------------------------------------------------------------

# (x shape, out channels, kernel, attrs)
CONV_CASES = [
    ((1, 3, 9, 9), 5, (3, 3), {}),
    ((2, 3, 16, 15), 8, (7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    ((1, 7, 10, 11), 5, (1, 1), {}),
    ((1, 8, 9, 10), 16, (1, 1), dict(strides=[2, 2])),
    ((1, 5, 12, 13), 6, (3, 2), dict(strides=[2, 1], pads=[1, 0, 2, 1])),
    ((1, 4, 11, 12), 6, (3, 3), dict(dilations=[2, 3], pads=[2, 1, 0, 3])),
    ((2, 6, 10, 10), 9, (3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    ((1, 8, 12, 11), 8, (3, 3), dict(group=8, strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 5, 9, 9), 15, (3, 3), dict(group=5, pads=[1, 1, 1, 1])),      # channel multiplier 3
    ((1, 6, 9, 8), 12, (5, 5), dict(group=6, dilations=[2, 1], pads=[4, 2, 4, 2])),
    ((1, 3, 10, 9), 4, (3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 3, 10, 9), 4, (4, 4), dict(auto_pad="SAME_LOWER", strides=[3, 2])),
    ((1, 3, 10, 9), 4, (2, 3), dict(auto_pad="VALID", strides=[2, 3])),
    ((2, 3, 17), 4, (3,), dict(strides=[2], pads=[1, 2])),
    ((1, 4, 20), 8, (5,), dict(group=4, dilations=[3], pads=[0, 1])),
    ((1, 2, 6, 7, 5), 3, (3, 2, 3), dict(strides=[1, 2, 1], pads=[1, 0, 1, 1, 1, 0])),
    ((1, 4, 5, 6, 7), 4, (3, 3, 3), dict(group=4, pads=[1] * 6, dilations=[1, 2, 1])),
    ((1, 3, 5, 5), 2, (5, 5), dict(kernel_shape=[5, 5])),
    ((1, 3, 2, 2), 2, (3, 3), dict(pads=[1, 1, 1, 1], strides=[3, 3])),
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape,m,kernel,attrs", CONV_CASES)
def test_conv_matches_onnxruntime(shape, m, kernel, attrs, bias):
    rng = np.random.default_rng(1)
    group = attrs.get("group", 1)
    x = rand(rng, *shape)
    w = rand(rng, m, shape[1] // group, *kernel)
    b = rand(rng, m) if bias else None
    check("Conv", [x, w, b] if bias else [x, w], attrs)


def test_conv_same_with_dilation_uses_dilated_extent():
    # onnxruntime rejects dilation with SAME_*; ONNX pads the dilated extent: 5 - 1 = 4 per axis,
    # split 2/2, and for extent 7 with stride 2 over 9: (5 - 1) * 2 + 7 - 9 = 6 -> 3/3.
    rng = np.random.default_rng(2)
    x, w = rand(rng, 1, 3, 10, 9), rand(rng, 4, 3, 3, 4)
    (same,) = run_cnncc("Conv", [x, w], dict(auto_pad="SAME_LOWER", dilations=[2, 2],
                                              strides=[1, 2]))
    (explicit,) = run_cnncc("Conv", [x, w], dict(pads=[2, 3, 2, 3], dilations=[2, 2],
                                                  strides=[1, 2]))
    assert same.shape == (1, 4, 10, 5)
    np.testing.assert_array_equal(same, explicit)


def test_conv_resnet_stem_shape_and_accuracy():
    rng = np.random.default_rng(2)
    x, w = rand(rng, 1, 3, 64, 64), rand(rng, 64, 3, 7, 7)
    check("Conv", [x, w], dict(strides=[2, 2], pads=[3, 3, 3, 3]))


def test_large_conv_float32_matmul_path_matches_onnxruntime():
    # Above spatial.F64_MACS multiply-adds the reference multiplies in float32.
    rng = np.random.default_rng(3)
    x, w, b = rand(rng, 1, 128, 40, 40), rand(rng, 96, 128, 3, 3), rand(rng, 96)
    check("Conv", [x, w, b], dict(pads=[1, 1, 1, 1]), rtol=1e-4, atol=1e-4)
    x, w = rand(rng, 1, 128, 40, 40), rand(rng, 128, 64, 4, 4)
    check("ConvTranspose", [x, w], dict(strides=[2, 2], pads=[1, 1, 1, 1]), atol=1e-4)


def test_conv_float64_reference_is_exact_enough():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 4, 8, 8)), rng.standard_normal((3, 4, 3, 3))
    (got,) = run_cnncc("Conv", [x, w], {})
    naive = np.zeros((1, 3, 6, 6))
    for i, j in itertools.product(range(6), range(6)):
        naive[0, :, i, j] = np.tensordot(w, x[0, :, i:i + 3, j:j + 3], axes=3)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, naive, rtol=1e-12, atol=1e-12)


# ---- ConvTranspose -----------------------------------------------------------------------------

CONVT_CASES = [
    ((1, 3, 5, 4), 2, (3, 3), {}),
    ((2, 4, 5, 6), 3, (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ((1, 4, 4, 5), 6, (3, 2), dict(group=2, strides=[2, 3], pads=[1, 0, 2, 1],
                                    dilations=[2, 1], output_padding=[1, 2])),
    ((1, 6, 4, 4), 6, (4, 4), dict(group=6, strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 3, 5, 4), 2, (3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 3, 5, 4), 2, (3, 2), dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    ((1, 3, 5, 4), 2, (1, 1), dict(auto_pad="SAME_UPPER", strides=[3, 2])),
    ((1, 3, 5, 4), 2, (3, 3), dict(auto_pad="VALID", strides=[2, 1])),
    ((1, 3, 5, 4), 2, (3, 3), dict(output_shape=[10, 8], strides=[2, 2])),
    ((1, 3, 5, 4), 2, (3, 3), dict(output_shape=[9, 7], strides=[2, 2])),
    ((1, 3, 5, 4), 2, (3, 3), dict(output_shape=[12, 10], strides=[2, 2])),
    ((2, 3, 7), 4, (4,), dict(strides=[3], pads=[1, 2])),
    ((1, 2, 3, 4, 3), 3, (2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 1])),
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape,m,kernel,attrs", CONVT_CASES)
def test_conv_transpose_matches_onnxruntime(shape, m, kernel, attrs, bias):
    rng = np.random.default_rng(4)
    group = attrs.get("group", 1)
    x = rand(rng, *shape)
    w = rand(rng, shape[1], m // group, *kernel)
    b = rand(rng, m) if bias else None
    check("ConvTranspose", [x, w, b] if bias else [x, w], attrs)


# ---- DeformConv --------------------------------------------------------------------------------

DEFORM_CASES = [
    ((1, 2, 5, 5), 3, (3, 3), dict(pads=[1, 1, 1, 1]), 1),
    ((2, 6, 7, 8), 4, (3, 2), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1],
                                    dilations=[1, 2]), 3),
    ((1, 4, 6, 6), 4, (2, 2), dict(group=4, strides=[2, 2]), 2),
]


@pytest.mark.parametrize("with_bias,with_mask", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("shape,m,kernel,attrs,og", DEFORM_CASES)
def test_deform_conv_matches_onnxruntime(shape, m, kernel, attrs, og, with_bias, with_mask):
    rng = np.random.default_rng(5)
    group = attrs.get("group", 1)
    x = rand(rng, *shape)
    w = rand(rng, m, shape[1] // group, *kernel)
    (plain,) = run_cnncc("Conv", [x, w], attrs)
    out = plain.shape[2:]
    k = int(np.prod(kernel))
    # Offsets up to a few pixels push samples across borders and between pixels.
    offset = (rng.standard_normal((shape[0], og * 2 * k) + out) * 2).astype(np.float32)
    b = rand(rng, m) if with_bias else None
    mask = rng.random((shape[0], og * k) + out).astype(np.float32) if with_mask else None
    check("DeformConv", [x, w, offset, b, mask], {**attrs, "offset_group": og})


def test_deform_conv_with_zero_offsets_is_conv():
    rng = np.random.default_rng(6)
    x, w = rand(rng, 1, 4, 7, 6), rand(rng, 6, 2, 3, 3)
    attrs = dict(group=2, strides=[2, 1], pads=[1, 1, 0, 2])
    (plain,) = run_cnncc("Conv", [x, w], attrs)
    offset = np.zeros((1, 18) + plain.shape[2:], np.float32)
    (got,) = run_cnncc("DeformConv", [x, w, offset], attrs)
    np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-6)


# ---- pooling -----------------------------------------------------------------------------------

POOL_VARIANTS = [("MaxPool", {}, 2), ("MaxPool", {"storage_order": 1}, 2), ("MaxPool", {}, 1),
                 ("AveragePool", {"count_include_pad": 0}, 1),
                 ("AveragePool", {"count_include_pad": 1}, 1),
                 ("LpPool", {"p": 2}, 1), ("LpPool", {"p": 3}, 1)]
POOL_SHAPES = [(2, 3, 11, 10), (1, 3, 9), (1, 2, 7, 6, 5)]


@pytest.mark.parametrize("op,extra,n_out", POOL_VARIANTS)
@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_pool_sweep_matches_onnxruntime(op, extra, n_out, shape):
    """Kernel 2/3 x stride 1/2/3 x dilation 1/2 x no/symmetric/asymmetric pads x ceil_mode."""
    rng = np.random.default_rng(7)
    x = rand(rng, *shape)
    nd = len(shape) - 2
    for k, s, d, pads, ceil in itertools.product([2, 3], [1, 2, 3], [1, 2],
                                                 ["none", "sym", "asym"], [0, 1]):
        pd = {"none": [0] * 2 * nd, "sym": [1] * 2 * nd, "asym": [1] * nd + [0] * nd}[pads]
        attrs = dict(kernel_shape=[k] * nd, strides=[s] * nd, dilations=[d] * nd, pads=pd,
                     ceil_mode=ceil, **extra)
        check(op, [x], attrs, n_out)


@pytest.mark.parametrize("op,extra,n_out", POOL_VARIANTS)
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 3], strides=[2, 3], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID"),
    dict(kernel_shape=[1, 1], strides=[3, 2]),
    dict(kernel_shape=[7, 6]),
    dict(kernel_shape=[3, 3], strides=[3, 3], pads=[2, 0, 1, 2], ceil_mode=1),
])
def test_pool_auto_pad_and_shapes_match_onnxruntime(op, extra, n_out, attrs):
    rng = np.random.default_rng(8)
    check(op, [rand(rng, 2, 3, 8, 7)], {**attrs, **extra}, n_out)


def test_maxpool_int_dtypes_match_onnxruntime():
    rng = np.random.default_rng(9)
    for dtype in (np.uint8, np.int8):
        x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (1, 2, 7, 6)).astype(dtype)
        check("MaxPool", [x], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]))


def test_maxpool_propagates_nan():
    # Project policy: NaN propagates (onnxruntime drops a NaN in some window positions).
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan
    (y,) = run_cnncc("MaxPool", [x], dict(kernel_shape=[2, 2], strides=[2, 2]))
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 7 and y[0, 0, 1, 1] == 15


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 4, 9), (1, 2, 3, 4, 5), (1, 5, 1, 1)])
def test_global_pools_match_onnxruntime(op, shape):
    rng = np.random.default_rng(10)
    check(op, [rand(rng, *shape)], {})
    if op == "GlobalLpPool":
        check(op, [rand(rng, *shape)], {"p": 3})


# ---- normalization -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 5), (1, 4, 6), (1, 2, 3, 4, 2)])
def test_batch_norm_matches_onnxruntime(shape):
    rng = np.random.default_rng(11)
    c = shape[1]
    x = rand(rng, *shape)
    params = [rand(rng, c), rand(rng, c), rand(rng, c), rng.random(c).astype(np.float32) + 0.1]
    check("BatchNormalization", [x] + params, {"epsilon": 1e-3})


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 6), (1, 2, 3, 4, 2)])
def test_instance_norm_matches_onnxruntime(shape):
    rng = np.random.default_rng(12)
    c = shape[1]
    check("InstanceNormalization", [rand(rng, *shape), rand(rng, c), rand(rng, c)],
          {"epsilon": 1e-4})


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_norm_matches_onnxruntime(axis, with_bias):
    rng = np.random.default_rng(13)
    x = rand(rng, 2, 3, 4, 5)
    norm_shape = x.shape[axis % 4:]
    inputs = [x, rand(rng, *norm_shape)] + ([rand(rng, *norm_shape)] if with_bias else [])
    check("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}, n_out=3)


def test_layer_norm_broadcast_scale():
    rng = np.random.default_rng(14)
    x = rand(rng, 2, 3, 4, 5)
    check("LayerNormalization", [x, rand(rng, 5), rand(rng, 1, 5)], {"axis": -2})


@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_lrn_matches_onnxruntime(size):
    rng = np.random.default_rng(15)
    check("LRN", [rand(rng, 2, 7, 4, 3)], dict(size=size, alpha=2e-3, beta=0.6, bias=1.5))


@pytest.mark.parametrize("size", [2, 4, 8])
def test_lrn_even_size_follows_onnx_formula(size):
    # onnxruntime only takes odd sizes; the ONNX formula sums channels
    # [c - floor((size-1)/2), c + ceil((size-1)/2)].
    rng = np.random.default_rng(15)
    x = rand(rng, 2, 7, 4, 3).astype(np.float64)
    (got,) = run_cnncc("LRN", [x], dict(size=size, alpha=2e-3, beta=0.6, bias=1.5))
    want = np.empty_like(x)
    for c in range(7):
        lo, hi = max(0, c - (size - 1) // 2), min(6, c + size // 2)
        sq = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        want[:, c] = x[:, c] / (1.5 + 2e-3 / size * sq) ** 0.6
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("axis,p", [(-1, 2), (1, 1), (0, 2), (2, 1)])
def test_lp_normalization_matches_onnxruntime(axis, p):
    rng = np.random.default_rng(16)
    x = rand(rng, 2, 3, 4)
    x[0, 1, :] = 0       # an all-zero slice
    check("LpNormalization", [x], dict(axis=axis, p=p))


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [2, 3], [-1]])
def test_mvn_matches_onnxruntime(axes):
    rng = np.random.default_rng(17)
    check("MeanVarianceNormalization", [rand(rng, 2, 3, 4, 5)], {} if axes is None else
          {"axes": axes})


DTYPE_CASES = [
    ("Conv", [(1, 4, 6, 5), (6, 2, 3, 3), (6,)], dict(group=2, pads=[1, 0, 1, 2]), 1),
    ("ConvTranspose", [(1, 4, 4, 3), (4, 3, 2, 2)], dict(strides=[2, 2]), 1),
    ("DeformConv", [(1, 2, 5, 5), (3, 2, 2, 2), (1, 8, 4, 4)], {}, 1),
    ("MaxPool", [(1, 3, 6, 5)], dict(kernel_shape=[2, 2], ceil_mode=1, strides=[2, 2]), 2),
    ("AveragePool", [(1, 3, 6, 5)], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 1),
    ("LpPool", [(1, 3, 6, 5)], dict(kernel_shape=[3, 2]), 1),
    ("GlobalAveragePool", [(1, 3, 6, 5)], {}, 1),
    ("BatchNormalization", [(2, 3, 4), (3,), (3,), (3,), (3,)], {}, 1),
    ("InstanceNormalization", [(2, 3, 4), (3,), (3,)], {}, 1),
    ("LayerNormalization", [(2, 3, 4), (4,), (4,)], {}, 3),
    ("LRN", [(1, 5, 3, 3)], dict(size=3), 1),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("op,shapes,attrs,n_out", DTYPE_CASES)
def test_other_float_types_keep_their_type(op, shapes, attrs, n_out, dtype):
    """float16/float64 inputs give outputs of that type, close to the float32 result."""
    rng = np.random.default_rng(18)
    inputs32 = [rng.random(s).astype(np.float32) + 0.5 for s in shapes]
    want = run_cnncc(op, inputs32, attrs, n_out)
    got = run_cnncc(op, [v.astype(dtype) for v in inputs32], attrs, n_out)
    tol = 1e-2 if dtype == np.float16 else 1e-5
    for i, (g, w) in enumerate(zip(got, want)):
        if op == "LayerNormalization" and i > 0:
            assert g.dtype == np.float32      # Mean/InvStdDev: the stash type (float32)
        elif op == "MaxPool" and i == 1:
            assert g.dtype == np.int64
        else:
            assert g.dtype == dtype
        np.testing.assert_allclose(g.astype(np.float64), w, rtol=tol, atol=tol)


# ---- validation: bad attributes and shapes give CompileError naming the node -------------------

F = np.float32
BAD = [
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(kernel_shape=[5, 5]), "does not match"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(pads=[1, 1, 1]), "'pads' has 3 values"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(pads=[1, -1, 1, 1]), "below 0"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(strides=[1, 0]), "'strides'"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(dilations=[0, 1]), "'dilations'"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(group=0), "group must be >= 1"),
    ("Conv", [(1, 6, 8, 8), (4, 2, 3, 3)], dict(group=4), "does not divide the 6 input"),
    ("Conv", [(1, 6, 8, 8), (4, 2, 3, 3)], dict(group=2), "3 are expected"),
    ("Conv", [(1, 6, 8, 8), (5, 3, 3, 3)], dict(group=2), "does not divide the 5 output"),
    ("Conv", [(1, 3, 4, 4), (4, 3, 7, 7)], {}, "larger than the padded input"),
    ("Conv", [(1, 3, 4, 4), (4, 3, 3, 3)], dict(dilations=[2, 2]), "larger than the padded"),
    ("Conv", [(3, 8), (4, 3)], {}, "rank >= 3"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3), (5,)], {}, "bias B has shape [5], expected [4]"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3)], {}, "weight W has rank 3"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(auto_pad="SAME"), "auto_pad 'SAME'"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(auto_pad="VALID", pads=[1, 1, 1, 1]),
     "conflict with auto_pad"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(kernel_shape=[3, 3, 3]), "'kernel_shape'"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(bogus=1), "unknown attribute 'bogus'"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 1, 1)], dict(pads=[10 ** 6] * 4, strides=[10 ** 6] * 2),
     "absurdly large"),
    ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], dict(pads=[2 ** 40] * 4), "absurdly large"),
    ("MaxPool", [(1, 3, 8, 8)], dict(kernel_shape=[2, 2], dilations=[10 ** 7, 1],
                                     pads=[10 ** 7, 0, 0, 0]), "absurdly large"),
    ("ConvTranspose", [(1, 3, 5, 5), (3, 2, 3, 3)], dict(pads=[2 * 10 ** 7 - 5, 0, 2 * 10 ** 7, 0],
                                                          strides=[10 ** 7, 1]), "absurdly large"),
    ("ConvTranspose", [(1, 3, 5, 5), (4, 2, 3, 3)], {}, "needs 3 (input channels)"),
    ("ConvTranspose", [(1, 4, 5, 5), (4, 2, 3, 3)], dict(group=3), "does not divide the 4"),
    ("ConvTranspose", [(1, 3, 5, 5), (3, 2, 3, 3)], dict(pads=[3, 3, 4, 4]), "remove all"),
    ("ConvTranspose", [(1, 3, 5, 5), (3, 2, 3, 3)], dict(output_shape=[20, 20], strides=[2, 2]),
     "larger than the input"),
    ("ConvTranspose", [(1, 3, 5, 5), (3, 2, 3, 3)], dict(output_shape=[7]), "output_shape"),
    ("ConvTranspose", [(1, 3, 5, 5), (3, 2, 3, 3)], dict(output_shape=[1, 2, 7, 7]),
     "must give the 2 spatial"),
    ("ConvTranspose", [(1, 3, 5, 5), (3, 2, 3, 3)], dict(output_padding=[-1, 0]),
     "'output_padding'"),
    ("ConvTranspose", [(1, 3, 5, 5), (3, 2, 3, 3)], dict(output_padding=[0, 2], strides=[2, 2]),
     "must be less than max(stride, dilation) = 2"),
    ("DeformConv", [(1, 4, 5, 5), (2, 4, 3, 3), (1, 9, 3, 3)], {}, "offset has shape"),
    ("DeformConv", [(1, 4, 5, 5), (2, 4, 3, 3), (1, 18, 3, 3)], dict(offset_group=3),
     "offset_group 3 does not divide"),
    ("DeformConv", [(1, 4, 5, 5), (2, 4, 3, 3), (1, 18, 3, 3), (2,), (1, 18, 3, 3)], {},
     "mask has shape"),
    ("MaxPool", [(1, 3, 8, 8)], {}, "'kernel_shape' is required"),
    ("MaxPool", [(1, 3, 8, 8)], dict(kernel_shape=[2, 2], pads=[2, 0, 0, 0]),
     "cover only padding"),
    ("MaxPool", [(1, 3, 8, 8)], dict(kernel_shape=[2, 2], storage_order=2), "storage_order"),
    ("MaxPool", [(1, 3, 8, 8)], dict(kernel_shape=[2, 2], ceil_mode=2), "ceil_mode"),
    ("MaxPool", [(1, 3, 8, 8)], dict(kernel_shape=[9, 2]), "larger than the padded input"),
    ("AveragePool", [(1, 3, 8, 8)], dict(kernel_shape=[2, 2], count_include_pad=3),
     "count_include_pad"),
    ("AveragePool", [(1, 3, 8)], dict(kernel_shape=[2, 2]), "'kernel_shape' has 2 values"),
    ("LpPool", [(1, 3, 8, 8)], dict(kernel_shape=[2, 2], p=0), "p must be >= 1"),
    ("GlobalAveragePool", [(3, 8)], {}, "rank >= 3"),
    ("BatchNormalization", [(1, 3, 4, 4), (3,), (3,), (3,), (3,)], dict(training_mode=1),
     "only inference"),
    ("BatchNormalization", [(1, 3, 4, 4), (4,), (3,), (3,), (3,)], {}, "scale has shape [4]"),
    ("InstanceNormalization", [(1, 3, 4, 4), (3,), (2,)], {}, "B has shape [2]"),
    ("LayerNormalization", [(2, 3, 4), (4,)], dict(axis=3), "axis 3 out of range"),
    ("LayerNormalization", [(2, 3, 4), (3,)], {}, "does not broadcast"),
    ("LayerNormalization", [(2, 3, 4), (4,)], dict(stash_type=7), "stash_type 7"),
    ("LRN", [(1, 3, 4, 4)], {}, "missing required attribute 'size'"),
    ("LRN", [(1, 3, 4, 4)], dict(size=0), "size must be >= 1"),
    ("LpNormalization", [(1, 3, 4)], dict(p=3), "p must be 1 or 2"),
    ("MeanVarianceNormalization", [(1, 3, 4)], dict(axes=[0, 5]), "out of range"),
]


@pytest.mark.parametrize("op,shapes,attrs,fragment", BAD)
def test_bad_attributes_raise_compile_error_naming_node(op, shapes, attrs, fragment):
    inputs = [np.ones(s, F) for s in shapes]
    with pytest.raises(CompileError) as info:
        one_node(op, inputs, attrs, name="the_node")
    assert info.value.node == "the_node"
    assert "the_node" in str(info.value) and fragment in str(info.value), str(info.value)


def test_batch_norm_extra_outputs_rejected():
    inputs = [np.ones((1, 3, 2, 2), F)] + [np.ones(3, F)] * 4
    with pytest.raises(CompileError, match="only inference"):
        one_node("BatchNormalization", inputs, {}, n_out=3, name="bn")


def test_conv_rejects_integer_input():
    with pytest.raises(CompileError, match="float tensor"):
        one_node("Conv", [np.ones((1, 3, 4, 4), np.int32), np.ones((2, 3, 1, 1), np.int32)], {})
