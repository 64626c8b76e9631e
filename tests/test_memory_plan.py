"""Arena planning (cnncc/lower/memory_plan.py): the placement never overlaps two live buffers,
its peak lies between the most bytes live at once and the no-reuse total, and compiled models
that use the plan still match the reference interpreter (relative error <= 1e-4, float32 with
different summation orders, as in tests/test_zoo.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cnncc
import cnncc.debug
from cnncc.backends.llvm import jit
from cnncc.cli import main
from cnncc.dsl import zoo
from cnncc.lower.program import lower_graph
from cnncc.passes import PassContext, run_pipeline
from cnncc.ir.aligned import ALIGN, align
from cnncc.lower.memory_plan import Lifetime, max_live_bytes, plan_memory
from cnncc.testing import relative_error

RTOL = 1e-4

lifetimes = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 12), st.integers(0, 20_000)),
    max_size=40).map(lambda rows: {k: Lifetime(s, s + n, b) for k, (s, n, b) in enumerate(rows)})


def _live_at(lts: dict, t: int) -> list:
    return [k for k, lt in lts.items() if lt.first <= t <= lt.last]


@settings(max_examples=400, deadline=None)
@given(lifetimes)
def test_live_buffers_never_overlap_and_peak_is_bounded(lts):
    plan = plan_memory(lts)
    assert set(plan.offsets) == set(lts)
    for k, lt in lts.items():
        off, size = plan.offsets[k], plan.sizes[k]
        assert off % ALIGN == 0 and size % ALIGN == 0 and size >= max(lt.nbytes, 1)
        assert off + size <= plan.arena_bytes
    # Every pair of buffers live at the same kernel position has disjoint byte ranges.
    for t in range(0, 53):
        live = sorted(_live_at(lts, t), key=lambda k: plan.offsets[k])
        for a, b in zip(live, live[1:]):
            assert plan.offsets[a] + plan.sizes[a] <= plan.offsets[b], (t, a, b)
    # Bounds: the most bytes live at one time <= peak <= every buffer in its own memory.
    sizes = {k: align(max(lt.nbytes, 1)) for k, lt in lts.items()}
    live_max = max([sum(sizes[k] for k in _live_at(lts, t)) for t in range(53)], default=0)
    assert plan.live_bytes == live_max == max_live_bytes(lts, sizes)
    assert live_max <= plan.arena_bytes <= plan.unshared_bytes == sum(sizes.values())


def test_chain_of_lifetimes_reuses_memory():
    # a -> b -> c -> d, each used by its producer and its consumer: two slots suffice.
    lts = {name: Lifetime(i, i + 1, 1000) for i, name in enumerate("abcd")}
    plan = plan_memory(lts)
    assert plan.arena_bytes == 2 * align(1000) == plan.live_bytes
    assert plan.unshared_bytes == 4 * align(1000)
    assert plan.offsets["a"] == plan.offsets["c"] != plan.offsets["b"] == plan.offsets["d"]


def test_first_fit_takes_a_gap_below_a_live_buffer():
    # Placed by size: a at 0, b above it (both live at 0); c meets only b and fits below it,
    # in a's memory (a is dead by then).
    lts = {"a": Lifetime(0, 0, 4096), "b": Lifetime(0, 1, 2048), "c": Lifetime(1, 1, 1024)}
    plan = plan_memory(lts)
    assert plan.offsets == {"a": 0, "b": 4096, "c": 0}
    assert plan.arena_bytes == plan.live_bytes == 6144


def test_greedy_can_exceed_the_lower_bound():
    # d (4000 -> 4032 bytes) takes a's slot; c finds only a 64-byte gap between d and b, so it
    # goes on top: 7168 bytes where 7104 are live at once (d, c, b packed from 0 would do).
    lts = {"a": Lifetime(0, 0, 4096), "b": Lifetime(0, 1, 2048), "c": Lifetime(1, 1, 1024),
           "d": Lifetime(1, 1, 4000)}
    plan = plan_memory(lts)
    assert plan.offsets == {"a": 0, "d": 0, "b": 4096, "c": 6144}
    assert (plan.live_bytes, plan.arena_bytes, plan.unshared_bytes) == (7104, 7168, 11200)


def test_empty_and_invalid_lifetimes():
    plan = plan_memory({})
    assert plan.arena_bytes == plan.unshared_bytes == plan.live_bytes == 0
    with pytest.raises(ValueError, match="not an interval"):
        plan_memory({"x": Lifetime(3, 2, 10)})


def _arena_ranges_disjoint(prog) -> None:
    """In the lowered program, buffers in the arena that one kernel position sees at once (by
    the plan's lifetimes) occupy disjoint bytes, and the storage binds them to those bytes."""
    plan = prog.memory
    arena_offsets = {off for kind, off in prog.storage.values() if kind == "arena"}
    assert arena_offsets <= set(plan.offsets.values())
    for t in range(len(prog.ctx.kernels)):
        live = sorted(_live_at(plan.lifetimes, t), key=lambda k: plan.offsets[k])
        for a, b in zip(live, live[1:]):
            assert plan.offsets[a] + plan.sizes[a] <= plan.offsets[b]


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_mobilenet"])
@pytest.mark.parametrize("opt", [0, 3])
def test_zoo_model_arena_is_smaller_and_outputs_match(name, opt):
    net = zoo.ZOO[name](seed=0)
    x = net.example_inputs(seed=1)[0]
    model = cnncc.compile(net, target="llvm", opt_level=opt, threads=1, cache=False)
    memory = model.memory_report()
    assert memory == model.program.memory.summary()
    assert memory["arena_bytes"] == model.program.arena_bytes
    assert memory["live_bytes"] <= memory["arena_bytes"] < memory["unshared_bytes"]
    _arena_ranges_disjoint(model.program)
    expect = cnncc.compile(net, target="reference")(x)
    err = relative_error(model(x), expect)
    assert err <= RTOL, f"{name} opt {opt}: relative error {err:.2e}"
    assert cnncc.compile(net, target="reference").memory_report() is None


def test_exported_library_reports_the_same_memory(tmp_path):
    net = zoo.tiny_cnn()
    jit_model = cnncc.compile(net, threads=1, cache=False)
    cnncc.export(net, tmp_path, name="tiny")
    lib = cnncc.load(tmp_path)
    assert lib.memory_report() == jit_model.memory_report()
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["memory"]["arena_bytes"] <= meta["arena_bytes"]


def test_dump_memory_prints_the_plan(monkeypatch, capsys):
    monkeypatch.setattr(cnncc.debug, "DUMP", frozenset({"memory"}))
    machine = jit.host_target(1)
    graph = run_pipeline(zoo.tiny_cnn().to_graph(), PassContext(opt_level=3, machine=machine))
    prog = lower_graph(graph, machine)
    err = capsys.readouterr().err
    assert "=== arena plan of tiny_cnn ===" in err
    # One line per planned buffer, then the totals.
    assert err.count("\n") >= len(prog.memory.offsets) + 2
    assert f"{prog.memory.summary()['buffers']} buffers" in err


def test_cli_info_and_compile_print_the_arena(tmp_path, capsys):
    assert main(["info", "zoo:tiny_cnn"]) == 0
    out = capsys.readouterr().out
    assert "arena: " in out and "without reuse" in out
    assert main(["compile", "zoo:tiny_cnn", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "arena: " in out and "without reuse" in out


def test_bench_reports_memory_and_peak(capsys):
    from cnncc.bench import benchmark, format_report

    net = zoo.tiny_cnn()
    report = benchmark(net.to_graph(), None, rounds=2, per_layer=True, with_ort=False,
                       progress=False)
    assert set(report.memory) == {"unfused", "fused"}
    for memory in report.memory.values():
        assert memory["live_bytes"] <= memory["arena_bytes"] <= memory["unshared_bytes"]
    assert report.peak_gflops > 0
    for row in report.layers:
        assert row["peak_pct"] == pytest.approx(100 * row["gflops"] / report.peak_gflops)
        # Timed inside whole-program runs too: the same FLOPs over the in-order time.
        assert row["gflops_in_order"] == pytest.approx(
            row["flops"] / (row["ms_in_order"] * 1e-3) / 1e9 if row["ms_in_order"] else 0.0)
        assert row["peak_pct_in_order"] == pytest.approx(
            100 * row["gflops_in_order"] / report.peak_gflops)
    text = format_report(report)
    assert "% peak" in text and "in order" in text and "FMA peak:" in text
    assert "fused arena: " in text
    data = json.loads(report.to_json())
    assert data["peak_gflops"] == report.peak_gflops
    assert data["memory"]["fused"] == report.memory["fused"]
    assert np.isfinite(data["peak_gflops"])
