"""depthwise_separable and DwPwConvNCHWc: before/after IR (what fuses and what must not),
equivalence of the pass under the reference interpreter, and the fused kernel compiled for llvm
(threads 1 and 2) against the reference of the unfused graph (two ConvNCHWc references, so
independent of DwPwConvNCHWc's code), plus the rank-1 factoring of depthwise filters."""
from __future__ import annotations

import numpy as np
import pytest

import cnncc
from cnncc import host_target
from cnncc.ir import CompileError, DType, Graph, TensorType, run_graph
from cnncc.ir.ops.layout import blocked_shape, from_blocked
from cnncc.passes import PassContext
from cnncc.passes.depthwise_separable import depthwise_separable, rank1_factors
from cnncc.testing import assert_graphs_equivalent, random_inputs, relative_error

F32 = DType.float32
BLOCK = 16
RTOL = 1e-4
RELU6 = {"activation": "Clip", "activation_params": [0.0, 6.0]}


def rand(rng, *shape, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def dw_pw_graph(c: int = 24, oc: int = 40, hw=(9, 11), *, k: int = 3, stride: int = 1,
                pads=None, dilation: int = 1, dw_act=RELU6, pw_act=None, residual=False,
                pw_kernel: int = 1, pw_stride: int = 1, dw_used_twice: bool = False,
                dw_is_output: bool = False, dw_bias: bool = True, batch: int = 1,
                block: int = BLOCK, seed: int = 0) -> Graph:
    """x (NCHW) -> ToNCHWc -> depthwise ConvNCHWc -> pointwise ConvNCHWc [+ z] -> FromNCHWc,
    as alter_layout_nchwc leaves an inverted-residual block's tail."""
    rng = np.random.default_rng(seed)
    g = Graph("dwpw")
    g.add_input("x", TensorType(F32, (batch, c) + tuple(hw)))
    (xb,) = g.add_node("ToNCHWc", ["x"], {"block": block}, name="to")
    wd = g.add_param("wd", rand(rng, c, 1, k, k, scale=0.5))
    ins = [xb, wd] + ([g.add_param("bd", rand(rng, c))] if dw_bias else [])
    pads = [(k - 1) * dilation // 2] * 4 if pads is None else pads
    attrs = {"group": c, "strides": [stride] * 2, "dilations": [dilation] * 2,
             "block": block, **(dw_act or {})}
    attrs.update({"auto_pad": pads} if isinstance(pads, str) else {"pads": pads})
    (d,) = g.add_node("ConvNCHWc", ins, attrs, name="dw")
    wp = g.add_param("wp", rand(rng, oc, c, pw_kernel, pw_kernel, scale=c ** -0.5))
    bp = g.add_param("bp", rand(rng, oc))
    pins = [d, wp, bp]
    if residual:
        oh, ow = g.types[d].shape[2:4]
        oh, ow = (oh - pw_kernel) // pw_stride + 1, (ow - pw_kernel) // pw_stride + 1
        g.add_input("z", TensorType(F32, (batch, oc, oh, ow)))
        (zb,) = g.add_node("ToNCHWc", ["z"], {"block": block}, name="to_z")
        pins.append(zb)
    (p,) = g.add_node("ConvNCHWc", pins, {"block": block, "strides": [pw_stride] * 2,
                                          **(pw_act or {})}, name="pw")
    (y,) = g.add_node("FromNCHWc", [p], {"channels": oc}, name="from")
    g.outputs = [y]
    if dw_used_twice:
        (s,) = g.add_node("FromNCHWc", [d], {"channels": c}, name="from_dw")
        g.outputs.append(s)
    if dw_is_output:
        g.outputs.append(d)
    return g.verify()


def fused(g: Graph):
    (node,) = [n for n in g.nodes if n.op == "DwPwConvNCHWc"]
    return node


# ---- (a) fusion: before / after IR ---------------------------------------------------------

def test_dw_pw_becomes_one_op():
    before = dw_pw_graph(stride=2, pw_act={"activation": "Relu"})
    after = depthwise_separable(before, None).verify()
    assert ops(before) == ["ToNCHWc", "ConvNCHWc", "ConvNCHWc", "FromNCHWc"]
    assert ops(after) == ["ToNCHWc", "DwPwConvNCHWc", "FromNCHWc"]
    node = fused(after)
    assert node.inputs == ["to", "wd", "bd", "wp", "bp"]
    assert node.outputs == ["pw"] and node.name == "pw"
    assert node.attrs["dw_strides"] == [2, 2] and node.attrs["dw_pads"] == [1, 1, 1, 1]
    assert node.attrs["dw_activation"] == "Clip"
    assert node.attrs["dw_activation_params"] == [0.0, 6.0]
    assert node.attrs["pw_activation"] == "Relu"
    assert after.types["pw"] == before.types["pw"]
    assert "dw" not in after.types                        # the intermediate is gone
    assert ops(before) == ["ToNCHWc", "ConvNCHWc", "ConvNCHWc", "FromNCHWc"]  # not modified


def test_residual_is_the_last_input():
    after = depthwise_separable(dw_pw_graph(residual=True))
    assert ops(after) == ["ToNCHWc", "ToNCHWc", "DwPwConvNCHWc", "FromNCHWc"]
    assert fused(after).inputs == ["to", "wd", "bd", "wp", "bp", "to_z"]


def test_missing_dw_bias_stays_an_empty_input():
    node = fused(depthwise_separable(dw_pw_graph(dw_bias=False, residual=True)))
    assert node.inputs == ["to", "wd", "", "wp", "bp", "to_z"]


@pytest.mark.parametrize("case", [
    {"dw_used_twice": True},              # the depthwise output has another user
    {"dw_is_output": True},               # ... or is a graph output
    {"pw_stride": 2},                     # the 1x1 conv is strided
    {"pw_kernel": 3},                     # not a 1x1 conv
])
def test_not_fused(case):
    before = dw_pw_graph(**case)
    after = depthwise_separable(before)
    assert ops(after) == ops(before)


def test_dense_conv_then_pointwise_is_not_fused():
    rng = np.random.default_rng(0)
    g = Graph("dense")
    g.add_input("x", TensorType(F32, blocked_shape((1, 16, 7, 7), BLOCK)))
    w = g.add_param("w", rand(rng, 16, 16, 3, 3))
    (a,) = g.add_node("ConvNCHWc", ["x", w], {"pads": [1] * 4, "block": BLOCK})
    (b,) = g.add_node("ConvNCHWc", [a, g.add_param("w1", rand(rng, 8, 16, 1, 1))],
                      {"block": BLOCK})
    g.outputs = [b]
    assert ops(depthwise_separable(g.verify())) == ["ConvNCHWc", "ConvNCHWc"]


def test_two_blocks_fuse_independently():
    rng = np.random.default_rng(1)
    g = Graph("chain")
    g.add_input("x", TensorType(F32, blocked_shape((1, 32, 8, 8), BLOCK)))
    v = "x"
    for i, (c, oc) in enumerate([(32, 48), (48, 16)]):
        (d,) = g.add_node("ConvNCHWc", [v, g.add_param(f"wd{i}", rand(rng, c, 1, 3, 3))],
                          {"group": c, "pads": [1] * 4, "block": BLOCK, **RELU6})
        (v,) = g.add_node("ConvNCHWc", [d, g.add_param(f"wp{i}", rand(rng, oc, c, 1, 1))],
                          {"block": BLOCK})
    g.outputs = [v]
    after = depthwise_separable(g.verify()).verify()
    assert ops(after) == ["DwPwConvNCHWc", "DwPwConvNCHWc"]
    assert after.nodes[1].inputs[0] == after.nodes[0].outputs[0]
    assert_graphs_equivalent(g, after)


def test_op_inference_rejects_a_non_pointwise_weight():
    after = depthwise_separable(dw_pw_graph())
    after.params["wp"] = np.zeros((40, 24, 3, 3), np.float32)
    after.types["wp"] = TensorType(F32, (40, 24, 3, 3))
    with pytest.raises(CompileError, match="pointwise weight"):
        after.verify()


# ---- (a) fusion: equivalence under the reference interpreter -------------------------------

@pytest.mark.parametrize("kw", [
    {},
    {"stride": 2, "residual": True},
    {"c": 40, "oc": 24, "hw": (7, 5), "k": 5, "pw_act": {"activation": "HardSwish"}},
    {"c": 20, "oc": 33, "hw": (10, 9), "dilation": 2, "pads": [2, 1, 0, 2], "dw_act": None},
    {"c": 16, "oc": 8, "hw": (10, 7), "stride": 2, "pads": "SAME_LOWER"},
])
def test_fusion_is_equivalent(kw):
    before = dw_pw_graph(**kw)
    after = depthwise_separable(before).verify()
    assert "DwPwConvNCHWc" in ops(after)
    assert_graphs_equivalent(before, after, max_rel_error=1e-6)


# ---- (a) the fused kernel, compiled --------------------------------------------------------

def compiled_vs_reference(before: Graph, threads: int) -> float:
    """llvm on the fused graph vs the reference interpreter on the unfused one."""
    after = depthwise_separable(before).verify()
    assert "DwPwConvNCHWc" in ops(after)
    feeds = random_inputs(before, seed=3)
    ref = run_graph(before, feeds)[before.outputs[0]]
    model = cnncc.compile(after, target="llvm", threads=threads, opt_level=0, cache=False)
    got = model(*[feeds[n] for n in after.inputs])
    return relative_error(got, ref)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c,oc,hw,stride,residual", [
    (24, 40, (9, 11), 1, False),
    (24, 40, (9, 11), 2, True),
    (40, 24, (13, 7), 2, False),
    (144, 24, (15, 13), 1, True),
    (144, 160, (7, 7), 1, True),       # 10 output blocks: register tiles of 2
    (40, 128, (15, 17), 2, True),      # 8 output blocks: register tiles of 4
    (40, 16, (5, 3), 1, False),         # rows narrower than a tile, 1 output block
])
def test_fused_kernel_matches_reference(threads, c, oc, hw, stride, residual):
    g = dw_pw_graph(c, oc, hw, stride=stride, residual=residual,
                    pw_act={"activation": "Relu"} if residual else None)
    assert compiled_vs_reference(g, threads) < RTOL


