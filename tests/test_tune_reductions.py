"""The tunable reductions and run-time-matrix products (cnncc/lower/tile_schedules.py
ChainSchedule / gemm_rt): global pools on NCHWc (ReduceMean / ReduceMax over H, W:
cnncc/lower/reduce_tiles.py) and NCHW (nn.lower_global_pool), NCHW pools (nn.lower_pool), Gemm
and MatMul whose B is computed at run time (cnncc/lower/gemm_runtime.py). Each kind: the cost
model's schedule is the untuned kernel, every candidate matches the reference interpreter at
1e-4 (relative), logged schedules round-trip and are used, stale or damaged entries change
nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cnncc
from cnncc import tuning_log
from cnncc.ir import Graph, TensorType
from cnncc.ir.dtypes import DType
from cnncc.lower.tile_schedules import ChainSchedule, GemmSchedule
from cnncc.testing import random_inputs, relative_error
from cnncc.tune import tune

pytestmark = pytest.mark.xdist_group("tune")     # one worker: they share a private cache

# opt 0: NCHW pools and global pools; opt 3: global pools on NCHWc. Both: run-time products.
KINDS = {0: {"gpool", "pool_nchw", "gemm_rt"}, 3: {"gpool_nchwc", "gemm_rt"}}


def reductions_graph() -> Graph:
    """36 channels (3 blocks of 16, 5 of 8: chain tails), 40 columns (vector tails): a conv, a
    max pool,
    an average pool, both global pools, a Gemm of two run-time matrices (B transposed, constant
    C, alpha, ReLU) and a batched MatMul of two run-time tensors."""
    g = Graph("reductions")
    g.add_input("x", TensorType(DType.float32, (1, 8, 40, 40)))
    w = np.random.default_rng(0).standard_normal((36, 8, 1, 1)).astype(np.float32)
    (y,) = g.add_node("Conv", ["x", g.add_param("w", w)])      # opt 3: NCHWc from here
    (p1,) = g.add_node("MaxPool", [y], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    (p2,) = g.add_node("AveragePool", [p1], {"kernel_shape": [2, 2], "strides": [2, 2]})
    (ga,) = g.add_node("GlobalAveragePool", [p2])
    (gm,) = g.add_node("GlobalMaxPool", [p1])
    (r,) = g.add_node("Reshape", [p2, g.add_param("s2", np.array([36, 400], np.int64))])
    c = g.add_param("c", np.linspace(-1, 1, 36).astype(np.float32))
    (gemm,) = g.add_node("Gemm", [r, r, c], {"transB": 1, "alpha": 0.5})
    (relu,) = g.add_node("Relu", [gemm])
    (a3,) = g.add_node("Reshape", [p2, g.add_param("s3a", np.array([4, 9, 400], np.int64))])
    (b3,) = g.add_node("Reshape", [p1, g.add_param("s3b", np.array([4, 400, 36], np.int64))])
    (mm,) = g.add_node("MatMul", [a3, b3])
    g.outputs = [ga, gm, relu, mm]
    return g


def outputs(model, graph):
    feeds = random_inputs(graph, 1)
    return model(*[feeds[n] for n in graph.inputs])


@pytest.fixture(scope="module")
def compiled():
    """{opt: (graph, reference outputs, untuned model, {key: candidates} of the new kinds)}."""
    graph = reductions_graph()
    ref = outputs(cnncc.compile(graph, target="reference"), graph)
    out = {}
    for opt in KINDS:
        base = cnncc.compile(graph, opt_level=opt, threads=1, cache=False, schedules={})
        ctx = base.program.ctx
        keys = {k: c for k, c in ctx.workloads.items()
                if tuning_log.kind_of(k) in KINDS[opt]}
        assert {tuning_log.kind_of(k) for k in keys} == KINDS[opt]
        out[opt] = (graph, ref, base, keys)
    return out


def close(model, graph, ref) -> None:
    for got, want in zip(outputs(model, graph), ref):
        assert relative_error(got, want) < 1e-4


@pytest.mark.parametrize("opt", sorted(KINDS))
def test_default_is_the_untuned_kernel_and_every_candidate_matches(compiled, opt):
    """Forcing each workload's first candidate gives the untuned code byte for byte (the cost
    model's choice; the pools' is the kernel as it was before they were tunable, compared with
    main's loop IR when this was made, gemm_rt's the register tile of a constant matrix);
    the other candidates of every workload give other code with the reference's outputs."""
    graph, ref, base, keys = compiled[opt]
    assert all(len(c) >= 2 for c in keys.values())
    first = cnncc.compile(graph, opt_level=opt, threads=1, cache=False,
                          schedules={k: c[0] for k, c in keys.items()})
    assert first.generated.key == base.generated.key
    close(base, graph, ref)
    last = max(len(c) for c in keys.values()) - 1
    for r in sorted({1, 2, last}):      # every chain count here; 2 of gemm_rt's tiles + the last
        sched = {k: c[min(r, len(c) - 1)] for k, c in keys.items()}
        m = cnncc.compile(graph, opt_level=opt, threads=1, cache=False, schedules=sched)
        tuned = {m.program.ctx.workload_of[n] for n in m.program.ctx.tuned}
        assert tuned == set(keys) and m.generated.key != base.generated.key
        close(m, graph, ref)


