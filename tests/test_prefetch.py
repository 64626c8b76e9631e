"""Prefetch (ir/loop.py), a cache hint in the loop IR: printed, ignored by the interpreter, kept
with substituted indices by every schedule primitive, emitted as llvm.prefetch (once per vector of lanes, outlined parallel loops included) and as a
comment in CUDA C; ConvNCHWc kernels (cnncc/lower/conv_nchwc.py) prefetching the next group's
weights match the reference interpreter (|llvm - ref| <= 1e-4 * max(1, max |ref|)) and prefetch
exactly the next group's weight lines, all inside the weight buffer."""
from __future__ import annotations

import re

from dataclasses import replace

import numpy as np
import pytest

import cnncc

from cnncc.backends.cuda import render_kernel
from cnncc.backends.llvm import jit
from cnncc.backends.llvm.kernels import compile_kernel
from cnncc.ir.loop_walk import replace_stmts
from cnncc.ir.dtypes import DType
from cnncc.ir.loop import (Buffer, For, If, Kernel, Prefetch, Seq, Stmt, Store, Var,
                           loop_nest, seq)
from cnncc.ir.loop_interp import run_kernel
from cnncc.ir.loop_printer import format_expr
from cnncc.ir.schedule import Schedule
from cnncc.lower import conv_nchwc_tiles
from cnncc.lower.conv_nchwc_tiles import PREFETCH_PLACEMENTS, DenseSchedule
from cnncc.lower.program import lower_graph
from cnncc.ir.target import Target

from test_nchwc_kernels import RTOL, check, conv_graph, feeds_for

# The loop IR tests below are about one AVX-512 machine (16-lane blocks, 32 registers, a 32 KiB
# L1 and a 2 MiB L2), whatever the host.
AVX512 = Target.from_features("+avx512f,+avx512bw,+avx512vl,+avx2,+avx,+fma,+sse2",
                              caches={"l1d": 32 << 10, "l2": 2 << 20, "l3": 32 << 20}, cores=2)

F32 = DType.float32
# A read prefetch into the data cache; the group is its locality.
PREFETCH_CALL = re.compile(
    r"call void @\"llvm\.prefetch\.p0\"\(ptr [^,]+, i32 0, i32 (\d), i32 1\)")


def scale_kernel(m: int, n: int, level: int = 2) -> Kernel:
    """b[i, j] = 2 a[i, j] with a prefetch of a[i, j] (the element about to be read)."""
    a, b = Buffer("a", F32, (m, n)), Buffer("b", F32, (m, n))
    body = loop_nest([("i", m), ("j", n)], lambda i, j: seq(
        Prefetch(a, (i, j), level), Store(b, (i, j), a[i, j] * 2.0)))
    return Kernel("scale", [a, b], body)


def prefetches(s: Stmt) -> list[Prefetch]:
    from cnncc.ir.loop_walk import walk_stmts
    return [x for x in walk_stmts(s) if isinstance(x, Prefetch)]


def check_pairs(kernel: Kernel) -> int:
    """Every prefetch of a is followed, in its Seq, by the store reading a at the same indices
    (a schedule substitutes both alike); returns the number of prefetches."""
    from cnncc.ir.loop_walk import walk_stmts
    n = 0
    for s in walk_stmts(kernel.body):
        if isinstance(s, Seq) and any(isinstance(x, Prefetch) for x in s.stmts):
            pf, st = s.stmts
            assert isinstance(pf, Prefetch) and isinstance(st, Store)
            assert [format_expr(i) for i in pf.indices] == [format_expr(i) for i in st.indices]
            n += 1
    return n


