"""inline_channel_gather: channel gathers (ShuffleNet's split and shuffle) read in place by the
convs after them, with no copy kernel. A small ShuffleNetV2-style net (channels that are no
multiple of the block, stride-2 units whose fused depthwise -> 1x1 conv reads a gather, a
strided 1x1 conv, a residual): the graph before and after the pass, the kernels emitted, and
the compiled outputs against the reference at 1 and 2 threads, batch 2 and AVX2 (a child
process with CNNCC_FEATURES); ShuffleNet v1's NCHW shuffle read by the layout change."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import cnncc
from cnncc import host_target
from cnncc.ir import CompileError, DType, Graph, TensorType
from cnncc.lower.program import lower_graph
from cnncc.passes import PASS_NAMES, PassContext, run_pipeline
from cnncc.passes.inline_channel_gather import inline_channel_gather
from cnncc.show import to_dot
from cnncc.testing import relative_error

F32 = DType.float32
AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"
RTOL = 1e-4


def _net(batch: int = 1) -> Graph:
    """stem 3x3 (20) -> a stride-2 unit (22 + 22 channels) -> two stride-1 units (Split ->
    branch -> Concat -> Reshape -> Transpose -> Reshape) -> a stride-2 unit (44 + 44); three
    1x1 convs read the last shuffle (flat, stride 2, 96 channels), and a 1x1 conv reads the
    third unit's shuffle with the second unit's as its residual."""
    rng = np.random.default_rng(0)
    g = Graph("shuffle_units")
    g.add_input("x", TensorType(F32, (batch, 3, 12, 12)))
    count = [0]

    def conv(x, oc, k=1, stride=1, group=1, act=True, residual=None):
        count[0] += 1
        name = f"c{count[0]}"
        ic = g.types[x].shape[1]
        w = g.add_param(f"{name}.w", (rng.standard_normal((oc, ic // group, k, k)) * 0.3)
                        .astype(np.float32))
        b = g.add_param(f"{name}.b", (rng.standard_normal(oc) * 0.3).astype(np.float32))
        (y,) = g.add_node("Conv", [x, w, b], {"pads": [k // 2] * 4, "strides": [stride] * 2,
                                              "group": group}, name=name)
        if residual is not None:
            (y,) = g.add_node("Add", [y, residual], name=f"{name}.add")
        if act:
            (y,) = g.add_node("Relu", [y], name=f"{name}.relu")
        return y

    def shuffle(x, name):
        n, c, h, w = g.types[x].shape
        s1 = g.add_param(f"{name}.s1", np.array([n, 2, c // 2, h, w], np.int64))
        s2 = g.add_param(f"{name}.s2", np.array([n, c, h, w], np.int64))
        (r,) = g.add_node("Reshape", [x, s1], name=f"{name}.r1")
        (t,) = g.add_node("Transpose", [r], {"perm": [0, 2, 1, 3, 4]}, name=f"{name}.tr")
        (y,) = g.add_node("Reshape", [t, s2], name=f"{name}.r2")
        return y

    def unit(x, out, stride, name):
        half = out // 2
        if stride == 1:
            sizes = g.add_param(f"{name}.sizes", np.array([half, half], np.int64))
            x1, x2 = g.add_node("Split", [x, sizes], {"axis": 1}, outputs=2, name=f"{name}.split")
        else:
            c = g.types[x].shape[1]
            x1 = conv(conv(x, c, 3, stride, group=c, act=False), half)
            x2 = x
        y = conv(conv(conv(x2, half), half, 3, stride, group=half, act=False), half)
        (cat,) = g.add_node("Concat", [x1, y], {"axis": 1}, name=f"{name}.cat")
        return shuffle(cat, name)

    x = conv("x", 20, 3)
    x = unit(x, 44, 2, "u0")
    kept = x = unit(x, 44, 1, "u1")
    x = unit(x, 44, 1, "u2")
    y = unit(x, 88, 2, "u3")
    g.outputs = [conv(y, 40), conv(y, 36, stride=2), conv(y, 96, act=False),
                 conv(x, 44, residual=kept)]
    return g.verify()


@pytest.fixture(scope="module")
def graphs():
    """(the net, its graph after every pass but inline_channel_gather, after all of them)."""
    g = _net()
    ctx = PassContext(opt_level=3, machine=host_target(1))
    before = run_pipeline(g, PassContext(opt_level=3, machine=ctx.machine,
                                         skip=frozenset({"inline_channel_gather"})))
    return g, before, run_pipeline(g, ctx)


def _gathers(g: Graph) -> dict[str, int]:
    return {n.name: n.attrs.get("view", 0) for n in g.nodes if n.op == "ChannelGather"}


def test_the_pass_runs_last():
    assert PASS_NAMES[-1] == "inline_channel_gather"


def test_gathers_read_only_by_1x1_convs_become_views(graphs):
    """Before: every gather is a copy. After: the same gathers, those read only by 1x1 convs
    and fused depthwise -> 1x1 convs (the last stride-2 unit's input) views; the second unit's
    shuffle, read as a residual, stays a copy. Nothing else changes."""
    _, before, after = graphs
    assert set(_gathers(before).values()) == {0}
    views = _gathers(after)
    assert views.keys() == _gathers(before).keys() and len(views) == 5
    users = after.users()
    for n in after.nodes:
        if n.op == "ChannelGather":
            readers = users[n.outputs[0]]
            in_place = all(r.inputs[0] == n.outputs[0] and (r.op == "DwPwConvNCHWc" or (
                r.op == "ConvNCHWc" and after.types[r.inputs[1]].shape[2:] == (1, 1)))
                for r in readers)
            assert views[n.name] == int(in_place), (n.name, [r.op for r in readers])
    assert views == {"u1.split_1": 1, "u1.r2": 0, "u2.split_1": 1, "u2.r2": 1, "u3.r2": 1}
    u2 = next(n for n in after.nodes if n.name == "u2.r2")
    assert {r.op for r in users[u2.outputs[0]]} == {"ConvNCHWc", "DwPwConvNCHWc"}
    assert to_dot(after).count("view=1") == 4 and "view=1" not in to_dot(before)  # cnncc show
    strip = [(n.op, n.inputs, n.outputs, {k: v for k, v in n.attrs.items() if k != "view"})
             for n in after.nodes]
    assert strip == [(n.op, n.inputs, n.outputs, n.attrs) for n in before.nodes]


def test_views_emit_no_kernel(graphs):
    """A view gather has no kernel and no memory; the convs reading it take its inputs."""
    _, before, after = graphs
    m = host_target(1)
    names = [nm.replace(".", "_") for nm, view in _gathers(after).items() if view]  # as emitted
    k_before = [k for k, _ in lower_graph(before, m).ctx.kernels]
    k_after = [k for k, _ in lower_graph(after, m).ctx.kernels]
    for name in names:
        assert any(k.name.startswith(name) for k in k_before)
        assert not any(k.name.startswith(name) for k in k_after)
    assert len(k_after) == len(k_before) - sum(
        any(k.name.startswith(nm) for nm in names) for k in k_before)


def test_rewrite_keeps_the_reference(graphs):
    g, before, after = graphs
    x = np.random.default_rng(1).standard_normal(g.types["x"].shape).astype(np.float32)
    expect = cnncc.compile(g, target="reference")(x)
    for out in (before, after):
        got = cnncc.compile(out, target="reference", opt_level=0)(x)
        for a, b in zip(got, expect):
            assert relative_error(a, b) <= 1e-6


@pytest.mark.parametrize("threads,batch", [(1, 1), (2, 1), (2, 2)])
def test_compiled_matches_the_reference(threads, batch):
    g = _net(batch)
    x = np.random.default_rng(2).standard_normal(g.types["x"].shape).astype(np.float32)
    expect = cnncc.compile(g, target="reference")(x)
    got = cnncc.compile(g, threads=threads, cache=False)(x)
    for a, b in zip(got, expect):
        assert np.abs(b).max() > 1e-3 and relative_error(a, b) <= RTOL


def test_avx2():
    """AVX2 (blocks of 8, 16 registers), in a child process: the views and the outputs."""
    g = _net()
    x = np.random.default_rng(3).standard_normal(g.types["x"].shape).astype(np.float32)
    expect = cnncc.compile(g, target="reference")(x)
    code = ("import pickle, sys, cnncc; from cnncc import host_target; "
            "from cnncc.passes import PassContext, run_pipeline; "
            "g, x = pickle.load(sys.stdin.buffer); m = host_target(1); "
            "o = run_pipeline(g, PassContext(opt_level=3, machine=m)); "
            "v = sorted(n.attrs.get('view', 0) for n in o.nodes if n.op == 'ChannelGather'); "
            "sys.stdout.buffer.write(pickle.dumps((m.lanes, v, cnncc.compile(g, cache=False, "
            "threads=1)(x))))")
    run = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((g, x)),
                         capture_output=True, env=dict(os.environ, CNNCC_FEATURES=AVX2),
                         check=True, timeout=600)
    lanes, views, got = pickle.loads(run.stdout)
    assert lanes == 8 and views == [0, 1, 1, 1, 1]
    for a, b in zip(got, expect):
        assert relative_error(a, b) <= RTOL


def test_look_alikes_stay_copies():
    """A gather that is a graph output, or read by a 3x3 conv, is not made a view; an NCHW
    gather neither."""
    g = Graph("look_alikes")
    g.add_input("x", TensorType(F32, (1, 2, 5, 5, 16)))
    g.add_input("y", TensorType(F32, (1, 20, 5, 5)))
    w1 = g.add_param("w1", np.ones((8, 20, 1, 1), np.float32))
    w3 = g.add_param("w3", np.ones((8, 20, 3, 3), np.float32))
    src = list(range(0, 32, 2)) + [1, 3, 5, 7]
    (a,) = g.add_node("ChannelGather", ["x"], {"sources": src, "block": 16,
                                               "in_channels": [32]}, name="a")
    (b,) = g.add_node("ChannelGather", ["x"], {"sources": src, "block": 16,
                                               "in_channels": [32]}, name="b")
    (p,) = g.add_node("ConvNCHWc", [a, w1], {"block": 16}, name="p")
    (q,) = g.add_node("ConvNCHWc", [b, w3], {"block": 16, "pads": [1] * 4}, name="q")
    (c,) = g.add_node("ChannelGather", ["y"], {"sources": src[:10]}, name="c")
    g.outputs = [a, p, q, c]
    out = inline_channel_gather(g.verify()).verify()
    assert _gathers(out) == {"a": 0, "b": 0, "c": 0}


def _v1_unit(batch: int = 1) -> Graph:
    """ShuffleNet v1's unit as onnx's light_shufflenet has it: a grouped 1x1 conv whose groups
    (6 channels) do not tile the blocks (it stays NCHW), the shuffle, a depthwise conv (blocked:
    a ToNCHWc before it) and a grouped 1x1 conv."""
    rng = np.random.default_rng(4)
    g = Graph("v1_unit")
    g.add_input("x", TensorType(F32, (batch, 24, 7, 6)))

    def conv(x, k, group, name):
        w = g.add_param(f"{name}.w", (rng.standard_normal((24, 24 // group, k, k)) * 0.3)
                        .astype(np.float32))
        (y,) = g.add_node("Conv", [x, w], {"pads": [k // 2] * 4, "group": group}, name=name)
        return y
    (y,) = g.add_node("Relu", [conv("x", 1, 4, "g1")], name="relu")
    s1 = g.add_param("s1", np.array([batch, 4, 6, 7, 6], np.int64))
    s2 = g.add_param("s2", np.array([batch, 24, 7, 6], np.int64))
    (r,) = g.add_node("Reshape", [y, s1], name="r1")
    (t,) = g.add_node("Transpose", [r], {"perm": [0, 2, 1, 3, 4]}, name="tr")
    (y,) = g.add_node("Reshape", [t, s2], name="r2")
    g.outputs = [conv(conv(y, 3, 24, "dw"), 1, 4, "g2")]
    return g.verify()


@pytest.mark.parametrize("threads,batch", [(1, 1), (2, 2)])
def test_nchw_shuffle_read_by_the_layout_change(threads, batch):
    """The NCHW shuffle between the grouped conv and the blocked depthwise conv is a view the
    ToNCHWc reads through (one copy instead of two; light_shufflenet's 16 shuffles)."""
    g = _v1_unit(batch)
    m = host_target(threads)
    out = run_pipeline(g, PassContext(opt_level=3, machine=m))
    (gather,) = [n for n in out.nodes if n.op == "ChannelGather"]
    assert gather.attrs.get("view") == 1 and not gather.attrs.get("block")
    assert [u.op for u in out.users()[gather.outputs[0]]] == ["ToNCHWc"]
    kernels = {k.name for k, _ in lower_graph(out, m).ctx.kernels}
    assert {k for k in kernels if k.startswith("r2")} == {"r2_to_nchwc"}, kernels
    x = np.random.default_rng(6).standard_normal(g.types["x"].shape).astype(np.float32)
    expect = cnncc.compile(g, target="reference")(x)
    got = cnncc.compile(g, threads=threads, cache=False)(x)
    assert relative_error(got, expect) <= RTOL


def test_an_inf_in_a_channel_not_gathered_stays_out():
    """A fused depthwise -> 1x1 conv reading a gather view reads whole blocks of its input:
    the lanes it does not gather hold other channels, here +inf (a bias of +inf), and must not
    turn its sums into NaN."""
    rng = np.random.default_rng(7)
    g = Graph("inf_lane")
    g.add_input("x", TensorType(F32, (1, 8, 6, 6)))
    bias = (rng.standard_normal(32) * 0.3).astype(np.float32)
    bias[25] = np.inf
    w = g.add_param("p.w", (rng.standard_normal((32, 8, 1, 1)) * 0.3).astype(np.float32))
    (p,) = g.add_node("Conv", ["x", w, g.add_param("p.b", bias)], name="p")
    sizes = g.add_param("sizes", np.array([20, 12], np.int64))
    a, b = g.add_node("Split", [p, sizes], {"axis": 1}, outputs=2, name="split")
    wd = g.add_param("dw.w", (rng.standard_normal((20, 1, 3, 3)) * 0.3).astype(np.float32))
    (d,) = g.add_node("Conv", [a, wd], {"pads": [1] * 4, "group": 20}, name="dw")
    wp = g.add_param("pw.w", (rng.standard_normal((16, 20, 1, 1)) * 0.3).astype(np.float32))
    (y,) = g.add_node("Conv", [d, wp], name="pw")
    (z,) = g.add_node("Relu", [b], name="other")
    g.outputs = [y, z]
    m = host_target(1)
    out = run_pipeline(g.verify(), PassContext(opt_level=3, machine=m))
    readers = {n.name: [u.op for u in out.users()[n.outputs[0]]] for n in out.nodes
               if n.op == "ChannelGather" and n.attrs.get("view")}
    assert readers == {"split_0": ["DwPwConvNCHWc"]}, readers
    xv = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    expect = cnncc.compile(g, target="reference")(xv)
    got = cnncc.compile(g, threads=1, cache=False)(xv)
    assert np.isfinite(expect[0]).all() and np.isfinite(got[0]).all()
    assert relative_error(got[0], expect[0]) <= RTOL
    assert np.isposinf(got[1][:, 5]).all() and np.isposinf(expect[1][:, 5]).all()


def test_a_malformed_view_is_refused_by_name():
    g = Graph("bad")
    g.add_input("y", TensorType(F32, (1, 20, 5, 5)))
    with pytest.raises(CompileError, match="nchw_view.*view=1 is for a blocked gather"):
        g.add_node("ChannelGather", ["y", "y"], {"sources": [0, 21], "view": 1},
                   name="nchw_view")
    with pytest.raises(CompileError, match="two.*view must be 0 or 1"):
        g.add_node("ChannelGather", ["y"], {"sources": [0, 1], "view": 2}, name="two")
