"""Few-input-channel stem convs (ConvNCHWc on NCHW input, cnncc/lower/conv_nchwc.py): their tap
loops are "rolled" loops (ir/loop.py; llvm.loop.unroll.disable, CUDA "#pragma unroll 1"), so
LLVM does not unroll them and share input broadcasts across taps, which spilled the full
register tile; the FMA loops of the stem's machine code touch no stack slot (AVX-512 on this
host, AVX2 in a child built with CNNCC_FEATURES), and the stems match the reference
interpreter (|llvm - ref| <= 1e-4 * max(1, max |ref|)) on both ISAs."""
from __future__ import annotations

import os
import re
import textwrap

import numpy as np
import pytest

import cnncc
from cnncc.backends.cuda import render_kernel
from cnncc.backends.llvm import jit
from cnncc.backends.llvm.codegen import ModuleBuilder
from cnncc.backends.llvm.kernels import compile_kernel
from cnncc.ir import DType, Graph, TensorType
from cnncc.ir.loop import Buffer, For, Kernel, Store, Var
from cnncc.ir.loop_interp import run_kernel
from cnncc.ir.loop_walk import walk_stmts
from cnncc.ir.schedule import Schedule
from cnncc.ir.target import Target
from cnncc.lower.conv_nchwc_tiles import STEM_TILE_LINES, tile_lines
from cnncc.lower.program import lower_graph

from isa_child import run_for_features
from test_nchwc_kernels import PARAMS, conv_graph, feeds_for

AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"
CACHES = {"l1d": 32 << 10, "l2": 1 << 20, "l3": 16 << 20}
TARGETS = {
    "avx512": Target.from_features("+avx512f,+avx512bw,+avx512vl,+avx2,+avx,+fma,+sse2",
                                   threads=1, caches=CACHES, cores=1),
    "avx2": Target.from_features(AVX2 + ",+sse2", threads=1, caches=CACHES, cores=1),
}
# (ic, oc, h, w, k, stride, pads): VGG's 3x3 stem (full 4x1x3 / 2x1x6 tiles and a tail), the
# strided 3x3 stems of MobileNetV2 / SqueezeNet, ResNet's 7x7/2 and ConvNeXt's 4x4/4.
STEMS = [(3, 64, 4, 31, 3, 1, None), (3, 32, 9, 13, 3, 2, None), (3, 64, 11, 11, 7, 2, None),
         (3, 48, 8, 12, 4, 4, (0, 0, 0, 0))]
RTOL = 1e-4
# A vector register moved to or from the stack.
VECTOR_STACK = re.compile(r"\(%rsp\).*%[xyz]mm|%[xyz]mm.*\(%rsp\)")


def tap_loop_kinds(kernel: Kernel) -> set[str]:
    return {s.kind for s in walk_stmts(kernel.body) if isinstance(s, For)
            and s.var.name in ("kh", "kw")}


def conv_kernel(g, target: Target) -> Kernel:
    (k,) = [k for k, _ in lower_graph(g, target).ctx.kernels if k.name == "conv"]
    return k


@pytest.mark.parametrize("isa", sorted(TARGETS))
def test_stem_tap_loops_are_rolled_and_others_serial(isa):
    """The rule: only a tap of straight-line FMAs (one-channel input blocks) rolls its tap
    loops; a blocked conv's taps hold a channel loop and stay serial."""
    t = TARGETS[isa]
    for k, stride in ((3, 1), (7, 2)):
        g = conv_graph(3, 64, 9, 30, k, stride=stride, stem=True, block=t.lanes)
        assert tap_loop_kinds(conv_kernel(g, t)) == {"rolled"}
    assert tap_loop_kinds(conv_kernel(conv_graph(32, 64, 6, 6, 3, block=t.lanes), t)) \
        == {"serial"}


def copy_kernel(kind: str) -> Kernel:
    """b[i, j] = a[i, j] + 1 with the j loop of ``kind``."""
    a, b = Buffer("a", DType.float32, (4, 3)), Buffer("b", DType.float32, (4, 3))
    i, j = Var("i"), Var("j")
    return Kernel("rolled", [a, b], For(i, 4, For(j, 3, Store(b, (i, j), a[i, j] + 1.0), kind)))


def test_rolled_loop_in_every_backend():
    """LLVM gets llvm.loop.unroll.disable on a rolled loop (none on a serial one), CUDA C a
    "#pragma unroll 1"; the interpreter and the compiled code compute the same."""
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    want = np.zeros_like(x)
    run_kernel(copy_kernel("rolled"), {"a": x, "b": want})
    np.testing.assert_allclose(want, x + 1.0)
    for kind in ("rolled", "serial"):
        ck = compile_kernel(copy_kernel(kind))
        got = np.zeros_like(x)
        ck({"a": x, "b": got})
        np.testing.assert_array_equal(got, want)
        assert ("llvm.loop.unroll.disable" in ck.ir_text) == (kind == "rolled")
    s = Schedule(copy_kernel("rolled"))
    s.bind("i", "gpu_block")
    device = render_kernel(s.kernel).device
    assert re.search(r"#pragma unroll 1\s+for \(", device), device