@pytest.mark.parametrize("kw", [
    {"k": 5, "hw": (11, 9)},
    {"k": 3, "dilation": 2, "pads": [2, 0, 1, 2], "hw": (12, 17)},
    {"k": 3, "stride": 2, "pads": [0, 0, 0, 0], "hw": (9, 9)},     # no padding at all
    {"k": 5, "stride": 2, "pads": "SAME_UPPER", "hw": (10, 9)},
    {"dw_act": {"activation": "HardSigmoid", "activation_params": [0.3, 0.4]},
     "pw_act": {"activation": "LeakyRelu", "activation_params": [0.1]}, "residual": True},
    {"batch": 2, "residual": True, "stride": 2, "hw": (11, 13)},
    {"block": 8, "c": 20, "oc": 36, "residual": True},       # blocks narrower than a vector
])
def test_fused_kernel_windows_and_activations(kw):
    assert compiled_vs_reference(dw_pw_graph(**kw), threads=2) < RTOL


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kernel_rows_in_chunks(monkeypatch, threads):
    """Rows whose depthwise tile exceeds TILE_BYTES are split over several tasks (chunks of
    sub-tiles; the last chunk shorter, with the row's tail)."""
    from cnncc.lower import conv_dwpw
    monkeypatch.setattr(conv_dwpw, "TILE_BYTES", 4 * 8 * 48 * 2)    # 2 sub-tiles of 8 pixels
    g = dw_pw_graph(40, 24, (9, 27), stride=1, residual=True)       # 27 = 3 sub-tiles + 3
    assert conv_dwpw.cost_model_tile(27, 2, 40, 16, 16, 32).r == 8     # AVX-512: 32 regs
    assert compiled_vs_reference(g, threads) < RTOL


