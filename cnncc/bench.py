"""`cnncc bench`: unfused (opt 0) vs fused (opt 3) vs onnxruntime, measured side by side.

Variants are timed interleaved (one call of each per round, in turn) so that noise from other
processes hits all of them alike; medians and 90th percentiles over the rounds are reported, with
speedups relative to the fused model. `--ablate` compiles the pipeline with each pass left out in
turn and reports what each pass buys; `--per-layer` times every kernel of the fused model, with
its share of the FMA peak (cnncc/peak.py, measured once per run at the bench's thread count),
and times the unfused model's kernels too, each with its place on the roofline (cnncc/roofline.py:
bytes, FLOP/byte, the roof set by the peak and the bandwidth of cnncc/bandwidth.py).
The arena figures of the native variants (peak vs no reuse, cnncc/lower/memory_plan.py) come
with every report.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .cache import wait_for_stores
from .driver import host_target
from .compile_time import format_stages
from .ir import Graph
from .lower.memory_plan import format_summary
from .bandwidth import Bandwidth, bandwidth, measure_bandwidth  # noqa: F401 (bandwidth: API)
from .peak import fma_peak, measure_peak  # noqa: F401 (cnncc.bench.fma_peak is public API)
from .tune import tuned_line
from .roofline import format_layers, layer_rows
from .roofline_plot import require_pyplot


@dataclass
class VariantResult:
    name: str
    median_ms: float
    p90_ms: float
    compile_s: float
    samples_ms: list[float] = field(repr=False, default_factory=list)


@dataclass
class BenchReport:
    model: str
    threads: int
    rounds: int
    variants: list[VariantResult]
    speedups: dict[str, float]
    ablation: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    unfused_layers: list[dict] = field(default_factory=list)
    bandwidth: dict | None = None          # cnncc.bandwidth.Bandwidth as a dict (--per-layer)
    memory: dict[str, dict] = field(default_factory=dict)     # variant -> arena summary
    peak_gflops: float | None = None      # FMA peak at ``threads`` (llvm target)
    openmp_wait: str = ""                  # how idle workers of cnncc's thread pool wait
    machine: str = ""                      # the Target compiled for (Target.describe())
    tuned: str = ""                        # which kernels the tuning log serves (cnncc tune)
    compile_stages: dict = field(default_factory=dict)   # of the fused model (compile_time.py)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _progress(step: int, total: int, text: str) -> None:
    width = 24
    done = int(width * step / total)
    print(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} {text:<48}", end="",
          file=sys.stderr, flush=True)
    if step == total:
        print(file=sys.stderr)


def ort_runner(onnx_model: Any, threads: int) -> Callable[[list[np.ndarray]], Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda xs: sess.run(None, dict(zip(names, xs)))


def machine_line(threads: int) -> str:
    """The Target that target llvm compiles for at ``threads``, in one line."""
    return host_target(threads).describe()


def openmp_wait_policy() -> str:
    """How idle workers of cnncc's thread pool wait in this process: what `cnncc.compile` users
    get too (the bench sets nothing of its own)."""
    from .backends.llvm.jit import wait_policy
    return wait_policy()


# Before each runner's turn the process must be idle: at most QUIET_CPU_S of CPU time in a
# window of QUIET_WINDOW_S, waited for at most QUIET_MAX_S (a busy machine cannot be waited out).
QUIET_WINDOW_S = 0.005
QUIET_CPU_S = 0.0005
QUIET_MAX_S = 0.25


def wait_until_idle() -> float:
    """Sleep until the threads of this process stop using CPU (another engine's pool spinning
    after its last call); returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < QUIET_MAX_S:
        c0 = time.process_time()
        time.sleep(QUIET_WINDOW_S)
        if time.process_time() - c0 <= QUIET_CPU_S:
            break
    return time.perf_counter() - start


