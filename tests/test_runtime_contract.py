"""The call contract of compiled models on every target: bad inputs get clear errors, odd but
valid inputs (strided, misaligned, read-only) get correct results, concurrent calls agree bitwise,
repeated calls do not leak, and NaN/Inf propagate (the policy written in the README)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cnncc
from cnncc.testing import target_params
from cnncc.dsl import zoo
from cnncc.ir import InputError

TARGETS = target_params()
NATIVE = target_params(native_only=True)


@pytest.fixture(scope="module")
def net():
    return zoo.tiny_cnn(seed=3)


@pytest.fixture(scope="module", params=TARGETS)
def model(request, net):
    return cnncc.compile(net, target=request.param)


def sample(model, seed=0):
    return np.random.default_rng(seed).standard_normal(model.input_shapes[0]).astype(np.float32)


def test_bad_inputs_are_refused(model):
    x = sample(model)
    with pytest.raises(InputError, match="takes 1 input"):
        model(x, x)
    with pytest.raises(InputError, match="expected shape"):
        model(x[..., :-1])
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        model(x.astype(np.float64))
    with pytest.raises(InputError, match="expected dtype float32, got int32"):
        model(x.astype(np.int32))
    with pytest.raises(InputError, match="expected a numpy array"):
        model(x.tolist())
    with pytest.raises(InputError, match="missing input"):
        model.run({})


def test_strided_misaligned_and_readonly_inputs(model):
    x = sample(model)
    ref = model(x)
    # A strided view (every other element of a larger array).
    big = np.zeros(x.shape[:-1] + (x.shape[-1] * 2,), np.float32)
    big[..., ::2] = x
    np.testing.assert_array_equal(model(big[..., ::2]), ref)
    # A misaligned array: its data starts 4 bytes into a buffer (not 16- or 64-byte aligned).
    raw = np.zeros(x.size * 4 + 4, np.uint8)
    mis = np.frombuffer(raw.data, np.float32, count=x.size, offset=4).reshape(x.shape)
    assert mis.ctypes.data % 16 != 0
    raw[4:] = x.view(np.uint8).ravel()
    np.testing.assert_array_equal(model(mis), ref)
    # A read-only input is read, never written.
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(model(ro), ref)
    # Fortran order.
    np.testing.assert_array_equal(model(np.asfortranarray(x)), ref)


def test_outputs_are_owned_by_the_caller(model):
    x = sample(model)
    y1 = model(x)
    y1[...] = np.nan
    y2 = model(x)
    assert np.isfinite(y2).all() and not np.shares_memory(y1, y2)


@pytest.mark.parametrize("target", NATIVE)
def test_concurrent_calls_are_bitwise_equal(net, target):
    model = cnncc.compile(net, target=target)
    inputs = [sample(model, seed) for seed in range(8)]
    expected = [model(x) for x in inputs]
    errors = []

    def worker(k: int) -> None:
        try:
            for i in range(200):
                j = (k + i) % len(inputs)
                if not np.array_equal(model(inputs[j]), expected[j]):
                    errors.append(f"thread {k} call {i}: result differs")
                    return
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {k}: {e!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.parametrize("target", TARGETS)
def test_repeated_calls_do_not_grow_memory(net, target):
    model = cnncc.compile(net, target=target)
    x = sample(model)
    for _ in range(200):               # warm up allocator pools
        model(x)
    # A leak grows RSS in every window of calls; a one-off growth (an allocator arena or a
    # page touched late, other tests' garbage in a shared pytest-xdist worker) shows in one.
    growths = []
    for _ in range(2):
        before = _rss_bytes()
        for _ in range(3000):
            model(x)
        growths.append(_rss_bytes() - before)
    # 3000 calls allocating even 1 KiB each that is never freed would show as 3 MB per window.
    assert min(growths) < 2 << 20, \
        f"RSS grew by {[round(g / 1e6, 1) for g in growths]} MB over two windows of 3000 calls"


def _nan_graph(op: str, attrs: dict | None = None):
    from cnncc.ir import DType, Graph, TensorType

    g = Graph(f"nan_{op}")
    g.add_input("x", TensorType(DType.float32, (1, 3, 6, 6)))
    ins = ["x"]
    if op == "Conv":
        ins.append(g.add_param("w", np.full((4, 3, 3, 3), 0.5, np.float32)))
    if op == "Clip":
        ins += [g.add_param("lo", np.float32(0)), g.add_param("hi", np.float32(6))]
    (y,) = g.add_node(op, ins, attrs or {}, name="op")
    g.outputs = [y]
    return g


NAN_OPS = [("Conv", {"pads": [1, 1, 1, 1]}), ("Relu", {}), ("Clip", {}), ("Sigmoid", {}),
           ("LeakyRelu", {}), ("HardSwish", {}), ("Tanh", {}),
           ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
           ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
           ("GlobalAveragePool", {}), ("GlobalMaxPool", {})]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op,attrs", NAN_OPS, ids=[o for o, _ in NAN_OPS])
def test_nan_and_inf_propagate(target, op, attrs):
    """Policy: NaN in, NaN out wherever it is read (IEEE arithmetic; max/min/relu/clip/pools do
    not swallow NaN); +-Inf follow IEEE arithmetic too."""
    g = _nan_graph(op, attrs)
    ref_model = cnncc.compile(g, target="reference")
    model = cnncc.compile(g, target=target)
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 4, 4] = np.inf
    x[0, 0, 0, 0] = -np.inf
    got, ref = model(x), ref_model(x)
    assert np.isnan(ref).any(), "the reference must propagate NaN"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
