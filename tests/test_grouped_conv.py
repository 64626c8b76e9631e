"""Grouped convs with fewer channels a group than vector lanes (cnncc/lower/conv_grouped.py)
and the loop IR's lane permute (ir/loop.LanePermute) they are built on: the permute compiled
== interpreted == numpy, bad index lists refused; the block-diagonal kernel against the
reference interpreter (max |ours - ref| / max |ref| <= 1e-4) for k = 1, 2, 4, 8, 16 channels a
group, strides 1 and 2, padding, folded BatchNorm + ReLU and a residual, 1 and 2 threads, and
on AVX2 in a child process; which convs take it, and that the others' loop IR is unchanged.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import cnncc
from cnncc.backends.cuda import render_module
from cnncc.backends.cuda.build import EmuLibrary, build_emu_library, find_cxx
from cnncc.backends.llvm import jit
from cnncc.backends.llvm.kernels import compile_kernel
from cnncc.ir import DType, Graph, TensorType
from cnncc.ir.loop import Buffer, For, Kernel, LanePermute, Store, Var
from cnncc.ir.loop_interp import run_kernel
from cnncc.ir.loop_walk import permute_scalar_form, substitute, walk_exprs, stmt_exprs
from cnncc.lower import conv_nchwc
from cnncc.lower.conv_grouped import block_diagonal_fits, instructions_per_tap, permutes
from cnncc.lower.program import lower_graph
from cnncc.lower.tile_schedules import GROUPED_KIND, PixelSchedule
from cnncc.passes import PassContext, run_pipeline

F32 = DType.float32
LANES = jit.vector_lanes()
AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"
RTOL = 1e-4


# ---- the lane permute ----------------------------------------------------------------------------

def _permute_kernel(perm, extent: int, kind: str = "vectorized") -> Kernel:
    """b[i, v] = permute(a[i, v], v, perm) * 2 + a[i, v] over rows i, lanes v < extent."""
    a, b = Buffer("a", F32, (3, extent)), Buffer("b", F32, (3, extent))
    i, v = Var("i"), Var("v")
    val = LanePermute(a[i, v], v, perm) * 2.0 + a[i, v]
    return Kernel("perm", [a, b], For(i, 3, For(v, extent, Store(b, (i, v), val), kind)))


def _run_both(kernel: Kernel, extent: int):
    x = np.random.default_rng(0).standard_normal((3, extent)).astype(np.float32)
    got = {"a": x, "b": np.zeros_like(x)}
    ran = {"a": x.copy(), "b": np.zeros_like(x)}
    run_kernel(kernel, ran)
    ck = compile_kernel(kernel)
    ck(got)
    return x, ran["b"], got["b"], ck.ir_text


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_permute_is_one_shufflevector_matching_the_interpreter(k):
    if k > LANES:
        pytest.skip(f"{k} channels a group: more than this host's {LANES} lanes")
    for perm in permutes(k, LANES) + [tuple(o // k * k for o in range(LANES))]:
        x, ran, got, ir_text = _run_both(_permute_kernel(perm, LANES), LANES)
        expect = x[:, list(perm)] * 2 + x
        np.testing.assert_array_equal(ran, expect)
        np.testing.assert_array_equal(got, expect)
        mask = ", ".join(f"i32 {p}" for p in perm)
        assert f"<{LANES} x i32> <{mask}>" in ir_text


@pytest.mark.parametrize("kind,extent", [("serial", LANES), ("unrolled", LANES),
                                         ("vectorized", 2 * LANES)])
def test_permute_lane_by_lane_and_over_other_chunks(kind, extent):
    """Outside a vectorized loop from lane 0 of as many lanes: the scalar form (selects)."""
    perm = tuple(reversed(range(extent)))
    x, ran, got, _ = _run_both(_permute_kernel(perm, extent, kind), extent)
    np.testing.assert_array_equal(ran, x[:, ::-1] * 2 + x)
    np.testing.assert_array_equal(got, ran)


def test_bad_permutes_are_refused_by_name():
    a, v = Buffer("a", F32, (8,)), Var("lane")
    with pytest.raises(IndexError, match=r"lane permute over lane: index 8 at position 3"):
        LanePermute(a[v], v, (0, 1, 2, 8, 4, 5, 6, 7))
    with pytest.raises(IndexError, match=r"index -1 at position 0"):
        LanePermute(a[v], v, (-1, 0))
    with pytest.raises(IndexError, match=r"index 1.5 at position 1"):
        LanePermute(a[v], v, (0, 1.5))
    with pytest.raises(IndexError, match="empty index list"):
        LanePermute(a[v], v, ())
    with pytest.raises(TypeError, match="integer variable"):
        LanePermute(a[v], Var("f", F32), (0,))
    # The interpreter refuses a lane outside the list.
    b = Buffer("b", F32, (8,))
    k = Kernel("k", [a, b], For(v, 8, Store(b, (v,), LanePermute(a[v], v, (1, 0)))))
    with pytest.raises(IndexError, match="lane 2 outside 0..1"):
        run_kernel(k, {"a": np.zeros(8, np.float32), "b": np.zeros(8, np.float32)})


def test_permute_renames_prints_and_has_a_scalar_form():
    a, v, w = Buffer("a", F32, (4,)), Var("v"), Var("w")
    p = LanePermute(a[v], v, (1, 0, 3, 2))
    assert str(Kernel("k", [a], Store(a, (v,), p))).endswith(
        "a[v] = permute(a[v], v, [1, 0, 3, 2])")
    renamed = substitute(p, {"v": w})
    assert renamed.lane is w and renamed.perm == p.perm
    with pytest.raises(TypeError, match="can only be renamed"):
        substitute(p, {"v": v + 1})
    arr = np.arange(4, dtype=np.float32) * 10
    b = Buffer("b", F32, (4,))
    for e in (p, permute_scalar_form(p)):
        out = {"a": arr.copy(), "b": np.zeros(4, np.float32)}
        run_kernel(Kernel("k", [a, b], For(v, 4, Store(b, (v,), e))), out)
        np.testing.assert_array_equal(out["b"], [10, 0, 30, 20])


@pytest.mark.skipif(find_cxx() is None, reason="no g++: cuda-emu builds need a C++ compiler")
def test_permute_in_cuda_c_is_the_scalar_form(tmp_path):
    """A CUDA thread is one lane: the permute renders as its operand at perm[lane]."""
    perm = permutes(4, 8)[3]
    a, b, i = Buffer("a", F32, (8,)), Buffer("b", F32, (8,)), Var("i")
    kernel = Kernel("perm", [a, b], For(i, 8, Store(b, (i,), LanePermute(a[i], i, perm)),
                                        "gpu_thread"))
    mod = render_module([kernel])
    assert "b[i] = a[i == 0 ? 3 : i == 1 ? 2 : i == 2 ? 1 : i == 3 ? 0 : i == 4 ? 7 : " \
        "i == 5 ? 6 : i == 6 ? 5 : 4];" in mod.source
    arrays = {"a": np.arange(8, dtype=np.float32), "b": np.zeros(8, np.float32)}
    EmuLibrary(build_emu_library(mod.source, workdir=tmp_path)).launch(mod.kernels[0], arrays)
    np.testing.assert_array_equal(arrays["b"], np.arange(8)[list(perm)])


def test_kernel_choice_from_the_lanes():
    assert instructions_per_tap(4, 16) == (32, 1 + 4 + 3)
    assert instructions_per_tap(8, 16) == (32, 1 + 8 + 3 + 2 * 4)
    for lanes, ks in ((16, (2, 4, 8)), (8, (2, 4)), (4, (2,))):
        for k in (1, 2, 4, 8, 16):
            assert block_diagonal_fits(lanes, lanes, 32 * k, 32 * k, 32) == (k in ks), (lanes, k)
    assert not block_diagonal_fits(16, 16, 48, 48, 4)       # k = 12 does not divide 16
    assert not block_diagonal_fits(16, 16, 32, 64, 8)       # a channel multiplier
    assert not block_diagonal_fits(16, 8, 32, 32, 8)        # blocks narrower than the lanes


# ---- the kernel ----------------------------------------------------------------------------------

def _net() -> Graph:
    """32 channels (AVX-512: 2 blocks; AVX2: 4): k = 2 (+BN+ReLU), k = 4 stride 2 (+BN+ReLU),
    k = 8 with a residual and ReLU, k = 16 unpadded, depthwise (k = 1) with BN, k = 4 1x1."""
    rng = np.random.default_rng(2)
    g = Graph("grouped")
    g.add_input("x", TensorType(F32, (1, 32, 11, 12)))

    def conv(x, group, k=3, stride=1, pad=1, bn=False, act="Relu", name="c"):
        w = g.add_param(f"{name}.w", (rng.standard_normal((32, 32 // group, k, k)) * 0.4)
                        .astype(np.float32))
        b = g.add_param(f"{name}.b", (rng.standard_normal(32) * 0.3).astype(np.float32))
        (y,) = g.add_node("Conv", [x, w, b], {"pads": [pad] * 4, "strides": [stride] * 2,
                                              "group": group}, name=name)
        if bn:
            ps = [g.add_param(f"{name}.{p}", v.astype(np.float32)) for p, v in (
                ("s", rng.uniform(0.5, 1.5, 32)), ("o", rng.standard_normal(32) * 0.2),
                ("m", rng.standard_normal(32) * 0.2), ("v", rng.uniform(0.5, 1.5, 32)))]
            (y,) = g.add_node("BatchNormalization", [y] + ps, {"epsilon": 1e-5},
                              name=f"{name}.bn")
        if act:
            (y,) = g.add_node(act, [y], name=f"{name}.act")
        return y

    y = conv("x", 16, bn=True, name="k2")
    y = conv(y, 8, stride=2, bn=True, name="k4s2")
    z = conv(y, 4, act=None, name="k8")
    (s,) = g.add_node("Add", [z, y], name="res")
    (s,) = g.add_node("Relu", [s], name="res.act")
    s = conv(s, 2, pad=0, act=None, name="k16")
    s = conv(s, 32, bn=True, act=None, name="k1")
    g.outputs = [conv(s, 8, k=1, pad=0, name="k4pw")]
    return g


def _input() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((1, 32, 11, 12)).astype(np.float32)


def _rel_err(got, expect) -> float:
    return float(np.abs(got - expect).max() / np.abs(expect).max())


@pytest.fixture(scope="module")
def expected():
    return cnncc.compile(_net(), target="reference")(_input())


@pytest.mark.parametrize("threads", [1, 2])
def test_block_diagonal_convs_match_the_reference(threads, expected):
    got = cnncc.compile(_net(), cache=False, threads=threads)(_input())
    assert _rel_err(got, expected) <= RTOL


def test_block_diagonal_convs_match_the_reference_on_avx2(expected):
    code = ("import pickle, sys, cnncc; from cnncc.backends.llvm import jit; "
            "g, x = pickle.load(sys.stdin.buffer); "
            "assert jit.vector_lanes() == 8, jit.vector_lanes(); "
            "sys.stdout.buffer.write(pickle.dumps(cnncc.compile(g, cache=False)(x)))")
    env = dict(os.environ, CNNCC_FEATURES=AVX2)
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((_net(), _input())),
                         capture_output=True, env=env, check=True, timeout=600)
    assert _rel_err(pickle.loads(out.stdout), expected) <= RTOL


def _kernels(dispatch: bool, monkeypatch) -> dict[str, str]:
    """The loop IR text of every lowered kernel of _net() (host lanes), with or without the
    block-diagonal kernel."""
    if not dispatch:
        monkeypatch.setattr(conv_nchwc, "block_diagonal_fits", lambda *a: False)
    target = jit.host_target(1)
    g = run_pipeline(_net(), PassContext(opt_level=3, machine=target))
    program = lower_graph(g, target)
    return {k.name: k for k, _ in program.ctx.kernels}


def _permute_count(kernel: Kernel) -> int:
    return sum(isinstance(x, LanePermute) for _, e in stmt_exprs(kernel.body)
               for x in walk_exprs(e))


def test_which_convs_take_the_block_diagonal_kernel(monkeypatch):
    """Before (the dispatch off): no permute anywhere; after: the k < lanes convs have k - 1
    permutes a pixel of each tile, every other kernel's loop IR is unchanged."""
    after = _kernels(True, monkeypatch)
    before = _kernels(False, monkeypatch)
    assert set(after) == set(before)
    diagonal = {"k2": 2, "k4s2": 4, "k8": 8, "k4pw": 4}
    taken = {n for n in after if _permute_count(after[n])}
    assert taken == {n for n, k in diagonal.items() if block_diagonal_fits(
        LANES, LANES, 32, 32, 32 // k)}
    assert taken >= {"k2", "k4s2", "k4pw"}
    for name in after:
        assert _permute_count(before[name]) == 0
        if name not in taken:
            assert str(after[name]) == str(before[name]), name
    for name in taken:
        k = diagonal[name]
        w = next(b for b in after[name].params if b.name.startswith("w"))
        assert w.shape[-2:] == (k, LANES)             # k weight vectors a tap, not c
        assert _permute_count(after[name]) % (k - 1) == 0


def test_block_diagonal_tiles_are_tunable_workloads(expected):
    """Each block-diagonal conv is a tunable workload (tile_schedules.GROUPED_KIND: at most R
    pixels a tile); every candidate tile gives the reference's outputs, a forced candidate is
    reported as tuned, and one that does not fit the registers is ignored (the cost model's)."""
    base = cnncc.compile(_net(), cache=False, threads=1)
    ctx = base.program.ctx
    keys = {k: c for k, c in ctx.workloads.items() if k.startswith(GROUPED_KIND + "/")}
    assert keys and all(isinstance(c[0], PixelSchedule) for c in keys.values())
    assert all(len(c) >= 2 for c in keys.values())
    for r in (1, max(len(c) for c in keys.values()) - 1):
        sched = {k: c[min(r, len(c) - 1)] for k, c in keys.items()}
        m = cnncc.compile(_net(), cache=False, threads=1, schedules=sched)
        assert {m.program.ctx.workload_of[n] for n in m.program.ctx.tuned} == set(keys)
        assert m.generated.key != base.generated.key
        assert _rel_err(m(_input()), expected) <= RTOL
    too_big = {k: PixelSchedule(c[0].r + 1) for k, c in keys.items()}
    m = cnncc.compile(_net(), cache=False, threads=1, schedules=too_big)
    assert not m.program.ctx.tuned and m.generated.key == base.generated.key
