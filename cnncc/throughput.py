"""`cnncc bench --batch N[,N...]`: images per second of cnncc and onnxruntime at batch N.

One cnncc model serves every N (the batch is a run-time argument, cnncc/ir/batch.py); onnxruntime
runs the same ONNX model with its batch dim made symbolic. Both are timed interleaved, call by
call (cnncc.bench.time_interleaved), and images/s is N over the median call.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from .ir import Graph, InputError


@dataclass
class BatchRow:
    batch: int
    cnncc_ms: float
    cnncc_images_per_s: float
    ort_ms: float | None = None
    ort_images_per_s: float | None = None

    @property
    def ratio(self) -> float | None:
        """cnncc images/s over onnxruntime's."""
        return self.cnncc_images_per_s / self.ort_images_per_s if self.ort_images_per_s else None


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32]; InputError for anything but positive integers."""
    try:
        batches = [int(part) for part in text.split(",")]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise InputError(f"--batch takes positive integers separated by commas, got {text!r}")
    return batches


def symbolic_batch(onnx_model: Any) -> Any:
    """A copy of ``onnx_model`` whose inputs' and outputs' leading dim is the symbol "batch" (the
    intermediate shapes recorded at batch 1 are dropped: onnxruntime infers them again)."""
    model = type(onnx_model)()
    model.CopyFrom(onnx_model)
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    return model


def batch_benchmark(graph: Graph, onnx_model: Any | None, batches: list[int], threads: int,
                    rounds: int, target: str = "llvm", with_ort: bool = True,
                    progress: Callable[[str], None] | None = None) -> list[BatchRow]:
    from .bench import ort_runner, time_interleaved
    from .driver import compile

    model = compile(graph, target=target, threads=threads)
    if model.batch_refusal is not None and batches != [model.input_shapes[0][0]]:
        raise InputError(f"{graph.name} runs only its compiled batch: {model.batch_refusal}")
    ort_run = None
    if with_ort and onnx_model is not None:
        ort_run = ort_runner(symbolic_batch(onnx_model), threads)
    rows = []
    for n in batches:
        if progress:
            progress(f"timing batch {n}")
        rng = np.random.default_rng(n)
        x = [rng.standard_normal((n,) + s[1:]).astype(d)
             for s, d in zip(model.input_shapes, model.input_dtypes)]
        runners: dict[str, Callable[[], Any]] = {"cnncc": lambda: model(*x)}
        if ort_run is not None:
            runners["onnxruntime"] = lambda: ort_run(x)
        samples = time_interleaved(runners, rounds, warmup=1)
        ms = {k: float(np.median(v)) for k, v in samples.items()}
        row = BatchRow(n, ms["cnncc"], n / ms["cnncc"] * 1e3)
        if "onnxruntime" in ms:
            row.ort_ms, row.ort_images_per_s = ms["onnxruntime"], n / ms["onnxruntime"] * 1e3
        rows.append(row)
    return rows


def format_batch_table(name: str, threads: int, rounds: int, rows: list[BatchRow]) -> str:
    lines = [f"model {name}: {threads} thread(s), {rounds} interleaved rounds per batch "
             "(images/s = batch / median call)",
             f"{'batch':>6} {'cnncc ms':>10} {'cnncc img/s':>12} {'ORT ms':>10} "
             f"{'ORT img/s':>10} {'cnncc/ORT':>10}"]
    for r in rows:
        ort = (f"{r.ort_ms:>10.2f} {r.ort_images_per_s:>10.1f} {r.ratio:>9.2f}x"
               if r.ort_ms is not None else f"{'-':>10} {'-':>10} {'-':>10}")
        lines.append(f"{r.batch:>6} {r.cnncc_ms:>10.2f} {r.cnncc_images_per_s:>12.1f} {ort}")
    return "\n".join(lines)


def batch_json(name: str, threads: int, rounds: int, rows: list[BatchRow]) -> str:
    return json.dumps({"model": name, "threads": threads, "rounds": rounds,
                       "batches": [dict(asdict(r), ratio=r.ratio) for r in rows]}, indent=2)


def print_progress(text: str) -> None:
    print(f"\r{text:<60}", end="", file=sys.stderr, flush=True)


def run_batch_bench(args: Any, graph: Graph, onnx_model: Any) -> int:
    """`cnncc bench --batch ...` (args: the bench command's)."""
    mixed = [flag for flag, on in (("--ablate", args.ablate), ("--per-layer", args.per_layer),
                                   ("--plot", args.plot)) if on]
    if mixed:
        raise InputError(f"--batch times whole models: it does not combine with "
                         f"{', '.join(mixed)}")
    rows = batch_benchmark(graph, onnx_model, parse_batches(args.batch), args.threads,
                           args.rounds, args.target or "llvm", not args.no_ort,
                           None if args.json else print_progress)
    if not args.json:
        print(file=sys.stderr)
    print((batch_json if args.json else format_batch_table)(graph.name, args.threads,
                                                            args.rounds, rows))
    return 0