def test_fused_kernel_ignores_input_padding_lanes():
    """Padding lanes of a blocked input are unspecified (finite): they must not leak."""
    rng = np.random.default_rng(5)
    c, oc = 24, 40
    g = Graph("lanes")
    g.add_input("xb", TensorType(F32, blocked_shape((1, c, 9, 9), BLOCK)))
    (d,) = g.add_node("ConvNCHWc", ["xb", g.add_param("wd", rand(rng, c, 1, 3, 3))],
                      {"group": c, "pads": [1] * 4, "block": BLOCK, **RELU6})
    (p,) = g.add_node("ConvNCHWc", [d, g.add_param("wp", rand(rng, oc, c, 1, 1))],
                      {"block": BLOCK})
    g.outputs = [p]
    after = depthwise_separable(g.verify())
    x = rand(rng, *g.types["xb"].shape)
    x[:, -1, ..., c % BLOCK:] = 1e6                       # garbage in the padding lanes
    ref = from_blocked(run_graph(g, {"xb": x})[p], oc)
    model = cnncc.compile(after, target="llvm", threads=1, opt_level=0, cache=False)
    assert relative_error(from_blocked(model(x), oc), ref) < RTOL


# ---- (b) rank-1 factoring ------------------------------------------------------------------

def rank1_weight(rng, c: int, kh: int, kw: int) -> np.ndarray:
    u, v = rand(rng, c, kh), rand(rng, c, kw)
    return np.einsum("ci,cj->cij", u, v)[:, None].astype(np.float32)


