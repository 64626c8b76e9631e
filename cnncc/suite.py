"""`cnncc bench --suite`: cnncc against onnxruntime on every model we have, in one table.

The models: every DSL zoo net (exported with ``to_onnx`` for onnxruntime), the light CNNs that
ship with the onnx package (onnx/backend/test/data/light), and any .onnx files given with
``--models DIR`` (e.g. ../shared/models refilled by its fill_weights.py). Each model is compiled
as `cnncc.compile` compiles it (opt 3, default settings, the given threads) and timed against an
onnxruntime session with the same threads, interleaved call by call (cnncc/bench.py:
``time_interleaved``); the table gives medians and the ratio cnncc / onnxruntime (below 1:
cnncc is faster), and the geometric mean of the ratios. The header names the CPU, its ISA and
the measured FMA peak at those threads.
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from .bench import ort_runner, time_interleaved
from .driver import compile, host_target, load_graph
from .dsl.zoo import ZOO
from .ir import CompileError
from .peak import measure_peak

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


@dataclass
class SuiteRow:
    model: str
    source: str                  # "zoo", "onnx light" or the file's folder
    cnncc_ms: float | None
    ort_ms: float | None
    compile_s: float | None
    error: str = ""

    @property
    def ratio(self) -> float | None:
        if self.cnncc_ms and self.ort_ms:
            return self.cnncc_ms / self.ort_ms
        return None


@dataclass
class SuiteReport:
    cpu: str
    machine: str
    threads: int
    rounds: int
    peak_gflops: float
    rows: list[SuiteRow] = field(default_factory=list)

    @property
    def geomean(self) -> float | None:
        ratios = [r.ratio for r in self.rows if r.ratio]
        return math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None

    def to_json(self) -> str:
        data = asdict(self)
        data["geomean"] = self.geomean
        for row, d in zip(self.rows, data["rows"]):
            d["ratio"] = row.ratio
        return json.dumps(data, indent=2)


def suite_models(extra_dirs: list[str] = ()) -> list[tuple[str, str, Any]]:
    """(name, source, model: a DSL net or an .onnx path) of every model of the suite."""
    models: list[tuple[str, str, Any]] = [(name, "zoo", fn) for name, fn in sorted(ZOO.items())]
    for path in sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx"))):
        models.append((os.path.basename(path)[:-len(".onnx")], "onnx light", path))
    for d in extra_dirs:
        if not os.path.isdir(d):
            raise CompileError(f"--models: '{d}' is not a folder")
        for path in sorted(glob.glob(os.path.join(d, "*.onnx"))):
            if not path.endswith(".skel.onnx"):        # weightless skeletons are not models
                models.append((os.path.basename(path)[:-len(".onnx")], d, path))
    return models


def _progress(step: int, total: int, text: str) -> None:
    width = 24
    done = int(width * step / max(1, total))
    print(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} {text:<48}", end="",
          file=sys.stderr, flush=True)


def _measure(spec: Any, threads: int, rounds: int) -> tuple[float, float | None, float]:
    """(cnncc ms, onnxruntime ms or None, compile s) of one model, interleaved medians."""
    source = spec() if callable(spec) else spec
    graph = load_graph(source)
    t0 = time.perf_counter()
    model = compile(graph, threads=threads)
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = [rng.standard_normal(s).astype(d) for s, d in zip(model.input_shapes, model.input_dtypes)]
    runners = {"cnncc": lambda: model(*x)}
    onnx_model = onnx.load(source) if isinstance(source, str) else source.to_onnx()
    ort = ort_runner(onnx_model, threads)
    if ort is not None:
        runners["onnxruntime"] = lambda: ort(x)
    samples = time_interleaved(runners, rounds)
    ort_ms = float(np.median(samples["onnxruntime"])) if ort is not None else None
    return float(np.median(samples["cnncc"])), ort_ms, compile_s


def run_suite(threads: int = 1, rounds: int = 20, extra_dirs: list[str] = (),
              names: list[str] | None = None, progress: bool = True) -> SuiteReport:
    """Time every suite model (or those in ``names``) against onnxruntime at ``threads``."""
    machine = host_target(threads)
    models = suite_models(list(extra_dirs))
    if names:
        unknown = set(names) - {m[0] for m in models}
        if unknown:
            raise CompileError(f"unknown suite model(s) {sorted(unknown)} (suite: "
                               f"{', '.join(m[0] for m in models)})")
        models = [m for m in models if m[0] in names]
    if progress:
        _progress(0, len(models) + 1, f"measuring the FMA peak on {threads} thread(s)")
    report = SuiteReport(machine.model_name or machine.cpu, machine.describe(), threads, rounds,
                         measure_peak(threads).gflops)
    for i, (name, source, spec) in enumerate(models, 1):
        if progress:
            _progress(i, len(models) + 1, name)
        try:
            c_ms, o_ms, comp = _measure(spec, threads, rounds)
            report.rows.append(SuiteRow(name, source, c_ms, o_ms, comp))
        except CompileError as e:       # reported in the table, never a silent gap
            report.rows.append(SuiteRow(name, source, None, None, None, str(e)))
    if progress:
        _progress(len(models) + 1, len(models) + 1, "done")
        print(file=sys.stderr)
    return report


def _cells(r: SuiteRow) -> list[str]:
    fmt = lambda v, f: "-" if v is None else format(v, f)      # noqa: E731
    return [r.model, r.source, fmt(r.cnncc_ms, ".3f"), fmt(r.ort_ms, ".3f"),
            fmt(r.ratio, ".3f"), fmt(r.compile_s, ".1f"), r.error[:60]]


HEADER = ["model", "source", "cnncc ms", "onnxruntime ms", "cnncc/ORT", "compile s", "error"]


def format_suite(r: SuiteReport) -> str:
    rows = [HEADER] + [_cells(x) for x in r.rows]
    width = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [f"cpu: {r.cpu}; target: {r.machine}",
             f"FMA peak {r.peak_gflops:.1f} GFLOP/s on {r.threads} thread(s); "
             f"{r.rounds} interleaved rounds per model, medians"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, width)).rstrip() for row in rows]
    g = r.geomean
    lines.append(f"geo-mean cnncc/onnxruntime over {sum(1 for x in r.rows if x.ratio)} "
                 f"models: {'-' if g is None else f'{g:.3f}'}")
    return "\n".join(lines)


def format_markdown(r: SuiteReport) -> str:
    lines = [f"**{r.cpu}** ({r.machine}); FMA peak {r.peak_gflops:.1f} GFLOP/s on "
             f"{r.threads} thread(s)", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(x)) + " |" for x in r.rows]
    g = r.geomean
    lines += ["", f"geo-mean cnncc/onnxruntime: {'-' if g is None else f'{g:.3f}'}"]
    return "\n".join(lines) + "\n"