def time_interleaved(runners: dict[str, Callable[[], Any]], rounds: int,
                     warmup: int = 3) -> dict[str, list[float]]:
    """Milliseconds per call of each runner, calls interleaved round by round.

    In each round every runner waits until the process is idle, makes one untimed call, then
    the timed one. The wait matters: idle worker threads spin for a while after their last
    job (onnxruntime's pool for tens of ms, cnncc's pool workers ~50 us), and a runner timed
    while another engine's workers still spin on the same cores measures the two sharing them
    (MobileNetV2 at 2 threads on 2 cores: cnncc 5.5 ms after onnxruntime's call vs 1.8 ms
    alone). The untimed call wakes the runner's own workers, so the timed call is the
    steady-state latency of a model called repeatedly, as a user's loop sees it. Models still
    being stored in the compile cache (a background thread) are stored first."""
    wait_for_stores()
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            wait_until_idle()
            fn()
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


def _summary(name: str, ms: list[float], compile_s: float) -> VariantResult:
    return VariantResult(name, float(np.median(ms)), float(np.percentile(ms, 90)), compile_s, ms)


def benchmark(graph: Graph, onnx_model: Any | None, target: str = "llvm", threads: int = 1,
              rounds: int = 30, ablate: bool = False, per_layer: bool = False,
              with_ort: bool = True, progress: bool = True) -> BenchReport:
    from .driver import compile
    from .passes import PassContext, enabled_passes

    passes = [p.name for p in enabled_passes(PassContext(opt_level=3, target=target))]
    plan: list[tuple[str, dict]] = [("unfused", {"opt_level": 0}), ("fused", {"opt_level": 3})]
    if ablate:
        plan += [(f"fused -{p}", {"opt_level": 3, "skip_passes": [p]}) for p in passes]
    peak = target == "llvm"
    steps = len(plan) + (1 if with_ort and onnx_model is not None else 0) + 1 + peak
    models: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    for k, (name, opts) in enumerate(plan):
        if progress:
            _progress(k, steps, f"compiling {name}")
        t0 = time.perf_counter()
        models[name] = compile(graph, target=target, threads=threads, **opts)
        compile_s[name] = time.perf_counter() - t0
    x = [np.random.default_rng(0).standard_normal(s).astype(d)
         for s, d in zip(models["fused"].input_shapes, models["fused"].input_dtypes)]
    runners: dict[str, Callable[[], Any]] = {n: (lambda m=m: m(*x)) for n, m in models.items()}
    if with_ort and onnx_model is not None:
        if progress:
            _progress(len(plan), steps, "creating onnxruntime session")
        t0 = time.perf_counter()
        ort_run = ort_runner(onnx_model, threads)
        if ort_run is not None:
            runners["onnxruntime"] = lambda: ort_run(x)
            compile_s["onnxruntime"] = time.perf_counter() - t0
    peak_gflops = None
    measured_bandwidth = None
    if peak:
        if progress:
            _progress(steps - 2, steps, f"measuring the FMA peak on {threads} thread(s)")
        peak_gflops = measure_peak(threads).gflops
        if per_layer:
            measured_bandwidth = measure_bandwidth(threads)
    if progress:
        _progress(steps - 1, steps, f"timing {len(runners)} variants x {rounds} rounds")
    samples = time_interleaved(runners, rounds)
    if progress:
        _progress(steps, steps, "done")
    results = [_summary(n, samples[n], compile_s[n]) for n in runners]
    by = {r.name: r.median_ms for r in results}
    speedups = {"fused vs unfused": by["unfused"] / by["fused"]}
    if "onnxruntime" in by:
        speedups["fused vs onnxruntime"] = by["onnxruntime"] / by["fused"]
        speedups["unfused vs onnxruntime"] = by["onnxruntime"] / by["unfused"]
    report = BenchReport(graph.name, threads, rounds, results, speedups,
                         peak_gflops=peak_gflops,
                         openmp_wait=openmp_wait_policy() if threads > 1 else "",
                         machine=machine_line(threads) if target == "llvm" else "",
                         tuned=tuned_line(graph, host_target(threads)) if target == "llvm" else "",
                         compile_stages=getattr(models["fused"], "compile_stages", {}))
    for name in ("unfused", "fused"):
        memory = models[name].memory_report()
        if memory is not None:
            report.memory[name] = memory
    if ablate:
        for p in passes:
            ms = by[f"fused -{p}"]
            report.ablation.append({"pass": p, "without_ms": ms, "with_ms": by["fused"],
                                    "buys": ms / by["fused"]})
    if per_layer:
        report.bandwidth = asdict(measured_bandwidth) if measured_bandwidth else None
        report.layers = per_layer_table(models["fused"], graph, x, peak_gflops,
                                        measured_bandwidth)
        report.unfused_layers = per_layer_table(models["unfused"], graph, x, peak_gflops,
                                                measured_bandwidth)
    return report