def stem_assembly(target: Target) -> list[str]:
    """The machine code of VGG's 3x3 stem (3 -> 64 channels) for ``target`` (the JIT's own
    ISA: the host's or CNNCC_FEATURES'), as lines."""
    k = conv_kernel(conv_graph(3, 64, 4, 30, 3, stem=True, act="Relu", block=target.lanes),
                    target)
    mb = ModuleBuilder("stem", target.lanes, 1, False, target.flags)
    mb.add_kernel(k)
    return jit.assembly(str(mb)).splitlines()


def fma_region_spills(lines: list[str]) -> tuple[int, int]:
    """(FMAs, vector stack moves between the first FMA and the last)."""
    fmas = [i for i, line in enumerate(lines) if "vfmadd" in line]
    return len(fmas), sum(1 for line in lines[fmas[0]:fmas[-1]] if VECTOR_STACK.search(line))


def test_stem_fma_loops_never_touch_the_stack():
    """Unrolled taps spilled 14 accumulators a step (75 stack moves amid the FMAs)."""
    fmas, spills = fma_region_spills(stem_assembly(jit.host_target(1)))
    assert fmas and spills == 0


def stems_graph(block: int) -> Graph:
    """Every conv of STEMS (with ReLU) in one graph: input x{i} -> conv{i} -> output."""
    rng = np.random.default_rng(0)
    g = Graph("stems")
    outs = []
    for i, (ic, oc, h, w, k, stride, pads) in enumerate(STEMS):
        x = g.add_input(f"x{i}", TensorType(DType.float32, (1, ic, h, w)))
        wv = (rng.standard_normal((oc, ic, k, k)) / np.sqrt(ic * k * k)).astype(np.float32)
        ins = [x, g.add_param(f"w{i}", wv),
               g.add_param(f"b{i}", rng.standard_normal(oc).astype(np.float32))]
        attrs = {"kernel_shape": [k, k], "strides": [stride] * 2,
                 "pads": [k // 2] * 4 if pads is None else list(pads), "dilations": [1, 1],
                 "group": 1, "block": block, "in_layout": "NCHW", "activation": "Relu",
                 "activation_params": PARAMS.get("Relu", [])}
        (y,) = g.add_node("ConvNCHWc", ins, attrs, name=f"conv{i}")
        outs += g.add_node("FromNCHWc", [y], {"channels": oc})
    g.outputs = outs
    return g.verify()


def stem_errors(block: int) -> list[float]:
    """|llvm - reference| / max(1, max |reference|) of each stem of ``stems_graph``."""
    g = stems_graph(block)
    feeds = feeds_for(g)
    refs = cnncc.compile(g, target="reference")(*feeds)
    gots = cnncc.compile(g, threads=1, cache=False)(*feeds)
    assert len(refs) == len(gots) == len(STEMS)
    return [float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))
            for a, b in zip(gots, refs)]


def test_stems_match_reference():
    assert max(stem_errors(jit.host_target(1).lanes)) <= RTOL


def test_stems_on_avx2():
    """Built for AVX2 (8 lanes, 16 ymm) in a child: no spill amid the FMAs, and every stem of
    STEMS matches the reference."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from cnncc.backends.llvm import jit
        from test_stem_conv import STEMS, fma_region_spills, stem_assembly, stem_errors
        t = jit.host_target(1)
        errs = stem_errors(t.lanes)
        print(json.dumps({{"isa": t.isa, "lanes": t.lanes, "errs": errs,
                          "fma": fma_region_spills(stem_assembly(t))}}))
    """)
    out = run_for_features(code, AVX2, 300)
    assert (out["isa"], out["lanes"]) == ("avx2", 8)
    assert len(out["errs"]) == len(STEMS) and max(out["errs"]) <= RTOL, out["errs"]
    fmas, spills = out["fma"]
    assert fmas and spills == 0


@pytest.mark.parametrize("isa", sorted(TARGETS))
def test_stem_tiles_write_at_most_the_line_cap(isa):
    """A stem's register tile (and every tile the tuner would try for it) writes at most
    STEM_TILE_LINES cache lines; a blocked conv of the same output keeps the register limit
    (on AVX-512 its tile writes more lines than that)."""
    t = TARGETS[isa]

    def tiles(g):
        ctx = lower_graph(g, t).ctx
        (cands,) = ctx.workloads.values()
        return [(s.vb, s.th, s.tw) for s in cands]

    stem = tiles(conv_graph(3, 64, 8, 224, 3, stem=True, block=t.lanes))
    assert stem and all(tile_lines(*tile, t.lanes) <= STEM_TILE_LINES for tile in stem), stem
    blocked = tiles(conv_graph(32, 64, 8, 224, 3, block=t.lanes))
    if isa == "avx512":
        assert max(tile_lines(*tile, t.lanes) for tile in blocked) > STEM_TILE_LINES, blocked
