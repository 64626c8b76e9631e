"""Register tiles over runs of pixels of the flattened output (TH = 0: cnncc/lower/
conv_nchwc_tiles.py RUN_PIXELS): where a row holds fewer than two of the register tile's
widths, a run crosses row ends instead of leaving a short tail tile per row. ResNet-18's
weight-bound 7x7x512 convs on AVX2 take runs of 2 blocks x 5 pixels (1x1x7 rectangles before:
72-74% of the FMA peak in order, 88% with runs of 6; runs of 5 88.5-89.7% against 6's
89.4-90.9% on Zen 4, AVX2 code, since AVX2's weight vectors are costed as half a line of
L2). Checked: the cost model's choice per ISA, the tuning log's form of a run, and the convs
against the reference interpreter (|llvm - ref| <= 1e-4 * max(1, max |ref|)) on this host
and, in a child built with CNNCC_FEATURES, on AVX2."""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

import cnncc
from cnncc.backends.llvm import jit
from cnncc.lower.conv_nchwc_tiles import (RUN_PIXELS, DenseSchedule, TileProblem, pick_tile,
                                          tile_fits)
from cnncc.lower.program import lower_graph

from isa_child import run_for_features
from test_nchwc_kernels import RTOL, conv_graph, feeds_for
from test_stem_conv import AVX2, TARGETS

# (ic, oc, h, k, stride, options, run tile (VB, TW)): ResNet-18's layer4 conv with a residual
# and ReLU, a strided one, a 5x5, a 1-pixel tail, batch 2, a run longer than a row.
CASES = [(128, 64, 7, 3, 1, {"residual": True, "act": "Relu"}, (2, 6)),
         (64, 64, 9, 3, 2, {}, (2, 4)), (32, 48, 6, 5, 1, {}, (1, 8)),
         (32, 32, 7, 3, 1, {"batch": 2}, (2, 6)), (16, 24, 3, 3, 1, {}, (1, 7))]
L4_BLOCK_BYTES = 512 * 9 * 4        # per lane: ResNet-18's layer4 3x3 conv, 512 input channels


def test_cost_model_runs_where_rows_are_short():
    """AVX2 (16 ymm): the 7x7x512 conv takes a run of 2 blocks x 5 pixels; a 56x56 conv and
    AVX-512 (32 zmm, whose rectangles fill a 7-wide row twice) keep rectangles."""
    def tile(isa: str, ocb: int, hw: int):
        t = TARGETS[isa]
        regs = t.vector_registers
        return pick_tile(TileProblem(ocb, hw, hw, regs, L4_BLOCK_BYTES * t.lanes, 9,
                                     t.l1d_bytes, vector_bytes=t.lanes * 4))
    assert tile("avx2", 64, 7) == (2, 0, 5)
    assert tile("avx2", 8, 56)[1] > 0
    assert tile("avx512", 32, 7)[1] > 0


def test_runs_in_the_tuning_log():
    s = DenseSchedule(2, 0, 6)
    assert DenseSchedule.from_dict(s.as_dict()) == s and s.label() == "2x run 6"
    layer4 = TileProblem(64, 7, 7, 16, L4_BLOCK_BYTES * 8, 9, 32 << 10)     # AVX2
    assert tile_fits(s, layer4)
    assert not tile_fits(DenseSchedule(1, 0, RUN_PIXELS + 1), layer4)
    assert not tile_fits(DenseSchedule(4, 0, 8), layer4)     # past the registers


def case_errors() -> list[float]:
    """|llvm - reference| / max(1, max |reference|) of every case with its run tile (as a
    tuned schedule), 1 and 2 threads, on this process's ISA; each case's kernel does run."""
    t = jit.host_target(1)
    errs = []
    for ic, oc, h, k, stride, kw, (vb, tw) in CASES:
        g = conv_graph(ic, oc, h, h, k, stride=stride, block=t.lanes, **kw)
        (key,) = lower_graph(g, t).ctx.workloads
        feeds = feeds_for(g)
        ref = cnncc.compile(g, target="reference")(*feeds)
        for threads in (1, 2):
            m = cnncc.compile(g, threads=threads, cache=False,
                              schedules={key.replace("/t1/", f"/t{threads}/"):
                                         DenseSchedule(vb, 0, tw)})
            assert m.program.ctx.tuned, (ic, oc, h, k, stride)
            got = m(*feeds)
            errs.append(float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())))
    return errs


def test_runs_match_reference_on_this_isa():
    assert max(case_errors()) <= RTOL


@pytest.mark.skipif("avx2" not in jit.host_target(1).flags, reason="needs AVX2")
def test_runs_on_avx2():
    """Built for AVX2 in a child: ResNet-18's layer4 conv runs 2 x 5 by default, and every case
    matches the reference."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from cnncc.backends.llvm import jit
        from cnncc.lower.program import lower_graph
        from test_nchwc_kernels import conv_graph
        from test_pixel_runs import case_errors
        t = jit.host_target(1)
        ctx = lower_graph(conv_graph(512, 512, 7, 7, 3, block=t.lanes), t).ctx
        (cands,) = ctx.workloads.values()
        print(json.dumps({{"isa": t.isa, "errs": case_errors(),
                          "first": [cands[0].vb, cands[0].th, cands[0].tw]}}))
    """)
    out = run_for_features(code, AVX2, 600)
    assert out["isa"] == "avx2" and out["first"] == [2, 0, 5], out
    assert max(out["errs"]) <= RTOL, out["errs"]


@pytest.mark.parametrize("isa,accumulators", [("avx2", 12), ("avx512", 24)])
def test_one_by_one_conv_tiles_keep_a_quarter_of_the_registers(isa, accumulators):
    """A 1x1 conv's register tile holds all but a quarter of the vector registers (at most 8
    kept out): 12 accumulators with AVX2's 16 ymm (8 before: ResNet-50 79.4 -> 74.9 ms, AVX2
    code on Zen 4), 24 with AVX-512's 32 zmm."""
    t = TARGETS[isa]
    ctx = lower_graph(conv_graph(256, 64, 56, 56, 1, block=t.lanes), t).ctx
    (cands,) = ctx.workloads.values()
    first = cands[0]
    assert first.vb * first.th * first.tw == accumulators, first


def test_avx2_weight_vectors_stream_from_l2_as_half_lines():
    """A weight vector streamed from L2 costs its share of a cache line: AVX2's 192 -> 192 3x3
    conv on 16 x 16 (all_conv's conv5) takes 2 blocks x 6 pixels (98% of the FMA peak on Zen
    4, AVX2 code), where whole-line costs picked 1x2x6 (12 broadcasts a step: 79%)."""
    t = TARGETS["avx2"]
    args = (24, 16, 16, t.vector_registers, 192 * 9 * t.lanes * 4, 9, t.l1d_bytes)
    assert pick_tile(TileProblem(*args, vector_bytes=t.lanes * 4)) == (2, 1, 6)
    assert pick_tile(TileProblem(*args, vector_bytes=64)) == (1, 2, 6)