def run_scale(kernel: Kernel, m: int, n: int, threads: int = 1) -> str:
    """Run ``kernel`` in the interpreter and compiled; both must give 2 a. The LLVM IR text."""
    a = np.random.default_rng(0).standard_normal((m, n)).astype(np.float32)
    b1, b2 = np.zeros_like(a), np.zeros_like(a)
    run_kernel(kernel, {"a": a, "b": b1})
    ck = compile_kernel(kernel, threads=threads)
    ck({"a": a, "b": b2})
    np.testing.assert_array_equal(b1, 2 * a)
    np.testing.assert_array_equal(b2, 2 * a)
    return ck.ir_text


# ---- IR, printer, interpreter -------------------------------------------------------------------

def test_printer_and_checks():
    k = scale_kernel(3, 5, level=1)
    assert "prefetch L1 a[i, j]" in str(k)
    with pytest.raises(IndexError, match="prefetch a: 1 indices for rank 2"):
        Prefetch(Buffer("a", F32, (2, 2)), (0,))


def test_interpreter_ignores_it():
    """A prefetch of an index past the buffer changes nothing (a hint, never a load)."""
    a, b = Buffer("a", F32, (6,)), Buffer("b", F32, (6,))
    i = Var("i")
    k = Kernel("k", [a, b], For(i, 6, seq(Prefetch(a, (i + 100,)), Store(b, (i,), a[i] + 1.0))))
    x = np.arange(6, dtype=np.float32)
    y = np.zeros(6, np.float32)
    run_kernel(k, {"a": x, "b": y})
    np.testing.assert_array_equal(y, x + 1)


# ---- schedules ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["guard", "tail"])
def test_split_vectorize_unroll_parallel(mode):
    m, n = 5, 37
    s = Schedule(scale_kernel(m, n))
    jo, ji = s.split("j", jit.vector_lanes(), mode=mode)
    s.vectorize(ji)
    io, ii = s.split("i", 2, mode="guard")
    s.parallel(io)
    # tail mode: the main nest and the tail loop each hold a copy of the body.
    assert check_pairs(s.kernel) == (2 if mode == "tail" else 1)
    assert len(prefetches(s.kernel.body)) == check_pairs(s.kernel)
    assert "j_o" in format_expr(prefetches(s.kernel.body)[0].indices[1])
    run_scale(s.kernel, m, n, threads=2)


def test_fuse():
    m, n = 4, 6
    s = Schedule(scale_kernel(m, n))
    f = s.fuse("i", "j")
    assert check_pairs(s.kernel) == 1
    pf = prefetches(s.kernel.body)[0]
    i, j = (format_expr(x) for x in pf.indices)
    assert f"({f} // 6)" in i and f"({f} % 6)" in j
    run_scale(s.kernel, m, n)


# ---- LLVM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("level,locality", [(1, "3"), (2, "2"), (3, "1")])
def test_llvm_prefetch_levels(level, locality):
    text = run_scale(scale_kernel(3, 5, level), 3, 5)
    assert PREFETCH_CALL.findall(text) == [locality]


def test_llvm_once_per_vector():
    """A vectorized loop of 2 vectors + 3 lanes: one prefetch per vector and one for the
    remainder lanes; a loop that runs lane by lane (lane-dependent branch): one per vector."""
    lanes = jit.vector_lanes()
    n = 2 * lanes + 3
    s = Schedule(scale_kernel(2, n))
    s.vectorize("j")
    assert len(PREFETCH_CALL.findall(run_scale(s.kernel, 2, n))) == 3
    a, b = Buffer("a", F32, (n,)), Buffer("b", F32, (n,))
    j = Var("j")
    body = For(j, n, seq(Prefetch(a, (j,)), If(j < 5, Store(b, (j,), a[j]), Store(b, (j,),
                                                                                   a[j] * 2.0))),
               "vectorized")
    ck = compile_kernel(Kernel("lanes", [a, b], body))
    assert len(PREFETCH_CALL.findall(ck.ir_text)) == 3
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    ck({"a": x, "b": y})
    np.testing.assert_array_equal(y, np.where(np.arange(n) < 5, x, 2 * x))