def per_layer_table(model: Any, graph: Graph, inputs: list[np.ndarray],
                    peak_gflops: float | None = None,
                    measured_bandwidth: Bandwidth | None = None) -> list[dict]:
    """Median time, GFLOP/s, bytes and FLOP/byte per graph node of ``model`` (summed over the
    node's kernels, cnncc/roofline.py); with ``peak_gflops``, also its percentage of that peak
    (``peak_pct``), and with ``measured_bandwidth`` too its roof.

    Needs a target that can call its kernels one by one (llvm's ``profile``)."""
    profile = getattr(model, "profile", None)
    program = getattr(model, "program", None)
    if profile is None or program is None:
        from .ir import CompileError
        raise CompileError(f"target {model.target} cannot time kernels one by one")
    rows = layer_rows(program, profile(inputs), peak_gflops, measured_bandwidth)
    in_order = {row["node"]: row for row in layer_rows(program, profile(inputs, in_order=True),
                                                         peak_gflops)}
    for row in rows:
        # The same kernels timed inside whole-program runs (the caches the kernels before left).
        other = in_order.get(row["node"])
        if other is not None:
            row["ms_in_order"] = other["ms"]
            row["gflops_in_order"] = other["gflops"]
            if "peak_pct" in other:
                row["peak_pct_in_order"] = other["peak_pct"]
    return rows


def format_report(r: BenchReport) -> str:
    lines = [f"model {r.model}: {r.threads} thread(s), {r.rounds} interleaved rounds"
             + (f"; threads: {r.openmp_wait}" if r.openmp_wait else ""),
             f"{'variant':<34} {'median ms':>10} {'p90 ms':>10} {'compile s':>10}"]
    if r.machine:
        lines.insert(1, f"target: {r.machine}")
    if r.tuned:
        lines.insert(2, r.tuned)
    for v in r.variants:
        lines.append(f"{v.name:<34} {v.median_ms:>10.3f} {v.p90_ms:>10.3f} {v.compile_s:>10.2f}")
    for k, s in r.speedups.items():
        lines.append(f"speedup {k}: {s:.2f}x")
    if r.compile_stages:
        lines.append("fused " + format_stages(r.compile_stages))
    for name, memory in r.memory.items():
        lines.append(f"{name} {format_summary(memory)}")
    if r.peak_gflops:
        lines.append(f"FMA peak: {r.peak_gflops:.1f} GFLOP/s on {r.threads} thread(s)")
    if r.bandwidth:
        lines.append(Bandwidth.from_dict(r.bandwidth).describe())
    if r.ablation:
        lines.append("ablation (fused model with one pass left out):")
        for a in r.ablation:
            lines.append(f"  without {a['pass']:<24} {a['without_ms']:>9.3f} ms  "
                         f"(the pass buys {a['buys']:.2f}x)")
    if r.layers:
        lines += format_layers(r.layers, "per layer (fused model, each node's kernels timed "
                                         "alone; 'in order': within whole-program runs):")
    if r.unfused_layers:
        lines += format_layers(r.unfused_layers, "per layer (unfused model):")
    return "\n".join(lines)


def require_matplotlib() -> Any:
    """pyplot (non-interactive backend), or a clear error naming the extra to install."""
    return require_pyplot("--plot")


def plot_report(r: BenchReport, path: str) -> None:
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(r.variants) + 1.5))
    names = [v.name for v in r.variants]
    med = [v.median_ms for v in r.variants]
    err = [v.p90_ms - v.median_ms for v in r.variants]
    ax.barh(names, med, xerr=[[0] * len(err), err], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("latency, ms (median; whisker to p90)")
    ax.set_title(f"{r.model}, {r.threads} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
