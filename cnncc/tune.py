"""`cnncc tune`: measure a few schedules per workload of a model on this machine and log the
winners (cnncc/tuning_log.py), which `cnncc.compile` then uses.

A workload is a tunable kernel as its key names it (op, shapes, window, the target's vectors and
threads); a model's kernels with equal keys are one workload. The tunable kernels
(tuning_log.SCHEDULE_KINDS) are the dense NCHWc convs, where nearly all of a CNN's time goes
(their register tile and, with several threads, their loop order: cnncc/lower/conv_nchwc_tiles.py
``DenseSchedule``), the fused depthwise->pointwise kernels of mobile nets (R pixels x VB output
blocks of the pointwise tile: cnncc/lower/conv_dwpw.py ``DwpwSchedule``), the standalone
depthwise convs and NCHWc max / average pools (R pixels per register tile: ``PixelSchedule``)
and the dense layers, Gemm / MatMul with a constant matrix (rows x output vectors per register
tile: ``GemmSchedule``), the global pools and NCHW pools (independent accumulator chains per
tile: ``ChainSchedule``), Gemm / MatMul with a run-time matrix (``GemmSchedule`` tiles) and the
block-diagonal grouped convs (pixels per tile: ``PixelSchedule``; all in
cnncc/lower/tile_schedules.py). The dense convs' candidates include the next-group weight
prefetch placements (conv_nchwc_tiles.PREFETCH_PLACEMENTS).

How: round 0 compiles the model with the cost model's choices and learns every workload's
candidates (the cost model's best few tiles, each in both loop orders). Round r compiles the
whole model once more with every workload's r-th candidate, so each candidate is timed where it
runs (its real input layout, halos and neighbours); the model's outputs must match the reference
interpreter's on random data, or the round's candidates are rejected. Each kernel is timed alone
(median of repeats). Rounds stop when the candidates or the budget run out. Last, each
workload's fastest candidate and the cost model's choice are timed again, interleaved call by
call; the candidate is logged only when both its median and its fastest call are lower by more
than MIN_GAIN (on a loaded machine the medians drift with the other processes, the minima
less), in each of CONFIRMATIONS such comparisons, so a tuned model is never slower than an untuned one by more than the noise of that
comparison.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import tuning_log
from .driver import check_threads, compile, host_target, load_graph
from .ir import CompileError
from .testing import random_inputs, relative_error

DEFAULT_BUDGET_S = 600.0
MIN_GAIN = 0.02            # a candidate must beat the cost model's choice by 2% (median, min)
REPEATS = 9                # timed calls of a kernel per round
FINAL_REPEATS = 21         # interleaved calls of each of the two finalists
# Interleaved comparisons a winner must pass, each anew. One let noise through at 2 threads on a
# loaded machine (load 8-11 on 2 cores): ResNet-18's 28x28 128-channel convs logged a 1.40x gain
# that an A/B of 200 alternating calls per kernel found to be 1.00x.
CONFIRMATIONS = 2
TOLERANCE = 1e-4           # relative error of a round's outputs against the reference


@dataclass
class WorkloadResult:
    key: str
    nodes: list[str]
    default: dict
    default_ms: float
    best: dict
    best_ms: float
    logged: bool

    @property
    def speedup(self) -> float:
        return self.default_ms / self.best_ms if self.best_ms else 1.0


@dataclass
class TuneReport:
    model: str
    machine: str
    threads: int
    rounds: int
    seconds: float
    log: str | None
    workloads: list[WorkloadResult] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)    # rounds whose outputs were wrong


def _progress(step: int, total: int, text: str) -> None:
    width = 24
    done = int(width * step / max(1, total))
    print(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} {text:<60}", end="",
          file=sys.stderr, flush=True)


def _kernel_ms(model: Any, inputs: list[np.ndarray], repeat: int) -> dict[int, float]:
    """{graph node index: median ms of its kernels, summed} of ``model`` (kernels alone)."""
    out: dict[int, float] = {}
    timed = model.profile(inputs, repeat)          # in program order, as ctx.kernels
    for (_, node_index), (_, seconds) in zip(model.program.ctx.kernels, timed):
        out[node_index] = out.get(node_index, 0.0) + seconds * 1e3
    return out


def _workload_ms(model: Any, node_ms: dict[int, float]) -> dict[str, float]:
    """{workload key: ms of all its nodes' kernels} of ``model``."""
    ctx = model.program.ctx
    names = [n.name for n in ctx.graph.nodes]
    out: dict[str, float] = {}
    for idx, ms in node_ms.items():
        key = ctx.workload_of.get(names[idx])
        if key is not None:
            out[key] = out.get(key, 0.0) + ms
    return out


def _interleaved(a: list, b: list, repeat: int) -> tuple[tuple[float, float],
                                                          tuple[float, float]]:
    """(median, min) in ms of the summed kernel calls ``a`` and of ``b``, called in turn."""
    ta, tb = [], []
    for calls in (a, b):
        for c in calls:
            c()
    for _ in range(repeat):
        for calls, times in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            for c in calls:
                c()
            times.append(time.perf_counter() - t0)
    return ((float(np.median(ta)) * 1e3, min(ta) * 1e3),
            (float(np.median(tb)) * 1e3, min(tb) * 1e3))


def tune(source: Any, threads: int | None = None, budget: float = DEFAULT_BUDGET_S,
         progress: bool = True, seed: int = 0, write_log: bool = True) -> TuneReport:
    """Tune ``source``'s workloads for this machine at ``threads``; log the winners (see the
    module docstring). ``budget``: seconds after which no new round starts."""
    if not budget or budget <= 0:
        raise CompileError(f"the tuning budget must be a positive number of seconds, got {budget}")
    check_threads(threads)
    start = time.perf_counter()
    machine = host_target(threads)
    graph = load_graph(source)
    feeds = random_inputs(graph, seed)
    inputs = [feeds[name] for name in graph.inputs]
    expected = compile(graph, target="reference")(*inputs)
    base = compile(graph, threads=machine.threads, cache=False, schedules={})
    ctx = base.program.ctx
    defaults = {key: cands[0] for key, cands in ctx.workloads.items()}
    # Round r: every workload's r-th candidate other than the cost model's own choice.
    others = {key: [c for c in cands if c != cands[0]] for key, cands in ctx.workloads.items()}
    rounds = max((len(c) for c in others.values()), default=0)
    report = TuneReport(graph.name, machine.describe(), machine.threads, 0, 0.0, None)
    models = {0: base}
    times = {0: _workload_ms(base, _kernel_ms(base, inputs, REPEATS))}
    chosen = {0: dict(defaults)}
    best = dict(times[0])
    for r in range(1, rounds + 1):
        if time.perf_counter() - start > budget:
            break
        if progress:
            _progress(r, rounds, f"round {r}: kernels {sum(best.values()):.2f} ms so far "
                                 f"(cost model: {sum(times[0].values()):.2f} ms)")
        sched = {k: c[r - 1] for k, c in others.items() if r - 1 < len(c)}
        model = compile(graph, threads=machine.threads, cache=False, schedules=sched)
        got = model(*inputs)
        err = max(relative_error(g, e) for g, e in zip(got, expected))
        if not err <= TOLERANCE:
            report.rejected.append(f"round {r}: relative error {err:.2e} > {TOLERANCE}")
            continue
        models[r] = model
        chosen[r] = sched
        times[r] = _workload_ms(model, _kernel_ms(model, inputs, REPEATS))
        for key, ms in times[r].items():
            if key in sched and ms < best.get(key, float("inf")):
                best[key] = ms
        report.rounds = r
    if progress:
        print(file=sys.stderr)
    results = _finals(models, times, chosen, defaults, inputs)
    report.workloads = results
    logged = {w.key: {"schedule": w.best, "ms": round(w.best_ms, 4),
                      "default_ms": round(w.default_ms, 4), "model": graph.name}
              for w in results if w.logged}
    if write_log and logged:
        report.log = tuning_log.record(machine, logged)
    elif write_log:
        report.log = tuning_log.log_path(machine)
    report.seconds = time.perf_counter() - start
    return report


def _finals(models: dict, times: dict, chosen: dict, defaults: dict,
            inputs: list[np.ndarray]) -> list[WorkloadResult]:
    """Each workload's fastest round against round 0, timed again interleaved."""
    base = models[0]
    calls = {r: m.kernel_calls(inputs) for r, m in models.items()}
    results = []
    for key, default in defaults.items():
        nodes = sorted(n for n, k in base.program.ctx.workload_of.items() if k == key)
        tried = [r for r in times if r and key in chosen[r] and key in times[r]]
        win = min(tried, key=lambda r: times[r][key], default=None)
        d_ms = times[0].get(key, 0.0)
        if win is None or times[win][key] >= d_ms:
            results.append(WorkloadResult(key, nodes, default.as_dict(), d_ms,
                                          default.as_dict(), d_ms, False))
            continue

        def of(r: int) -> list:
            ctx = models[r].program.ctx
            rn = [n.name for n in ctx.graph.nodes]
            return [c for _, idx, c in calls[r] if ctx.workload_of.get(rn[idx]) == key]

        keep = False
        for _ in range(CONFIRMATIONS):      # every comparison must find the candidate faster
            (d_ms, d_min), (w_ms, w_min) = _interleaved(of(0), of(win), FINAL_REPEATS)
            keep = w_ms < d_ms * (1 - MIN_GAIN) and w_min < d_min * (1 - MIN_GAIN)
            if not keep:
                break
        best = chosen[win][key]
        results.append(WorkloadResult(key, nodes, default.as_dict(), d_ms,
                                      best.as_dict() if keep else default.as_dict(),
                                      w_ms if keep else d_ms, keep))
    return sorted(results, key=lambda w: -w.default_ms)


def tuned_line(graph: Any, machine: Any) -> str:
    """Which tunable kernels of ``graph`` (optimized for ``machine``) the tuning log serves."""
    from .lower.program import lower_graph
    from .passes import PassContext, run_pipeline

    schedules = tuning_log.schedules(machine)
    prog = lower_graph(run_pipeline(graph, PassContext(opt_level=3, machine=machine)), machine,
                       schedules=schedules)
    ctx = prog.ctx
    where = tuning_log.log_path(machine) if schedules else "no tuning log for this CPU"
    kinds: dict[str, list[int]] = {}
    for node, key in ctx.workload_of.items():
        count = kinds.setdefault(tuning_log.kind_of(key), [0, 0])
        count[0] += node in ctx.tuned
        count[1] += 1
    per_kind = ", ".join(f"{k} {t}/{n}" for k, (t, n) in sorted(kinds.items()))
    return (f"tuned: {len(ctx.tuned)} of {len(ctx.workload_of)} tunable kernels "
            f"({len(set(ctx.workload_of[n] for n in ctx.tuned))} of {len(ctx.workloads)} "
            f"workloads{'; ' + per_kind if per_kind else ''}) from the tuning log [{where}]")


def format_report(r: TuneReport) -> str:
    lines = [f"tuned {r.model} on {r.machine}",
             f"{len(r.workloads)} workload(s), {r.rounds} round(s) in {r.seconds:.0f} s; "
             f"tuning log: {r.log or '(not written)'}",
             f"{'workload':<72} {'nodes':>5} {'model ms':>9} {'tuned ms':>9} {'gain':>6}  schedule"]
    for w in r.workloads:
        lines.append(f"{w.key[:72]:<72} {len(w.nodes):>5} {w.default_ms:>9.3f} "
                     f"{w.best_ms:>9.3f} {w.speedup:>5.2f}x  "
                     + (tuning_log.parse(w.key, w.best).label() if w.logged
                        else "(cost model)"))
    total_d = sum(w.default_ms for w in r.workloads)
    total_b = sum(w.best_ms for w in r.workloads)
    if total_b:
        lines.append(f"tunable kernels: {total_d:.3f} -> {total_b:.3f} ms "
                     f"({total_d / total_b:.2f}x), {sum(w.logged for w in r.workloads)} logged")
    lines.extend(f"rejected: {x}" for x in r.rejected)
    return "\n".join(lines)