def test_llvm_parallel_prefetch_only_buffer():
    """An outlined parallel loop gets a buffer it only prefetches (never loads or stores)."""
    m, n = 8, 16
    a, b, c = (Buffer(x, F32, (m, n)) for x in "abc")
    body = loop_nest([("i", m)], lambda i: For(Var("j"), n, seq(
        Prefetch(c, (i, Var("j"))), Store(b, (i, Var("j")), a[i, Var("j")] + 1.0))), "parallel")
    ck = compile_kernel(Kernel("pc", [a, b, c], body), threads=2)
    assert "cnncc_parallel" in ck.ir_text and PREFETCH_CALL.search(ck.ir_text)
    x = np.random.default_rng(3).standard_normal((m, n)).astype(np.float32)
    y = np.zeros_like(x)
    ck({"a": x, "b": y, "c": np.zeros_like(x)})
    np.testing.assert_array_equal(y, x + 1)


def test_cuda_renders_a_comment():
    m, n = 4, 32
    s = Schedule(scale_kernel(m, n))
    s.bind("i", "gpu_block")
    s.bind("j", "gpu_thread")
    text = render_kernel(s.kernel).device
    assert "// prefetch a (not emitted)" in text
    assert re.search(r"b\[.*\] = a\[.*\] \* 2\.0f;", text)


# ---- ConvNCHWc ----------------------------------------------------------------------------------

@pytest.fixture
def group_major(monkeypatch):
    """Convs group-major whatever their weights (the small test convs would run pixel-major,
    which never prefetches: every core keeps all of their weights in L2)."""
    monkeypatch.setattr(conv_nchwc_tiles, "PIXEL_MAJOR_L2_SHARE", 0)


def conv_kernel(g, schedules: dict | None = None) -> Kernel:
    prog = lower_graph(g, AVX512.replace(threads=1), schedules=schedules)
    (k,) = [k for k, _ in prog.ctx.kernels if k.name == "conv"]
    return k


def record(s: Stmt, hits: Buffer, og: Var) -> Stmt:
    """``s`` with each prefetch of wf turned into a store hits[og, index] = 1 (bounds-checked
    by the interpreter), and without the arithmetic (loops with no prefetch inside, stores):
    only where the prefetches go is interpreted."""
    def keep(x: Stmt) -> Stmt | None:
        if isinstance(x, Prefetch):
            return Store(hits, (og,) + x.indices, 1.0)
        if isinstance(x, Store) or (isinstance(x, For) and not prefetches(x)):
            return Seq([])
        return None
    return replace_stmts(s, keep)


