"""The FMA peak micro-kernel (cnncc/peak.py): its numbers against numpy, and the CLI flag.

Timings are not asserted (other processes share the machine), only that they are measured.
The numpy reference iterates x <- x * a + b in float64; the kernel's float32 FMAs differ by a few
roundings per step: relative error <= 1e-5 after 7 steps.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import cnncc.bench
from cnncc.backends.llvm import jit
from cnncc.cli import main
from cnncc.ir.loop import For
from cnncc.peak import chains_for, fma_kernel, measure_peak, run_fma
from cnncc.testing import relative_error


def _reference(x: np.ndarray, ab: np.ndarray, iterations: int) -> np.ndarray:
    y = x.astype(np.float64)
    for _ in range(iterations):
        y = y * ab[0].astype(np.float64) + ab[1].astype(np.float64)
    return y


@pytest.mark.parametrize("threads,blocks", [(1, 1), (1, 3), (2, 4)])
def test_fma_kernel_matches_numpy(threads, blocks):
    lanes = jit.vector_lanes()
    chains = chains_for(lanes)
    rng = np.random.default_rng(blocks)
    # Every block, chain and lane its own start, every lane its own coefficients: a mixed-up
    # index or a skipped chain shows.
    x = rng.uniform(-2, 2, (blocks, chains, lanes)).astype(np.float32)
    ab = np.stack([rng.uniform(0.5, 1.0, lanes), rng.uniform(-1, 1, lanes)]).astype(np.float32)
    expect = _reference(x, ab, 7)
    run_fma(x, ab, 7, threads)
    err = relative_error(x, expect)
    assert err <= 1e-5, f"relative error {err:.2e}"


def test_fma_kernel_structure():
    k = fma_kernel(5, 16, 24, 2)
    assert [b.shape for b in k.params] == [(2, 24, 16), (2, 16)]
    loop = k.body
    assert isinstance(loop, For) and loop.kind == "parallel"


def test_measure_peak_reports_its_shape():
    peak = measure_peak(1, iterations=4000, repeat=3)
    lanes = jit.vector_lanes()
    assert (peak.threads, peak.lanes, peak.chains, peak.iterations) == (1, lanes,
                                                                        chains_for(lanes), 4000)
    assert np.isfinite(peak.gflops) and peak.gflops > 0
    assert cnncc.bench.fma_peak(1) > 0


def test_cli_bench_peak(capsys):
    assert main(["bench", "--peak"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FMA peak: ") and "GFLOP/s on 1 thread(s)" in out
    assert main(["bench", "--peak", "--threads", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["threads"] == 2 and data["gflops"] > 0
    assert main(["bench", "--peak", "--threads", "0"]) == 1
    assert "--threads must be positive" in capsys.readouterr().err
