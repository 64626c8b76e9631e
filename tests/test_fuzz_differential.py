"""Differential fuzzing: random CNN graphs must agree on onnxruntime, the reference target and
every native target at opt_level 0 and 3 (rtol 1e-3, atol 1e-5). Random quantized (QDQ) graphs
(tests/graphgen_quant.py) must agree with the reference target within QUANT_STEPS output steps
on every native target at opt_level 0 and 3 (each quantized op is within one step of its
reference, float32 against float64 rounding at ties; a step off in one layer can move the next).

Seeded (derandomized) so CI is reproducible; `pytest --fuzz-long` runs thousands of graphs.
A disagreement is shrunk by hypothesis to a minimal graph; each one found is kept below as a
regression test.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings

import cnncc
from cnncc.backends import BACKENDS
from graphgen import cnn_models
from graphgen_quant import quantized_models

# Native targets that can run here (target cuda needs a GPU: tests/test_cuda_target.py says so).
NATIVE = [t for t, spec in BACKENDS.items() if spec.native and spec.missing() is None]
# cuda-emu costs a g++ build per graph: it checks every EMU_EVERY-th graph, at opt_level 3.
EMU_EVERY = 5
RTOL, ATOL = 1e-3, 1e-5
QUANT_STEPS = 2
QUANT_SHARE = 15        # one quantized graph per QUANT_SHARE float graphs
_seen = [0]


def ort_run(model, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def check_model(model, x: np.ndarray) -> None:
    ref = ort_run(model, x)
    got = cnncc.compile(model, target="reference")(x)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg="reference vs onnxruntime")
    _seen[0] += 1
    for target in NATIVE:
        if target == "cuda-emu" and _seen[0] % EMU_EVERY:
            continue
        for opt in ((3,) if target == "cuda-emu" else (0, 3)):
            got = cnncc.compile(model, target=target, opt_level=opt)(x)
            np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{target} opt_level={opt} vs onnxruntime")


def test_differential_random_cnns(fuzz_examples):
    @settings(max_examples=fuzz_examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cnn_models())
    def run(case):
        check_model(*case)

    run()


def check_quantized(model, x: np.ndarray, step: float) -> None:
    ref = cnncc.compile(model, target="reference")(x)[0]
    _seen[0] += 1
    for target in NATIVE:
        if target == "cuda-emu" and _seen[0] % EMU_EVERY:
            continue
        for opt in ((3,) if target == "cuda-emu" else (0, 3)):
            got = cnncc.compile(model, target=target, opt_level=opt)(x)[0]
            off = float(np.abs(got - ref).max()) / step
            assert off <= QUANT_STEPS * 1.0001, f"{target} opt_level={opt}: {off:.2f} steps off"


def test_differential_random_quantized_graphs(fuzz_examples):
    @settings(max_examples=max(5, fuzz_examples // QUANT_SHARE), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(quantized_models())
    def run(case):
        check_quantized(*case)

    run()