@pytest.mark.parametrize("ic,oc,h,k,stride", [
    (16, 64, 4, 3, 1),      # 2 groups of 2 tiles
    (16, 112, 7, 3, 1),     # a tail group; 4 tiles
    (32, 96, 5, 1, 1),      # a flattened 1x1 conv
    (16, 64, 9, 3, 1),      # one line a step: a tap's lines at once, before its ci loop
    (16, 128, 5, 3, 1),     # runs of 7 pixels of the flattened output; a tail group
])
def test_conv_prefetches_next_group(ic, oc, h, k, stride, group_major):
    """While group g runs, exactly the lines of group g + 1 (the last group: its own) are
    prefetched, each at the start of its line, inside the weight buffer; the tail group and
    the first group's own weights are not prefetched."""
    kern = conv_kernel(conv_graph(ic, oc, h, h, k, stride=stride))
    w0 = next(b for b in kern.params if b.name == "w0")
    wf = next(b for b in kern.params if b.name == "wf")
    assert wf.size == w0.size and "prefetch L2 wf[" in str(kern)
    groups, per = w0.shape[0], w0.size // w0.shape[0]
    og_extent = -(-oc // w0.shape[-1])            # the full groups and the tail group
    hits = Buffer("hits", F32, (og_extent,) + wf.shape)
    body = record(kern.body, hits, Var("og"))
    arrays = {b.name: np.zeros(b.shape, np.float32) for b in kern.params}
    arrays["hits"] = np.zeros(hits.shape, np.float32)
    run_kernel(Kernel("rec", kern.params + [hits], body), arrays)
    got = arrays["hits"]
    line = 64 // 4
    for g in range(og_extent):
        want = np.zeros(wf.size, np.float32)
        if g < groups:
            nxt = min(g + 1, groups - 1)
            want[nxt * per:(nxt + 1) * per:line] = 1
        np.testing.assert_array_equal(got[g], want, err_msg=f"group {g}")


@pytest.mark.parametrize("ic,oc,h,k,stride,kw", [
    (64, 128, 7, 3, 1, {}),
    (16, 112, 7, 3, 1, {"residual": True, "act": "Relu"}),
    (32, 96, 5, 1, 1, {"batch": 2}),
    (48, 96, 9, 1, 2, {"act": "Clip"}),
    (24, 72, 7, 3, 1, {"pads": (0, 1, 1, 0)}),
    (16, 128, 5, 3, 1, {"residual": True}),         # runs
])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_with_prefetch_matches_reference(ic, oc, h, k, stride, kw, threads, group_major):
    g = conv_graph(ic, oc, h, h, k, stride=stride, **kw)
    assert prefetches(conv_kernel(g).body)
    check(g, threads)


def prefetch_loops(s: Stmt, outer: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The names of the loops around each prefetch of ``s``."""
    if isinstance(s, Prefetch):
        return [outer]
    if isinstance(s, For):
        return prefetch_loops(s.body, outer + (s.var.name,))
    found = []
    for child in getattr(s, "stmts", None) or [getattr(s, a) for a in ("body", "then", "else_")
                                               if getattr(s, a, None) is not None]:
        found += prefetch_loops(child, outer)
    return found


@pytest.mark.parametrize("ic,oc,h,stride,inside", [
    (16, 64, 9, 1, False),     # one line a step: the tap's lines before its channel loop
    (32, 96, 9, 2, True),      # strided: a step's lines inside the channel loop
    (16, 64, 4, 1, True),      # two lines a step (2 groups of 2 tiles): inside too
])
def test_conv_prefetch_placement(ic, oc, h, stride, inside, group_major):
    """A stride-1 conv prefetching one line a step issues a tap's lines before its channel
    loop (inside it they split LLVM's scheduling region: a full register tile spilled); other
    convs a step's lines inside it (a tap's burst of 8 lines measured slower there)."""
    kern = conv_kernel(conv_graph(ic, oc, h, h, 3, stride=stride))
    loops = prefetch_loops(kern.body)
    assert loops and all(("cio" in names[-1]) == inside for names in loops), loops
    assert all(any(n.startswith("kw") for n in names) for names in loops), loops


@pytest.mark.parametrize("ic,oc,h,stride,rule", [(16, 64, 9, 1, "burst"),
                                                  (32, 96, 9, 2, "spread")])
def test_tuned_prefetch_placement_reaches_the_kernel(ic, oc, h, stride, rule):
    """The placement is a field of the dense schedule (tuning log included): the rule above
    is the default, the tuner's candidates hold the cost model's tile with each other
    placement, and a tuned one is what the kernel's loops do ("off": no prefetch, no flat
    weight view). A logged schedule without the field (an older log) keeps the rule."""
    g = conv_graph(ic, oc, h, h, 3, stride=stride)
    prog = lower_graph(g, AVX512.replace(threads=1), schedules={})
    key = prog.ctx.workload_of["conv"]
    variants = [s for s in prog.ctx.workloads[key] if s.prefetch]
    assert {s.prefetch for s in variants} == set(PREFETCH_PLACEMENTS) - {rule}
    untuned = conv_kernel(g, {})
    for p in PREFETCH_PLACEMENTS:
        kern = conv_kernel(g, {key: replace(variants[0], prefetch=p)})
        loops = prefetch_loops(kern.body)
        if p == "off":
            assert not loops and "wf" not in [b.name for b in kern.params]
        else:
            assert loops and all(("cio" in names[-1]) == (p == "spread") for names in loops)
        assert (str(kern) == str(untuned)) == (p == rule)
    old = {k: v for k, v in variants[0].as_dict().items() if k != "prefetch"}
    assert str(conv_kernel(g, {key: DenseSchedule.from_dict(old)})) == str(untuned)
    with pytest.raises(ValueError, match="dense conv schedule"):
        DenseSchedule.from_dict(dict(old, prefetch="sideways"))


def test_every_tuned_placement_matches_the_reference():
    """The host's candidates with another placement than the rule's compute the reference's
    conv (|llvm - ref| <= 1e-4 * max(1, max |ref|))."""
    g = conv_graph(64, 128, 7, 7, 3)
    feeds = feeds_for(g)
    ref = cnncc.compile(g, target="reference")(*feeds)
    base = cnncc.compile(g, threads=1, cache=False, schedules={})
    key = base.program.ctx.workload_of["conv"]
    variants = [s for s in base.program.ctx.workloads[key] if s.prefetch]
    assert len(variants) == 2 and "off" in {s.prefetch for s in variants}
    for s in variants:
        m = cnncc.compile(g, threads=1, cache=False, schedules={key: s})
        assert m.program.ctx.tuned == {"conv"}
        assert float(np.abs(m(*feeds) - ref).max()) <= RTOL * max(1.0, float(np.abs(ref).max()))


def test_conv_prefetch_only_with_few_tiles(group_major):
    """Many pixel tiles per group (or one group): no prefetch, no flat weight view."""
    many = conv_kernel(conv_graph(32, 64, 40, 40, 3))
    one = conv_kernel(conv_graph(16, 32, 5, 5, 3))
    for kern in (many, one):
        assert not prefetches(kern.body) and "wf" not in [b.name for b in kern.params]


@pytest.mark.parametrize("groups,tiles,step,want", [
    (4, 4, 512, (2, 4)), (4, 14, 512, (1, 8)), (8, 3, 512, (4, 2)), (2, 7, 768, (2, 6)),
    (1, 4, 512, None), (4, conv_nchwc_tiles.PREFETCH_MAX_TILES + 1, 512, None), (4, 4, 96, None),
])
def test_prefetch_plan(groups, tiles, step, want):
    plan = conv_nchwc_tiles.prefetch_plan(groups, tiles, step)
    assert plan == want
    if plan:
        per, used = plan
        assert per * used * 64 == step and used <= tiles


@pytest.mark.parametrize("threads", [2, 3])
def test_prefetching_conv_gives_each_thread_one_contiguous_share(threads, group_major):
    """With prefetching, task i prefetches for task i + 1: the fused task range is split into
    ``threads`` contiguous parts run in parallel (not the dynamic schedule's small chunks, which
    hand the next group to the other core); the results still match the reference."""
    g = conv_graph(64, 128, 14, 14, 3, stride=1)
    prog = lower_graph(g, AVX512.replace(threads=threads))
    (kern,) = [k for k, _ in prog.ctx.kernels if k.name == "conv"]
    text = str(kern)
    assert "prefetch L2 wf[" in text
    assert re.search(rf"parallel for \w+ in range\({threads}\):", text), text[:600]
    check(g, threads=threads)
    # Without prefetching (many pixel tiles per group) the dynamic schedule stays.
    big = conv_graph(16, 32, 64, 64, 3, stride=1)
    (k2,) = [k for k, _ in lower_graph(big, AVX512.replace(threads=threads)).ctx.kernels if k.name == "conv"]
    assert "prefetch" not in str(k2)
    assert not re.search(rf"parallel for \w+ in range\({threads}\):", str(k2))
