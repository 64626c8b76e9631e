"""The concat / split / shuffle / grouped-conv nets (cnncc/dsl/zoo_blocks.py) and what compiles
them fast: the exporter's op patterns, the ONNX exports against onnxruntime, no layout
transform inside DenseNet and ShuffleNet, copy-free concats, channel gathers, grouped and
dilated convs on the NCHWc kernels (AVX-512 blocks of 16 and AVX2 blocks of 8), each against
the reference interpreter (max |ours - ref| / max |ref| <= 1e-4).
"""
from __future__ import annotations

import collections
import functools
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import cnncc
from cnncc.backends.llvm import jit
from cnncc.dsl import zoo_blocks
from cnncc.ir import DType, Graph, TensorType
from cnncc.lower.program import lower_graph
from cnncc.passes import PassContext, run_pipeline
from cnncc.show import to_dot

RTOL = 1e-4
F32 = DType.float32
NETS = sorted(zoo_blocks.BLOCK_NETS)


def rel_err(got, expect) -> float:
    """The largest relative error over the outputs (one array, or a sequence of them)."""
    if isinstance(expect, (list, tuple)):
        assert len(got) == len(expect)
        return max(rel_err(a, b) for a, b in zip(got, expect))
    return float(np.abs(got - expect).max() / np.abs(expect).max())


@functools.lru_cache(maxsize=None)
def compiled_graph(name: str, size: int = 64) -> Graph:
    g = zoo_blocks.BLOCK_NETS[name](input_size=size).to_graph()
    return run_pipeline(g, PassContext(opt_level=3, machine=jit.host_target(1)))


def ops_of(graph) -> collections.Counter:
    return collections.Counter(n.op for n in graph.nodes)


# ---- the exporter's patterns ---------------------------------------------------------------------

def _chains(onnx_model, ops: tuple[str, ...]) -> int:
    """How many chains op_0 -> op_1 -> ... (each feeding the next) the model holds."""
    nodes = onnx_model.graph.node
    by_input = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            by_input[i].append(n)
    count = 0
    for n in nodes:
        cur, ok = n, n.op_type == ops[0]
        for op in ops[1:]:
            nxt = [u for u in by_input[cur.output[0]] if u.op_type == op] if ok else []
            ok = len(nxt) == 1
            cur = nxt[0] if ok else cur
        count += ok
    return count