def dw_graph(op: str, w: np.ndarray, *, hw=(11, 10), pads=(1, 2, 2, 1), strides=(2, 1),
             residual: bool = False, act=RELU6, dilation: int = 1, seed: int = 0) -> Graph:
    """x -> a depthwise ``op`` (Conv, FusedConv or ConvNCHWc) with weight ``w`` -> output."""
    rng = np.random.default_rng(seed)
    c = w.shape[0]
    g = Graph("dw")
    g.add_input("x", TensorType(F32, (1, c) + tuple(hw)))
    x = "x"
    if op == "ConvNCHWc":
        (x,) = g.add_node("ToNCHWc", ["x"], {"block": BLOCK}, name="to")
    attrs = {"group": c, "pads": list(pads), "strides": list(strides),
             "dilations": [dilation] * 2}
    if op != "Conv":
        attrs.update(act)
    if op == "ConvNCHWc":
        attrs["block"] = BLOCK
    ins = [x, g.add_param("w", w), g.add_param("b", rand(rng, c))]
    if residual:
        k = w.shape[2:]
        out = tuple((hw[i] + pads[i] + pads[2 + i] - k[i]) // strides[i] + 1 for i in (0, 1))
        shape = (1, c) + out
        g.add_input("z", TensorType(F32, shape))
        (z,) = g.add_node("ToNCHWc", ["z"], {"block": BLOCK}, name="to_z") \
            if op == "ConvNCHWc" else ["z"]
        ins.append(z)
    (y,) = g.add_node(op, ins, attrs, name="conv")
    if op == "ConvNCHWc":
        (y,) = g.add_node("FromNCHWc", [y], {"channels": c}, name="from")
    g.outputs = [y]
    return g.verify()


def test_rank1_factors_reconstruct_the_filters():
    w = rank1_weight(np.random.default_rng(0), 6, 3, 5)
    u, v = rank1_factors(w)
    np.testing.assert_allclose(np.einsum("ci,cj->cij", u, v), w[:, 0], rtol=1e-5, atol=1e-6)
    w2 = w.copy()
    w2[3, 0, 1, 1] += 0.1                                 # one channel becomes rank 2
    assert rank1_factors(w2) is None


@pytest.mark.parametrize("op", ["Conv", "FusedConv", "ConvNCHWc"])
def test_rank1_depthwise_is_factored(op):
    w = rank1_weight(np.random.default_rng(1), 20, 5, 5)
    before = dw_graph(op, w, residual=op != "Conv")
    after = depthwise_separable(before).verify()
    convs = [n for n in after.nodes if n.op in ("Conv", "FusedConv", "ConvNCHWc")]
    assert len(convs) == 2
    first, second = convs
    assert after.types[first.inputs[1]].shape == (20, 1, 5, 1)
    assert after.types[second.inputs[1]].shape == (20, 1, 1, 5)
    assert first.attrs["pads"] == [1, 0, 2, 0] and first.attrs["strides"] == [2, 1]
    assert second.attrs["pads"] == [0, 2, 0, 1] and second.attrs["strides"] == [1, 1]
    assert "activation" not in first.attrs and len(first.inputs) == 2
    assert second.inputs[2:] == list(before.nodes[-1 - (op == "ConvNCHWc")].inputs[2:])
    assert second.op == op and second.outputs == ["conv"]
    assert_graphs_equivalent(before, after, max_rel_error=1e-5)


@pytest.mark.parametrize("case", ["full_rank", "dilated", "small_kernel"])
def test_rank1_not_factored(case):
    rng = np.random.default_rng(2)
    if case == "full_rank":
        before = dw_graph("FusedConv", rand(rng, 8, 1, 3, 3))
    elif case == "dilated":
        before = dw_graph("FusedConv", rank1_weight(rng, 8, 3, 3), dilation=2, hw=(12, 12))
    else:
        before = dw_graph("FusedConv", rank1_weight(rng, 8, 2, 3), pads=(0, 0, 0, 0))
    assert ops(depthwise_separable(before)) == ops(before)


def test_fusion_wins_over_factoring():
    g = dw_pw_graph(k=3)
    g.params["wd"] = rank1_weight(np.random.default_rng(3), 24, 3, 3)
    after = depthwise_separable(g.verify())
    assert ops(after) == ["ToNCHWc", "DwPwConvNCHWc", "FromNCHWc"]


@pytest.mark.parametrize("op", ["Conv", "FusedConv", "ConvNCHWc"])
def test_factored_graph_compiled(op):
    """The factored convs through the llvm kernels vs the reference of the KxK conv."""
    w = rank1_weight(np.random.default_rng(4), 24, 7, 7)
    before = dw_graph(op, w, hw=(15, 13), pads=(3, 3, 3, 3), strides=(1, 2),
                      residual=op != "Conv")
    after = depthwise_separable(before).verify()
    assert len(after.nodes) == len(before.nodes) + 1
    feeds = random_inputs(before, seed=1)
    ref = run_graph(before, feeds)[before.outputs[0]]
    model = cnncc.compile(after, target="llvm", threads=1, opt_level=0, cache=False)
    assert relative_error(model(*[feeds[n] for n in after.inputs]), ref) < RTOL


# ---- (b') opt-in approximate rank-1 factoring ----------------------------------------------

def test_approximate_factoring_is_opt_in_and_within_its_bound(monkeypatch, capsys):
    rng = np.random.default_rng(6)
    w = rank1_weight(rng, 16, 5, 5)
    w += rand(rng, *w.shape, scale=2e-3)                  # close to, but not, rank 1
    before = dw_graph("FusedConv", w, hw=(13, 12), pads=(2, 2, 2, 2), strides=(1, 1),
                      act={})
    assert ops(depthwise_separable(before)) == ["FusedConv"]
    assert ops(depthwise_separable(before, PassContext())) == ["FusedConv"]
    after = depthwise_separable(before, PassContext(lowrank_tol=0.01)).verify()
    assert ops(after) == ["Conv", "FusedConv"]
    msg = capsys.readouterr().err
    assert "conv: 5x5 depthwise filters replaced by rank-1 approximations" in msg
    factor = float(msg.split("at most ")[1].split(" x")[0])
    feeds = random_inputs(before, seed=2)
    err = np.abs(run_graph(after, feeds)["conv"] - run_graph(before, feeds)["conv"]).max()
    # ||window||_2 <= sqrt(25) * max|x| (zero padding only lowers it).
    bound = factor * 5 * np.abs(feeds["x"]).max()
    assert 0 < err <= bound * 1.01 + 1e-5
    # too strict for this filter set
    assert ops(depthwise_separable(before, PassContext(lowrank_tol=1e-5))) == ["FusedConv"]
    with pytest.raises(CompileError, match="dw_lowrank_tol"):
        depthwise_separable(before, PassContext(lowrank_tol="two"))
    # Through cnncc.compile: an option of the compile (and of its cache key).
    exact = cnncc.compile(before, target="llvm", threads=1, cache=False)
    approx = cnncc.compile(before, target="llvm", threads=1, dw_lowrank_tol=0.01, cache=False)
    x = feeds["x"]
    assert relative_error(exact(x), run_graph(before, feeds)["conv"]) <= 1e-4
    assert np.abs(approx(x) - run_graph(before, feeds)["conv"]).max() <= bound * 1.01 + 1e-5


# ---- a whole network -----------------------------------------------------------------------

def test_tiny_mobilenet_blocks_fuse_and_match_reference():
    """Every inverted-residual block's depthwise -> project pair fuses after the pipeline and
    alter_layout_nchwc; the compiled net matches the reference of the imported graph."""
    from cnncc.dsl import zoo
    from cnncc.passes import PASS_NAMES, run_pipeline

    graph = zoo.tiny_mobilenet().to_graph().verify()
    assert PASS_NAMES.index("depthwise_separable") > PASS_NAMES.index("alter_layout_nchwc")
    layout = run_pipeline(graph, PassContext(skip=frozenset({"depthwise_separable"}),
                                              machine=host_target()))
    depthwise = [n for n in layout.nodes if n.op == "ConvNCHWc" and n.attrs.get("group", 1) > 1]
    opt = run_pipeline(graph, PassContext(machine=host_target()))
    assert depthwise and ops(opt).count("DwPwConvNCHWc") == len(depthwise)
    feeds = random_inputs(graph, seed=4)
    ref = run_graph(graph, feeds)[graph.outputs[0]]
    model = cnncc.compile(opt, target="llvm", threads=2, opt_level=0, cache=False)
    assert relative_error(model(*[feeds[n] for n in graph.inputs]), ref) < RTOL
