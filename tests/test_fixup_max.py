"""NaN-propagating max (ir/loop.nan_max) as a max and a VFIXUPIMMPS on AVX-512
(backends/llvm/exprs.py ``_fixup_max``), the compare-max-blend form elsewhere: equal to numpy's maximum on every pair of
special values, in a vectorized kernel and in the blocked max pools, on the host ISA and (in a
child process) on AVX2."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import cnncc
from cnncc.backends.llvm import jit
from cnncc.backends.llvm.kernels import compile_kernel
from cnncc.ir import DType, Graph, TensorType
from cnncc.ir.loop import Buffer, For, Kernel, Store, Var, nan_max
from cnncc.ir.schedule import Schedule

AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.0, 3e38, -3e38, 1e-45],
                    np.float32)
FIXUP = "llvm.x86.avx512.mask.fixupimm.ps"


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    a, b = np.meshgrid(SPECIALS, SPECIALS)
    n = -(-a.size // 32) * 32                   # whole vectors and then some, every lane used
    pad = np.random.default_rng(0).standard_normal(n - a.size).astype(np.float32)
    return np.concatenate([a.ravel(), pad]), np.concatenate([b.ravel(), pad[::-1]])


def test_vector_kernel_matches_numpy_on_specials():
    a, b = _pairs()
    n = a.size
    ab, bb, yb = (Buffer(k, DType.float32, (n,)) for k in "aby")
    i = Var("i")
    s = Schedule(Kernel("rmax", [yb, ab, bb], For(i, n, Store(yb, (i,), nan_max(ab[i], bb[i])))))
    s.vectorize(s.split("i", jit.vector_lanes())[1])
    ck = compile_kernel(s.kernel)
    flags = jit.cpu_flags()
    assert (FIXUP in ck.ir_text) == ("avx512f" in flags and (jit.vector_lanes() == 16
                                                              or "avx512vl" in flags))
    y = np.empty(n, np.float32)
    ck({"a": a, "b": b, "y": y})
    expect = np.maximum(a, b)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expect))
    np.testing.assert_array_equal(y, expect)


def _pool_graph() -> Graph:
    """A 1-channel image copied exactly to 16 channels (1x1 conv, weights 1), then the two
    blocked max pools of GoogLeNet / SqueezeNet: 3x3 stride 1 pad 1, 3x3 stride 2 ceil mode."""
    g = Graph("pools")
    g.add_input("x", TensorType(DType.float32, (1, 1, 9, 11)))
    w = g.add_param("w", np.ones((16, 1, 1, 1), np.float32))
    (c,) = g.add_node("Conv", ["x", w], {}, name="copy")
    (p1,) = g.add_node("MaxPool", [c], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                       name="pool1")
    (p2,) = g.add_node("MaxPool", [c], {"kernel_shape": [3, 3], "strides": [2, 2],
                                        "ceil_mode": 1}, name="pool2")
    g.outputs = [p1, p2]
    return g.verify()


def _pool_input() -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((1, 1, 9, 11)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 0, 4, 5], x[0, 0, 8, 10] = np.nan, np.nan, np.nan
    x[0, 0, 2, 7], x[0, 0, 6, 1] = np.inf, -np.inf
    x[0, 0, 7, 3:6] = -np.inf
    return x


@pytest.mark.parametrize("features", [None, AVX2])
def test_blocked_max_pools_propagate_nan(features):
    g, x = _pool_graph(), _pool_input()
    expect = cnncc.compile(g, target="reference")(x)
    code = ("import pickle, sys, cnncc; from cnncc.driver import load_graph, host_target; "
            "from cnncc.passes import PassContext, run_pipeline; "
            "g, x = pickle.load(sys.stdin.buffer); "
            "o = run_pipeline(load_graph(g), PassContext(opt_level=3, machine=host_target(1))); "
            "m = cnncc.compile(g, cache=False, threads=1); "
            "sys.stdout.buffer.write(pickle.dumps(([n.op for n in o.nodes], m(x))))")
    env = dict(os.environ, **({"CNNCC_FEATURES": features} if features else {}))
    run = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((g, x)),
                         capture_output=True, env=env, check=True, timeout=600)
    ops, got = pickle.loads(run.stdout)
    assert ops.count("PoolNCHWc") == 2, ops
    for y, e in zip(got, expect):
        assert np.isnan(e).any() and np.isinf(e).any()
        np.testing.assert_array_equal(y, e)