def test_exports_write_pytorchs_patterns():
    def export(name):
        return zoo_blocks.BLOCK_NETS[name](input_size=32).to_onnx()

    d = export("densenet121")
    ops = collections.Counter(n.op_type for n in d.graph.node)
    assert ops["Concat"] == 58 and ops["Conv"] == 120 and ops["BatchNormalization"] == 121
    s = export("shufflenet_v2_x1_0")
    ops = collections.Counter(n.op_type for n in s.graph.node)
    assert ops["Split"] == 13 and ops["Concat"] == 16 and ops["ReduceMean"] == 1
    assert _chains(s, ("Concat", "Reshape", "Transpose", "Reshape")) == 16
    r = export("regnet_y_400mf")
    assert _chains(r, ("GlobalAveragePool", "Conv", "Relu", "Conv", "Sigmoid", "Mul")) == 16
    x = export("resnext50_32x4d")
    groups = [a.i for n in x.graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group" and a.i > 1]
    assert groups == [32] * 16
    assert collections.Counter(n.op_type for n in export("googlenet").graph.node)["Concat"] == 9
    assert collections.Counter(n.op_type for n in export("squeezenet1_1").graph.node)[
        "Concat"] == 8
    assert zoo_blocks.regnet_stages(16, 48, 27.89, 2.09, 8) == [
        (48, 1, 8), (104, 3, 8), (208, 6, 8), (440, 6, 8)]
    with pytest.raises(cnncc.CompileError, match="input_size"):
        zoo_blocks.densenet121(input_size=16)


@pytest.mark.parametrize("name", NETS)
def test_onnx_export_matches_onnxruntime(name):
    """Through to_onnx (tests/test_zoo.py compiles the nets directly, on every target, at the
    same 32 x 32 input: the kernels compiled there are reused from the kernel cache)."""
    net = zoo_blocks.BLOCK_NETS[name](input_size=32)
    data = net.to_onnx().SerializeToString()
    x = net.example_inputs(seed=3)[0]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    expect = sess.run(None, {net.input_names[0]: x})[0]
    got = cnncc.compile(data)(x)
    assert np.abs(expect).max() > 1e-3 and rel_err(got, expect) <= RTOL


# ---- what the passes make of them ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["densenet121", "shufflenet_v2_x1_0"])
def test_no_layout_transform_inside_the_net(name):
    """NCHWc from the stem (which reads the NCHW image itself) to the classifier: one
    FromNCHWc, after the last block; `cnncc show` draws the same graph."""
    g = compiled_graph(name)
    ops = ops_of(g)
    assert ops["ToNCHWc"] == 0 and ops["FromNCHWc"] == 1, ops
    i = [n.op for n in g.nodes].index("FromNCHWc")
    assert {n.op for n in g.nodes[i + 1:]} <= {"ReduceMean", "Reshape", "Gemm"}
    assert ops["Reshape"] <= 1 and ops["Transpose"] == 0 and ops["Split"] == 0
    dot = to_dot(g)
    assert "ToNCHWc" not in dot and dot.count("FromNCHWc") == 1


def test_shufflenet_shuffles_are_channel_gathers():
    """One gather per unit, each a view its readers read in place (inline_channel_gather):
    1x1 convs, and at the ends of stages 2 and 3 a fused depthwise -> 1x1 conv too."""
    g = compiled_graph("shufflenet_v2_x1_0")
    ops = ops_of(g)
    assert ops["Concat"] == 0 and ops["ChannelGather"] == 16
    users = g.users()
    readers = collections.Counter()
    for n in g.nodes:
        if n.op == "ChannelGather":
            assert n.attrs["block"] == jit.host_target(1).lanes and n.attrs["view"] == 1
            readers.update(u.op for u in users[n.outputs[0]])
    assert readers == {"ConvNCHWc": 16, "DwPwConvNCHWc": 2}


def test_grouped_convs_are_blocked():
    for name, groups in (("resnext50_32x4d", {32}), ("regnet_y_400mf", {6, 13, 26, 55})):
        g = compiled_graph(name)
        assert {n.attrs.get("group", 1) for n in g.nodes if n.op == "ConvNCHWc"} - {1} == groups
        assert ops_of(g)["FusedConv"] == 0 and ops_of(g)["ToNCHWc"] == 0


@pytest.mark.parametrize("name", ["densenet121", "googlenet", "squeezenet1_1"])
def test_concats_need_no_kernel(name):
    """Every concat's inputs are written in place: no Concat kernel, and each producer's
    output lies inside the concat's memory."""
    m = jit.host_target(1)
    g = compiled_graph(name)
    program = lower_graph(g, m)
    ops = {n.name: n.op for n in g.nodes}
    assert ops_of(g)["Concat"] > 0
    assert not [k.name for k, _ in program.ctx.kernels if ops.get(k.name) == "Concat"]


# ---- kernels on small graphs ---------------------------------------------------------------------

def _graph(build, shape=(1, 24, 9, 11), seed=0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("blocks")
    g.add_input("x", TensorType(F32, shape))

    def conv(x, oc, k=3, stride=1, group=1, dilation=1, act="Relu", name="c"):
        ic = g.types[x].shape[1]
        w = g.add_param(f"{name}.w", (rng.standard_normal((oc, ic // group, k, k)) * 0.3)
                        .astype(np.float32))
        b = g.add_param(f"{name}.b", (rng.standard_normal(oc) * 0.3).astype(np.float32))
        pad = dilation * (k // 2)
        (y,) = g.add_node("Conv", [x, w, b], {"pads": [pad] * 4, "strides": [stride] * 2,
                                              "group": group, "dilations": [dilation] * 2},
                          name=name)
        if act:
            (y,) = g.add_node(act, [y], name=f"{name}.act")
        return y

    out = build(g, conv)
    g.outputs = list(out) if isinstance(out, tuple) else [out]
    return g


def _check(g: Graph, *, features: str | None = None, **opts):
    """Compile ``g`` (in a child process with CNNCC_FEATURES for another ISA) and compare."""
    x = np.random.default_rng(5).standard_normal(g.types["x"].shape).astype(np.float32)
    expect = cnncc.compile(g, target="reference")(x)
    if features is None:
        got = cnncc.compile(g, cache=False, **opts)(x)
        assert rel_err(got, expect) <= RTOL
        return
    import pickle
    code = ("import pickle, sys, numpy as np, cnncc; g, x, o = pickle.load(sys.stdin.buffer); "
            "sys.stdout.buffer.write(pickle.dumps(cnncc.compile(g, cache=False, **o)(x)))")
    env = dict(os.environ, CNNCC_FEATURES=features)
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((g, x, opts)),
                         capture_output=True, env=env, check=True, timeout=600)
    assert rel_err(pickle.loads(out.stdout), expect) <= RTOL


def _grouped(g, conv):
    y = conv("x", 24, group=3, name="g8")                  # k = 8: 1.5 blocks of 16
    y = conv(y, 24, group=6, stride=2, name="g4")          # k = 4, stride 2
    z = conv(y, 32, k=1, name="pw")
    z = conv(z, 32, group=2, name="g16", act=None)          # k = 16: a block (AVX2: two)
    z = conv(z, 32, group=1, dilation=2, name="dil2")       # dilated, dense
    (s,) = g.add_node("Add", [z, conv(y, 32, k=1, act=None, name="proj")], name="res")
    return conv(s, 32, group=16, dilation=3, name="g2dil3")  # k = 2, dilated


AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"


@pytest.mark.parametrize("threads", [1, 2])
def test_grouped_and_dilated_convs_on_the_blocked_kernels(threads):
    g = _graph(_grouped)
    out = run_pipeline(g, PassContext(opt_level=3, machine=jit.host_target(threads)))
    convs = [n for n in out.nodes if n.op == "ConvNCHWc"]
    assert len(convs) == 7 and ops_of(out)["ToNCHWc"] == 1
    assert {n.attrs["group"] for n in convs} == {1, 2, 3, 6, 16}
    _check(g, threads=threads)


def test_grouped_and_dilated_convs_avx2():
    _check(_graph(_grouped), features=AVX2, threads=1)


def test_group_span_rule():
    from cnncc.ir.ops.layout import group_span
    assert group_span(128, 128, 32, 16) == 16            # k = 4: a block holds 4 groups
    assert group_span(1024, 1024, 32, 16) == 32          # k = 32: two blocks a group
    assert group_span(104, 104, 13, 16) == 16            # k = 8, channels padded
    assert group_span(24, 24, 2, 16) is None             # k = 12 does not tile 16
    assert group_span(24, 48, 2, 8) is None              # a channel multiplier: NCHW
    assert group_span(16, 16, 16, 16) is None            # depthwise: its own kernel
    assert group_span(16, 16, 1, 16) is None


def _shuffle_block(g, conv):
    y = conv("x", 24, k=1, name="a")                      # 24 channels: 1.5 blocks of 16
    a, b = g.add_node("Split", [y, g.add_param("sizes", np.array([12, 12], np.int64))],
                      {"axis": 1}, outputs=2, name="split")
    b = conv(b, 12, k=1, name="b")
    (c,) = g.add_node("Concat", [a, b], {"axis": 1}, name="cat")

    def shape(name, v):
        return g.add_param(name, np.array(v, np.int64))
    (r,) = g.add_node("Reshape", [c, shape("s1", [1, 2, 12, 9, 11])], name="r1")
    (t,) = g.add_node("Transpose", [r], {"perm": [0, 2, 1, 3, 4]}, name="tr")
    (s,) = g.add_node("Reshape", [t, shape("s2", [1, 24, 9, 11])], name="r2")
    p, q, u = g.add_node("Split", [s, g.add_param("sizes2", np.array([5, 12, 7], np.int64))],
                         {"axis": 1}, outputs=3, name="split2")
    (o,) = g.add_node("Concat", [conv(q, 8, k=3, name="d"), u, p], {"axis": 1}, name="cat2")
    return o


@pytest.mark.parametrize("opt,target", [(3, "llvm"), (1, "llvm"), (3, "cuda-emu")])
def test_channel_split_concat_and_shuffle(opt, target):
    g = _graph(_shuffle_block)
    out = run_pipeline(g, PassContext(opt_level=3, machine=jit.host_target(1)))
    ops = ops_of(out)
    assert ops["Transpose"] == ops["Split"] == ops["Reshape"] == 0
    # b, p, q, u, and the last concat (channels not a multiple of the block: a gather too)
    assert ops["ChannelGather"] == 5 and ops["ToNCHWc"] == ops["FromNCHWc"] == 1, ops
    if target == "cuda-emu":
        from cnncc.backends import BACKENDS
        why = BACKENDS["cuda-emu"].missing()
        if why:
            pytest.skip(why)
    x = np.random.default_rng(5).standard_normal(g.types["x"].shape).astype(np.float32)
    expect = cnncc.compile(g, target="reference")(x)
    got = cnncc.compile(g, target=target, opt_level=opt, cache=False)(x)
    assert rel_err(got, expect) <= RTOL


def _concats(g, conv):
    a = conv("x", 16, k=1, name="a")
    b = conv("x", 32, k=3, name="b")
    (c1,) = g.add_node("Concat", [a, b], {"axis": 1}, name="c1")      # in place
    (c2,) = g.add_node("Concat", [c1, a], {"axis": 1}, name="c2")     # a is placed already
    (c3,) = g.add_node("Concat", [b, b], {"axis": 1}, name="c3")      # twice: copied
    (s,) = g.add_node("Add", [conv(c2, 32, k=1, name="d"), conv(c3, 32, k=1, name="e")],
                      name="s")
    (c4,) = g.add_node("Concat", [s, conv(s, 16, name="f")], {"axis": 1}, name="c4")
    return c4                                                           # a graph output


@pytest.mark.parametrize("features", [None, AVX2])
def test_in_place_concats_and_the_copies_they_refuse(features):
    _check(_graph(_concats, shape=(1, 8, 7, 5)), features=features, threads=1)



def _fcn_head(g, conv):
    """Dilated conv, 1x1 classifier, upsampled three ways (FCN's head; two outputs)."""
    y = conv("x", 24, dilation=2, name="d2")
    y = conv(y, 21, k=1, act=None, name="cls")
    scales = g.add_param("scales", np.array([1, 1, 2.5, 3], np.float32))
    (a,) = g.add_node("Resize", [y, "", scales], {"mode": "linear"}, name="up_scales")
    sizes = g.add_param("sizes", np.array([1, 21, 17, 19], np.int64))
    (b,) = g.add_node("Resize", [y, "", "", sizes], {
        "mode": "linear", "coordinate_transformation_mode": "align_corners"}, name="up_sizes")
    (c,) = g.add_node("Resize", [y, "", scales], {"mode": "nearest"}, name="up_nearest")
    (s,) = g.add_node("Add", [conv(a, 21, k=1, name="after"), c], name="s")
    return s, b


@pytest.mark.parametrize("features", [None, AVX2])
def test_linear_resize_runs_blocked(features):
    g = _graph(_fcn_head)
    out = run_pipeline(g, PassContext(opt_level=3, machine=jit.host_target(1)))
    blocked = {n.name: out.types[n.inputs[0]].rank == 5 for n in out.nodes if n.op == "Resize"}
    # nearest stays NCHW: its index-map gather measured 14x faster there
    assert blocked == {"up_scales": True, "up_sizes": True, "up_nearest": False}
    _check(g, features=features, threads=2)


def _splits(g, conv):
    a = conv("x", 40, k=1, name="a")
    sizes = g.add_param("sizes", np.array([16, 16, 8], np.int64))
    p, q, r = g.add_node("Split", [a, sizes], {"axis": 1}, outputs=3, name="split")
    (s,) = g.add_node("Add", [conv(p, 16, k=1, name="p1"), conv(q, 16, name="q3")], name="s")
    (t,) = g.add_node("Concat", [s, conv(r, 8, k=1, name="r1")], {"axis": 1}, name="cat")
    return t


@pytest.mark.parametrize("features", [None, AVX2])
def test_split_slices_are_read_in_place(features):
    """Channels 0-15 and 16-31 of a blocked tensor are whole blocks (of 16, or of 8 with AVX2):
    the convs after the Split read them where they lie; channels 32-39 are half a block of 16
    with AVX-512 (a ChannelGather view: the 1x1 conv reading them reads the half block itself,
    inline_channel_gather), a whole block with AVX2: no gather copies."""
    g = _graph(_splits, shape=(1, 8, 7, 5))
    m = jit.host_target(1)
    out = run_pipeline(g, PassContext(opt_level=3, machine=m))
    # With 8-lane blocks channels 32-39 are a block of their own: no gather for them.
    assert ops_of(out)["ChannelGather"] == (4 if m.lanes == 16 else 3), ops_of(out)
    assert ops_of(out)["Split"] == 0
    kernels = {k.name for k, _ in lower_graph(out, m).ctx.kernels}
    gathers = {n.name for n in out.nodes if n.op == "ChannelGather" and n.name != "cat"}
    copied = {k for k in kernels if k.startswith(tuple(gathers))}
    assert not copied, kernels
    views = {n.name for n in out.nodes if n.op == "ChannelGather" and n.attrs.get("view")}
    assert views == ({"split_2"} if m.lanes == 16 else set())
    _check(g, features=features, threads=1)