def test_a_tuned_tile_at_two_threads_matches(compiled):
    graph, ref, _, _ = compiled[0]
    base = cnncc.compile(graph, opt_level=0, threads=2, cache=False, schedules={})
    keys = {k: c for k, c in base.program.ctx.workloads.items()
            if tuning_log.kind_of(k) in KINDS[0]}
    assert all("/t2/" in k for k in keys)
    m = cnncc.compile(graph, opt_level=0, threads=2, cache=False,
                      schedules={k: c[-1] for k, c in keys.items()})
    assert len(m.program.ctx.tuned) == 6        # 2 pools, 2 global pools, Gemm, MatMul
    close(m, graph, ref)


def test_stale_or_foreign_schedules_are_ignored(compiled):
    """Chains or tiles beyond the registers or the outputs, or another kind's schedule: the
    cost model decides, the code is the same byte for byte."""
    for opt, (graph, ref, base, keys) in compiled.items():
        for bad in ({k: ChainSchedule(99) if "gemm" not in k else GemmSchedule(99, 1)
                     for k in keys},
                    {k: GemmSchedule(1, 2) if "gemm" not in k else ChainSchedule(2)
                     for k in keys}):
            m = cnncc.compile(graph, opt_level=opt, threads=1, cache=False, schedules=bad)
            assert not m.program.ctx.tuned and m.generated.key == base.generated.key


def test_log_round_trip_and_damaged_entries(compiled, private_cache):
    """Logged winners of the new kinds are read back as their classes and used by
    cnncc.compile (opt 0: every new-kind kernel tuned; results the reference's); entries that
    do not parse are skipped, a log that does not parse is ignored with a warning."""
    graph, ref, _, keys = compiled[0]
    machine = cnncc.host_target(1)
    path = tuning_log.record(machine, {k: {"schedule": c[-1].as_dict(), "ms": 1.0}
                                       for k, c in keys.items()})
    data = json.load(open(path))
    data["entries"].update({"gpool/bad": {"schedule": {"k": "2"}}, "gpool_nchwc/bad": 3,
                            "pool_nchw/bad": {"schedule": [2]},
                            "gemm_rt/bad": {"schedule": {"rows": 1}}})
    with open(path, "w") as f:
        json.dump(data, f)
    assert tuning_log.schedules(machine) == {k: c[-1] for k, c in keys.items()}
    m = cnncc.compile(graph, opt_level=0, threads=1, cache=False)
    assert {m.program.ctx.workload_of[n] for n in m.program.ctx.tuned} == set(keys)
    close(m, graph, ref)
    with open(path, "w") as f:
        f.write(json.dumps({"format": tuning_log.FORMAT, "entries": []}))
    with pytest.warns(RuntimeWarning, match="ignoring the tuning log"):
        m = cnncc.compile(graph, opt_level=0, threads=1, cache=False)
    assert not m.program.ctx.tuned


def test_tune_covers_the_new_kinds(private_cache):
    """A budget-bounded tune of the net (opt 3, as `cnncc tune` compiles) times the NCHWc
    global pools and the run-time products and logs only winners."""
    report = tune(reductions_graph(), threads=1, budget=6, progress=False)
    kinds = {tuning_log.kind_of(w.key) for w in report.workloads}
    assert KINDS[3] <= kinds and report.rounds >= 1 and not report.rejected
    assert all(w.best_ms < w.default_ms for w in report.workloads if w.logged)
