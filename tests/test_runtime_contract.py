"""The call contract of compiled models on every target: bad inputs get clear errors, odd but
valid inputs (strided, misaligned, read-only) get correct results, concurrent calls agree bitwise,
repeated calls do not leak, and NaN/Inf propagate (the policy written in the README); and
CompiledModel's own checks on the reference target (inputs checked before running, bad compile
options refused)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cnncc
from cnncc.testing import target_params
from cnncc.dsl import zoo
from cnncc.ir import DType, Graph, InputError, TensorType

F32 = DType.float32
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


# ---- the contract on the reference target (CompiledModel itself) --------------------------------

@pytest.fixture
def two_io():
    """Two inputs, two outputs, on the reference target: the contract before any backend."""
    g = Graph("two_in_two_out")
    g.add_input("a", TensorType(F32, (2, 3)))
    g.add_input("b", TensorType(F32, (3,)))
    (s,) = g.add_node("Add", ["a", "b"], name="s")
    (p,) = g.add_node("Mul", ["a", "b"], name="p")
    g.outputs = [s, p]
    return cnncc.compile(g, target="reference")


def test_signature(two_io):
    assert two_io.input_names == ["a", "b"] and two_io.output_names == ["s", "p"]
    assert two_io.input_shapes == [(2, 3), (3,)] and two_io.output_shapes == [(2, 3), (2, 3)]
    assert two_io.input_dtypes == [np.float32, np.float32]
    assert "reference" in repr(two_io)


def test_call_and_run_agree(two_io):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 2, 3], np.float32)
    s, p = two_io(a, b)
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(p, a * b)
    out = two_io.run({"a": a, "b": b})
    assert list(out) == ["s", "p"]
    np.testing.assert_array_equal(out["p"], p)


def test_wrong_count(two_io):
    with pytest.raises(InputError, match="takes 2 input"):
        two_io(np.zeros((2, 3), np.float32))


def test_wrong_shape(two_io):
    with pytest.raises(InputError, match=r"input 'b': expected shape \[3\], got \[4\]"):
        two_io(np.zeros((2, 3), np.float32), np.zeros(4, np.float32))


def test_wrong_dtype(two_io):
    with pytest.raises(InputError, match="input 'a': expected dtype float32, got float64"):
        two_io(np.zeros((2, 3)), np.zeros(3, np.float32))


def test_not_an_array(two_io):
    with pytest.raises(InputError, match="expected a numpy array"):
        two_io([[0.0] * 3] * 2, np.zeros(3, np.float32))


def test_run_names(two_io):
    with pytest.raises(InputError, match=r"missing input\(s\) \['b'\].*unknown input\(s\) \['c'\]"):
        two_io.run({"a": np.zeros((2, 3), np.float32), "c": np.zeros(3, np.float32)})


def test_non_contiguous_input_is_copied(two_io):
    big = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = big[:2, :3]                      # a strided view
    b = np.arange(6, dtype=np.float32)[::2]
    s, _ = two_io(a, b)
    np.testing.assert_array_equal(s, np.ascontiguousarray(a) + np.ascontiguousarray(b))


def test_outputs_are_fresh_arrays(two_io):
    a = np.ones((2, 3), np.float32)
    b = np.ones(3, np.float32)
    s1, _ = two_io(a, b)
    s1[:] = 42
    s2, _ = two_io(a, b)
    np.testing.assert_array_equal(s2, a + b)


def test_compile_rejects_bad_options():
    g = Graph("g")
    g.add_input("x", TensorType(F32, (1,)))
    g.outputs = ["x"]
    with pytest.raises(cnncc.CompileError, match="unknown target 'tpu'"):
        cnncc.compile(g, target="tpu")
    with pytest.raises(cnncc.CompileError, match="opt_level"):
        cnncc.compile(g, target="reference", opt_level=7)
    with pytest.raises(cnncc.CompileError, match="threads"):
        cnncc.compile(g, target="reference", threads=0)
    with pytest.raises(cnncc.CompileError, match="cannot compile a int"):
        cnncc.compile(3, target="reference")
