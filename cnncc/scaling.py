"""`cnncc bench MODEL --scaling [1,2,...]`: latency at several thread counts, side by side.

The model is compiled once per thread count as `cnncc.compile(..., threads=N)` gives it (default
wait policy, nothing set in the environment) and onnxruntime gets one session per count; all
of them are timed interleaved call by call (cnncc.bench.time_interleaved: each runner waits
until the process is idle, so no engine's spinning workers are timed with another's call).
Scaling = latency at the first count / latency at N: the number users ask for ("what does a
second core buy?"), measured in one process, one run, on the same inputs.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from .bench import openmp_wait_policy, ort_runner, time_interleaved
from .driver import compile
from .ir import Graph, InputError


@dataclass
class ScalingRow:
    threads: int
    cnncc_ms: float
    cnncc_scaling: float          # first row's cnncc_ms / this row's
    ort_ms: float | None = None
    ort_scaling: float | None = None

    @property
    def ratio(self) -> float | None:
        """cnncc / onnxruntime latency at this thread count."""
        return self.cnncc_ms / self.ort_ms if self.ort_ms else None


def default_counts() -> str:
    """1 and every core this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"1,{max(1, cores or 1)}"


def parse_counts(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2]; InputError for anything but distinct positive integers."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if len(counts) < 2 or any(n < 1 for n in counts) or len(set(counts)) != len(counts):
        raise InputError(f"--scaling takes two or more distinct positive thread counts "
                         f"separated by commas, got {text!r}")
    return counts


def scaling_benchmark(graph: Graph, onnx_model: Any | None, counts: list[int], rounds: int,
                      with_ort: bool = True,
                      progress: Callable[[str], None] | None = None) -> list[ScalingRow]:
    runners: dict[str, Callable[[], Any]] = {}
    inputs = None
    for n in counts:
        if progress:
            progress(f"compiling for {n} thread(s)")
        model = compile(graph, threads=n)
        if inputs is None:
            rng = np.random.default_rng(0)
            inputs = [rng.standard_normal(s).astype(d)
                      for s, d in zip(model.input_shapes, model.input_dtypes)]
        runners[f"cnncc/{n}"] = lambda m=model: m(*inputs)
        ort = ort_runner(onnx_model, n) if with_ort and onnx_model is not None else None
        if ort is not None:
            runners[f"onnxruntime/{n}"] = lambda o=ort: o(inputs)
    if progress:
        progress(f"timing {len(runners)} runners, {rounds} interleaved rounds")
    ms = {k: float(np.median(v)) for k, v in time_interleaved(runners, rounds).items()}
    first = counts[0]
    rows = []
    for n in counts:
        row = ScalingRow(n, ms[f"cnncc/{n}"], ms[f"cnncc/{first}"] / ms[f"cnncc/{n}"])
        if f"onnxruntime/{n}" in ms:
            row.ort_ms = ms[f"onnxruntime/{n}"]
            row.ort_scaling = ms[f"onnxruntime/{first}"] / row.ort_ms
        rows.append(row)
    return rows


def format_scaling_table(name: str, rounds: int, rows: list[ScalingRow]) -> str:
    lines = [f"model {name}: {rounds} interleaved rounds, medians; scaling = latency at "
             f"{rows[0].threads} thread(s) / latency at N; threads: {openmp_wait_policy()}",
             f"{'threads':>7} {'cnncc ms':>10} {'scaling':>8} {'ORT ms':>10} {'scaling':>8} "
             f"{'cnncc/ORT':>10}"]
    for r in rows:
        ort = (f"{r.ort_ms:>10.3f} {r.ort_scaling:>7.2f}x {r.ratio:>10.3f}"
               if r.ort_ms is not None else f"{'-':>10} {'-':>8} {'-':>10}")
        lines.append(f"{r.threads:>7} {r.cnncc_ms:>10.3f} {r.cnncc_scaling:>7.2f}x {ort}")
    return "\n".join(lines)


def scaling_json(name: str, rounds: int, rows: list[ScalingRow]) -> str:
    return json.dumps({"model": name, "rounds": rounds, "wait_policy": openmp_wait_policy(),
                       "counts": [dict(asdict(r), ratio=r.ratio) for r in rows]}, indent=2)
