"""The tuner (cnncc/tune.py) and its log (cnncc/tuning_log.py): schedules are per workload, a
logged schedule is used by cnncc.compile, and no schedule or log content changes results."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cnncc
from cnncc import tuning_log
from cnncc.dsl import zoo
from cnncc.lower.conv_nchwc_tiles import DenseSchedule
from cnncc.testing import random_inputs, relative_error
from cnncc.tune import format_report, tune, tuned_line

pytestmark = pytest.mark.xdist_group("tune")     # one worker: they share a private cache


def outputs(model, graph):
    feeds = random_inputs(graph, 1)
    return model(*[feeds[n] for n in graph.inputs])


def workloads(threads=1):
    m = cnncc.compile(zoo.tiny_resnet(), threads=threads, cache=False, schedules={})
    return m, m.program.ctx


def test_every_candidate_schedule_computes_the_same_model():
    """Forcing any candidate of every workload (every tile, both loop orders) gives the
    reference's outputs: a schedule changes speed only."""
    graph = zoo.tiny_resnet().to_graph()
    ref = outputs(cnncc.compile(graph, target="reference"), graph)
    _, ctx = workloads(threads=2)
    dense = [c for k, c in ctx.workloads.items() if k.startswith("conv_nchwc/")]
    assert len(dense) >= 6 and all(len(c) >= 3 for c in dense)
    rounds = max(len(c) for c in ctx.workloads.values())
    for r in (1, rounds // 2, rounds - 1):
        sched = {k: c[min(r, len(c) - 1)] for k, c in ctx.workloads.items()}
        m = cnncc.compile(graph, threads=2, cache=False, schedules=sched)
        assert m.program.ctx.tuned == set(m.program.ctx.workload_of)
        for got, want in zip(outputs(m, graph), ref):
            assert relative_error(got, want) < 1e-4


def test_schedules_that_do_not_fit_are_ignored():
    """A schedule beyond the register limit or the output (a stale log) leaves the cost
    model's choice."""
    base, ctx = workloads()
    bad = {k: DenseSchedule(99, 1, 1) for k in ctx.workloads}
    bad.update({k: DenseSchedule(1, 1000, 1000) for k in list(ctx.workloads)[:2]})
    m = cnncc.compile(zoo.tiny_resnet(), threads=1, cache=False, schedules=bad)
    assert not m.program.ctx.tuned
    assert m.generated.key == base.generated.key        # the same code, byte for byte


def test_workload_keys_do_not_depend_on_the_model():
    """The same conv (shapes, window, target) in two different nets has one key."""
    _, a = workloads()
    graph = zoo.tiny_resnet().to_graph()
    graph.name = "another_net"
    m = cnncc.compile(graph, threads=1, cache=False, schedules={})
    assert set(m.program.ctx.workloads) == set(a.workloads)
    assert all(tuning_log.kind_of(k) in tuning_log.SCHEDULE_KINDS and "tiny_resnet" not in k
               for k in a.workloads)


def test_tune_logs_winners_that_compile_uses(private_cache):
    report = tune(zoo.tiny_cnn(), threads=1, budget=120, progress=False)
    assert report.workloads and report.rounds >= 1 and not report.rejected
    text = format_report(report)
    assert "workload" in text and "tunable kernels" in text
    machine = cnncc.host_target(1)
    path = tuning_log.log_path(machine)
    assert path.startswith(str(private_cache))
    logged = [w for w in report.workloads if w.logged]
    for w in report.workloads:          # a logged winner beat the cost model's choice
        assert (w.best_ms < w.default_ms) if w.logged else w.best == w.default
    if logged:
        entries = json.load(open(path))["entries"]
        assert {w.key for w in logged} <= set(entries)
        m = cnncc.compile(zoo.tiny_cnn(), threads=1, cache=False)
        tuned_keys = {m.program.ctx.workload_of[n] for n in m.program.ctx.tuned}
        assert tuned_keys == {w.key for w in logged}
        assert "tuned: " in tuned_line(zoo.tiny_cnn().to_graph(), machine)
    graph = zoo.tiny_cnn().to_graph()
    want = outputs(cnncc.compile(graph, target="reference"), graph)
    got = outputs(cnncc.compile(graph, threads=1), graph)
    assert all(relative_error(g, w) < 1e-4 for g, w in zip(got, want))


def test_a_corrupt_or_foreign_log_is_ignored_with_a_warning(private_cache):
    machine = cnncc.host_target(1)
    path = tuning_log.log_path(machine)
    os.makedirs(os.path.dirname(path))
    graph = zoo.tiny_cnn().to_graph()
    want = outputs(cnncc.compile(graph, target="reference"), graph)
    for text in ("{not json", json.dumps({"format": "other", "entries": {}}), "[]"):
        with open(path, "w") as f:
            f.write(text)
        with pytest.warns(RuntimeWarning, match="ignoring the tuning log"):
            m = cnncc.compile(graph, threads=1, cache=False)
        assert not m.program.ctx.tuned
        assert all(relative_error(g, w) < 1e-4 for g, w in zip(outputs(m, graph), want))
    # Entries that do not parse are skipped one by one; the others still apply.
    _, ctx = workloads()
    key = next(iter(ctx.workloads))
    good = ctx.workloads[key][-1]
    with open(path, "w") as f:
        json.dump({"format": tuning_log.FORMAT, "entries": {
            key: {"schedule": good.as_dict()}, "x": {"schedule": {"vb": "2"}}, "y": 3}}, f)
    assert tuning_log.schedules(machine) == {key: good}


def test_log_writes_are_atomic_and_merge(private_cache):
    machine = cnncc.host_target(1)
    s1, s2 = DenseSchedule(1, 2, 3, None), DenseSchedule(2, 1, 4, True)
    k1, k2 = "conv_nchwc/k1", "conv_nchwc/k2"
    p = tuning_log.record(machine, {k1: {"schedule": s1.as_dict(), "ms": 1.0}})
    tuning_log.record(machine, {k2: {"schedule": s2.as_dict(), "ms": 2.0}})
    assert tuning_log.schedules(machine) == {k1: s1, k2: s2}
    assert not [n for n in os.listdir(os.path.dirname(p)) if n.endswith(".tmp")]
    data = json.load(open(p))
    assert data["isa"] == machine.isa and data["format"] == tuning_log.FORMAT


def test_tune_refuses_a_bad_budget():
    with pytest.raises(cnncc.CompileError, match="budget"):
        tune(zoo.tiny_cnn(), budget=0)
    with pytest.raises(cnncc.CompileError, match="threads must be a positive integer"):
        tune(zoo.tiny_cnn(), threads=0)


def test_tune_cli(private_cache, capsys):
    from cnncc.cli import main

    assert main(["tune", "tiny_cnn", "--threads", "1", "--budget", "30", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["threads"] == 1 and data["workloads"]
    assert np.isfinite([w["default_ms"] for w in data["workloads"]]).all()


def test_info_reports_the_tuned_kernels_of_a_thread_count(private_cache, capsys):
    """Log keys carry the thread count: `cnncc info --threads N` reports the kernels tuned for
    N threads (default: every core, as cnncc.compile); a bad count is refused."""
    from cnncc.cli import main

    base = cnncc.compile(zoo.tiny_cnn(), threads=2, cache=False, schedules={})
    ctx = base.program.ctx
    key = next(k for k in ctx.workloads if k.startswith("conv_nchwc/"))
    assert "/t2/" in key
    tuning_log.record(cnncc.host_target(2), {key: {"schedule": ctx.workloads[key][-1].as_dict()}})
    nodes = sum(k == key for k in ctx.workload_of.values())
    for threads, tuned in ((2, nodes), (1, 0)):
        assert main(["info", "tiny_cnn", "--threads", str(threads)]) == 0
        line = capsys.readouterr().out.splitlines()[-1]
        assert line.startswith(f"tuned: {tuned} of ") and f"[{threads} thread" in line
    assert main(["info", "tiny_cnn", "--threads", "0"]) == 1
    assert "threads must be a positive integer" in capsys.readouterr().err


def test_every_dwpw_candidate_computes_the_same_model():
    """The fused depthwise->pointwise kernels are tunable too: each of their candidate tiles
    (R pixels x VB output blocks) gives the reference's outputs, at both ISAs' register counts
    (the candidates depend on them), and a tile beyond the registers is ignored."""
    from cnncc.lower import conv_dwpw
    from cnncc.lower.conv_dwpw import DwpwSchedule

    graph = zoo.tiny_mobilenet().to_graph()
    ref = outputs(cnncc.compile(graph, target="reference"), graph)
    m = cnncc.compile(graph, threads=2, cache=False, schedules={})
    ctx = m.program.ctx
    keys = [k for k in ctx.workloads if k.startswith("conv_dwpw/")]
    assert keys and all(len(ctx.workloads[k]) >= 3 for k in keys)
    rounds = max(len(ctx.workloads[k]) for k in keys)
    for r in range(1, rounds):
        sched = {k: ctx.workloads[k][min(r, len(ctx.workloads[k]) - 1)] for k in keys}
        tuned = cnncc.compile(graph, threads=2, cache=False, schedules=sched)
        nodes = {n for n, k in tuned.program.ctx.workload_of.items() if k in keys}
        assert nodes and nodes <= tuned.program.ctx.tuned
        for got, want in zip(outputs(tuned, graph), ref):
            assert relative_error(got, want) < 1e-4
    bad = cnncc.compile(graph, threads=2, cache=False,
                        schedules={k: DwpwSchedule(64, 4) for k in keys})
    assert not bad.program.ctx.tuned and bad.generated.key == m.generated.key
    for regs in (16, 32):
        for s in conv_dwpw.candidates(56, 8, 144, 8 if regs == 16 else 16, 16, regs):
            assert conv_dwpw.fits(s, 56, 8, 144, 8 if regs == 16 else 16, 16, regs)


def test_dwpw_schedules_round_trip_through_the_log(private_cache):
    from cnncc.lower.conv_dwpw import DwpwSchedule

    machine = cnncc.host_target(1)
    key = "conv_dwpw/x/l16/t1/x1x2x8x8x16/dw32x1x3x3/pw16x32x1x1/s1x1/d1x1/p1x1x1x1"
    tuning_log.record(machine, {key: {"schedule": DwpwSchedule(5, 1).as_dict(), "ms": 1.0},
                                "conv_dwpw/bad": {"schedule": {"r": "5", "vb": 1}}})
    got = tuning_log.schedules(machine)
    assert got[key] == DwpwSchedule(5, 1) and "conv_dwpw/bad" not in got


# ---- standalone depthwise convs, NCHWc pools, dense layers (cnncc/lower/tile_schedules.py) ----

NEW_KINDS = ("conv_dw", "pool_nchwc", "gemm")


def _kinds_net(x):
    """A dense conv, a standalone 3x3 depthwise conv (ReLU6), a padded 3x3/2 max pool, a 5x5
    depthwise conv, a 2x2 average pool and a dense layer: 24 channels (two blocks, one half
    padding), batch 2 (gemm rows)."""
    from cnncc.dsl import functional as F, layers as L

    y = F.relu(L.conv2d(x, 24, 3, padding=1, name="conv"))
    y = F.relu6(L.depthwise_conv2d(y, 3, padding=1, name="dw3"))
    y = F.max_pool2d(y, 3, stride=2, padding=1)
    y = L.depthwise_conv2d(y, 5, padding=2, name="dw5")
    y = F.avg_pool2d(y, 2)
    return L.dense(F.flatten(y), 40, name="fc")


@pytest.fixture(scope="module")
def kinds():
    """{threads: (graph, reference outputs, untuned model)} of the net above."""
    from cnncc.dsl.net import build

    graph = build(_kinds_net, (2, 8, 24, 24), "kinds_net", 0).to_graph()
    ref = outputs(cnncc.compile(graph, target="reference"), graph)
    return {t: (graph, ref, cnncc.compile(graph, threads=t, cache=False, schedules={}))
            for t in (1, 2)}


def _new_keys(ctx):
    keys = [k for k in ctx.workloads if tuning_log.kind_of(k) in NEW_KINDS]
    assert {tuning_log.kind_of(k) for k in keys} == set(NEW_KINDS)
    return keys


@pytest.mark.parametrize("threads", [1, 2])
def test_every_new_kind_candidate_computes_the_reference(kinds, threads):
    """Every candidate of the depthwise, pool and gemm workloads (at 2 threads the last ones
    and a middle one: the candidates do not depend on the threads) gives the reference's
    outputs; the cost model's schedule is each workload's first candidate."""
    graph, ref, base = kinds[threads]
    ctx = base.program.ctx
    keys = _new_keys(ctx)
    assert all(len(ctx.workloads[k]) >= 2 for k in keys)
    rounds = max(len(ctx.workloads[k]) for k in keys)
    for r in range(1, rounds) if threads == 1 else (rounds // 2, rounds - 1):
        sched = {k: ctx.workloads[k][min(r, len(ctx.workloads[k]) - 1)] for k in keys}
        m = cnncc.compile(graph, threads=threads, cache=False, schedules=sched)
        nodes = {n for n, k in m.program.ctx.workload_of.items() if k in keys}
        assert len(nodes) == 5 and nodes <= m.program.ctx.tuned
        assert m.generated.key != base.generated.key
        for got, want in zip(outputs(m, graph), ref):
            assert relative_error(got, want) < 1e-5
    again = cnncc.compile(graph, threads=threads, cache=False,
                          schedules={k: ctx.workloads[k][0] for k in keys})
    assert again.generated.key == base.generated.key     # the first candidate is the default


def test_new_kind_schedules_beyond_the_registers_are_ignored(kinds):
    """Tiles wider than the registers hold (or than the row, or the output) are a stale log's:
    the cost model decides, the code is the same byte for byte."""
    from cnncc.lower.tile_schedules import GemmSchedule, PixelSchedule

    graph, _, base = kinds[1]
    regs = base.program.ctx.vector_registers
    bad = {}
    for k in _new_keys(base.program.ctx):
        bad[k] = GemmSchedule(2, regs) if k.startswith("gemm/") else PixelSchedule(regs)
    m = cnncc.compile(graph, threads=1, cache=False, schedules=bad)
    assert not m.program.ctx.tuned and m.generated.key == base.generated.key
    for k in bad:
        bad[k] = GemmSchedule(3, 1) if k.startswith("gemm/") else GemmSchedule(1, 1)
    m = cnncc.compile(graph, threads=1, cache=False, schedules=bad)   # wrong rows / kind
    assert not m.program.ctx.tuned and m.generated.key == base.generated.key


def test_new_kind_candidates_fit_16_and_32_registers():
    from cnncc.lower import tile_schedules as ts

    for regs, lanes in ((16, 8), (32, 16)):
        for c in (lanes, 2 * lanes):
            for width in (2, 5, 11, 54, 110):
                default = ts.pool_default(regs, lanes, c)
                cands = ts.pixel_candidates(width, default, regs, lanes, c)
                assert len(set(cands)) == len(cands) >= 1
                assert all(ts.pixel_fits(s, width, regs, lanes, c) for s in cands)
        for m, n in ((1, 10), (1, 1000), (2, 40), (64, 1000)):
            cands = ts.gemm_candidates(m, n, lanes, regs)
            assert cands[0] == ts.gemm_default(m, n, lanes, regs)
            assert all(ts.gemm_fits(s, m, n, lanes, regs) for s in cands)
    assert len(ts.gemm_candidates(1, 1000, 16, 32)) == 8      # 1 row x 1..8 vectors


def test_new_kind_schedules_round_trip_through_the_log(private_cache, kinds):
    """Logged depthwise / pool / gemm winners are read back and used by cnncc.compile; entries
    that do not parse are skipped; the results stay the reference's."""
    from cnncc.lower.tile_schedules import GemmSchedule, PixelSchedule

    graph, ref, base = kinds[1]
    ctx = base.program.ctx
    keys = _new_keys(ctx)
    entries = {k: {"schedule": ctx.workloads[k][-1].as_dict(), "ms": 1.0} for k in keys}
    entries["gemm/bad"] = {"schedule": {"rows": 1, "vectors": True}}
    entries["conv_dw/bad"] = {"schedule": {"vb": 1}}
    entries["pool_nchwc/bad"] = {"schedule": [3]}
    machine = cnncc.host_target(1)
    tuning_log.record(machine, entries)
    got = tuning_log.schedules(machine)
    assert got == {k: ctx.workloads[k][-1] for k in keys}
    assert all(isinstance(got[k], GemmSchedule if k.startswith("gemm/") else PixelSchedule)
               for k in keys)
    m = cnncc.compile(graph, threads=1, cache=False)
    assert {m.program.ctx.workload_of[n] for n in m.program.ctx.tuned} == set(keys)
    assert all(relative_error(g, w) < 1e-5 for g, w in zip(outputs(m, graph), ref))
    line = tuned_line(graph, machine)
    assert "5 of 6 tunable kernels" in line and "gemm 1/1" in line and "conv_dw 2/2" in line
