"""fuse_epilogue and FusedConv: before/after IR, inference errors, equivalence of the pass with
the reference interpreter, and compiled FusedConv kernels (llvm, cuda-emu) against the unfused
reference graph (Conv, Add and activation references: independent of FusedConv's code)."""
from __future__ import annotations

import numpy as np
import pytest

import cnncc
from cnncc.dsl import zoo
from cnncc.ir import CompileError, DType, Graph, Node, TensorType, run_graph
from cnncc.ir.ops import infer_node
from cnncc.passes import PASS_NAMES, PassContext, run_pipeline
from cnncc.passes.fuse_epilogue import fuse_epilogue
from cnncc.receptive_field import receptive_fields
from cnncc.testing import assert_graphs_equivalent, random_inputs, relative_error

F32 = DType.float32
TARGETS = ["llvm", "cuda-emu"]
RTOL = 1e-4
FUSED = PassContext(opt_level=1)      # the fusions without the NCHWc layout of opt 2 and 3


def rand(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def conv_graph(tail: str = "add_relu", *, xs=(1, 8, 9, 9), ws=(12, 8, 3, 3), attrs=None,
               z_first: bool = False, z_shape=None, bias: bool = True, act_attrs=None,
               clip=(0.0, 6.0), conv_output_used: bool = False,
               conv_is_output: bool = False, seed: int = 0) -> Graph:
    """x -> Conv -> [Add(z)] -> [activation]; ``tail`` is "add", "relu" / any activation op,
    or "add_<activation>"; Clip takes constant bounds ``clip`` ("input" bounds: graph inputs)."""
    rng = np.random.default_rng(seed)
    attrs = {"pads": [1] * (2 * (len(xs) - 2))} if attrs is None else attrs
    g = Graph("fuse")
    g.add_input("x", TensorType(F32, xs))
    w = g.add_param("w", rand(rng, *ws) * 0.3)
    ins = ["x", w] + ([g.add_param("b", rand(rng, ws[0]))] if bias else [])
    (c,) = g.add_node("Conv", ins, attrs, name="conv")
    y = c
    parts = tail.split("_")
    if parts[0] == "add":
        zs = g.types[c].shape if z_shape is None else z_shape
        g.add_input("z", TensorType(F32, zs))
        (y,) = g.add_node("Add", ["z", c] if z_first else [c, "z"], name="add")
        parts = parts[1:]
    if parts:
        op = {"relu": "Relu", "clip": "Clip"}.get(parts[0], parts[0])
        extra = []
        if op == "Clip":
            if clip == "input":
                for n in ("lo", "hi"):
                    g.add_input(n, TensorType(F32, ()))
                extra = ["lo", "hi"]
            else:
                extra = [g.add_param("lo", np.array(clip[0], np.float32)),
                         g.add_param("hi", np.array(clip[1], np.float32))]
        (y,) = g.add_node(op, [y] + extra, act_attrs or {}, name="act")
    g.outputs = [y]
    if conv_output_used:
        (s,) = g.add_node("Sigmoid", [c], name="other")
        g.outputs.append(s)
    if conv_is_output:
        g.outputs.append(c)
    return g.verify()


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def fused_node(g: Graph):
    (node,) = [n for n in g.nodes if n.op == "FusedConv"]
    return node


# ---- before / after IR ---------------------------------------------------------------------------

def test_conv_relu_becomes_fused_conv():
    before = conv_graph("relu")
    after = fuse_epilogue(before)
    assert ops(before) == ["Conv", "Relu"]
    text = str(after)
    assert "FusedConv(%x, %w, %b) {activation='Relu', activation_params=[], pads=[1,1,1,1]}" \
        in text, text
    assert ops(after) == ["FusedConv"] and after.outputs == before.outputs
    assert_graphs_equivalent(before, after)


@pytest.mark.parametrize("z_first", [False, True])
def test_conv_add_relu_both_operand_orders(z_first):
    before = conv_graph("add_relu", z_first=z_first)
    after = fuse_epilogue(before)
    assert ops(before) == ["Conv", "Add", "Relu"]
    assert ops(after) == ["FusedConv"]
    node = fused_node(after)
    assert node.inputs == ["x", "w", "b", "z"]
    assert node.attrs["activation"] == "Relu" and node.outputs == before.outputs
    assert_graphs_equivalent(before, after)


def test_conv_add_without_activation():
    before = conv_graph("add", bias=False)
    after = fuse_epilogue(before)
    node = fused_node(after)
    assert ops(after) == ["FusedConv"] and node.inputs == ["x", "w", "", "z"]
    assert "activation" not in node.attrs
    assert_graphs_equivalent(before, after)


def test_conv_clip_0_6():
    before = conv_graph("clip", clip=(0.0, 6.0))
    after = fuse_epilogue(before)
    node = fused_node(after)
    assert ops(after) == ["FusedConv"]
    assert node.attrs["activation"] == "Clip" and node.attrs["activation_params"] == [0.0, 6.0]
    assert "lo" not in after.params and "hi" not in after.params     # bounds became attributes
    assert_graphs_equivalent(before, after)


def test_conv_hardswish_and_parameterized_activations():
    after = fuse_epilogue(conv_graph("add_HardSwish"))
    assert ops(after) == ["FusedConv"] and fused_node(after).attrs["activation"] == "HardSwish"
    before = conv_graph("add_LeakyRelu", act_attrs={"alpha": 0.25})
    after = fuse_epilogue(before)
    assert fused_node(after).attrs["activation_params"] == [0.25]
    assert_graphs_equivalent(before, after)
    before = conv_graph("HardSigmoid", act_attrs={"alpha": 0.3})
    after = fuse_epilogue(before)
    assert fused_node(after).attrs["activation_params"] == pytest.approx([0.3, 0.5])
    assert_graphs_equivalent(before, after)


def test_not_fused_when_conv_output_has_another_user():
    before = conv_graph("add_relu", conv_output_used=True)
    after = fuse_epilogue(before)
    assert ops(after) == ["Conv", "Add", "Relu", "Sigmoid"]


def test_not_fused_when_conv_output_is_a_graph_output():
    before = conv_graph("add_relu", conv_is_output=True)
    assert ops(fuse_epilogue(before)) == ["Conv", "Add", "Relu"]


def test_add_is_an_output_then_only_conv_add_fuses():
    g = conv_graph("add_relu")
    g.outputs.append(g.nodes[1].outputs[0])      # the Add's output is read by the caller too
    after = fuse_epilogue(g)
    assert ops(after) == ["FusedConv", "Relu"]
    assert_graphs_equivalent(g, after)


def test_not_fused_when_z_broadcasts():
    before = conv_graph("add_relu", z_shape=(1, 12, 1, 1))
    after = fuse_epilogue(before)
    # The Add stays; the activation cannot reach the conv through it.
    assert ops(after) == ["Conv", "Add", "Relu"]


def test_not_fused_when_clip_bounds_are_not_constants():
    before = conv_graph("clip", clip="input")
    assert ops(fuse_epilogue(before)) == ["Conv", "Clip"]
    before = conv_graph("add_clip", clip="input")
    assert ops(fuse_epilogue(before)) == ["FusedConv", "Clip"]


def test_gelu_both_forms_fused_not_non_float32():
    tanh = fuse_epilogue(conv_graph("Gelu", act_attrs={"approximate": "tanh"}))
    assert ops(tanh) == ["FusedConv"] and tanh.nodes[0].attrs["activation"] == "GeluTanh"
    erf = fuse_epilogue(conv_graph("Gelu"))
    assert ops(erf) == ["FusedConv"] and erf.nodes[0].attrs["activation"] == "Gelu"
    g = Graph("f64")
    g.add_input("x", TensorType(DType.float64, (1, 2, 5, 5)))
    w = g.add_param("w", np.ones((2, 2, 1, 1)))
    (c,) = g.add_node("Conv", ["x", w])
    (y,) = g.add_node("Relu", [c])
    g.outputs = [y]
    assert ops(fuse_epilogue(g)) == ["Conv", "Relu"]


def test_residual_computed_by_the_graph_stays_before_the_fused_node():
    """z produced between the conv and the Add: the fused node sits where the Add was."""
    rng = np.random.default_rng(1)
    g = Graph("order")
    g.add_input("x", TensorType(F32, (1, 4, 6, 6)))
    (c,) = g.add_node("Conv", ["x", g.add_param("w", rand(rng, 4, 4, 1, 1))], name="conv")
    (z,) = g.add_node("Sigmoid", ["x"], name="z")
    (a,) = g.add_node("Add", [c, z], name="add")
    (y,) = g.add_node("Relu", [a], name="relu")
    g.outputs = [y]
    after = fuse_epilogue(g).verify()
    assert ops(after) == ["Sigmoid", "FusedConv"]
    assert_graphs_equivalent(g, after)


def test_pipeline_position_and_opt_level_0():
    assert PASS_NAMES.index("fuse_epilogue") > PASS_NAMES.index("fold_batch_norm")
    g = conv_graph("add_relu")
    assert ops(run_pipeline(g, FUSED)) == ["FusedConv"]
    assert run_pipeline(g, PassContext(opt_level=0)) is g
    skipped = run_pipeline(g, PassContext(opt_level=1, skip=frozenset({"fuse_epilogue"})))
    assert ops(skipped) == ["Conv", "Add", "Relu"]


# ---- FusedConv inference -------------------------------------------------------------------------

def _fused(attrs: dict, z_shape=(1, 4, 5, 5)):
    g = Graph("bad")
    g.add_input("x", TensorType(F32, (1, 2, 5, 5)))
    g.add_input("z", TensorType(F32, z_shape))
    w = g.add_param("w", np.ones((4, 2, 3, 3), np.float32))
    return g.add_node("FusedConv", ["x", w, "", "z"], {"pads": [1, 1, 1, 1], **attrs},
                      name="fc")


@pytest.mark.parametrize("attrs, z_shape, message", [
    ({"activation": "Selu"}, (1, 4, 5, 5), "unknown activation 'Selu'"),
    ({"activation": "Clip", "activation_params": [0.0]}, (1, 4, 5, 5),
     "takes 2 activation_params"),
    ({"activation": "Relu", "activation_params": [1.0]}, (1, 4, 5, 5),
     "takes 0 activation_params"),
    ({"activation_params": [1.0]}, (1, 4, 5, 5), "without an activation"),
    ({}, (1, 4, 1, 1), "no broadcasting"),
    ({"strides": [0, 1]}, (1, 4, 5, 5), "stride"),
])
def test_fused_conv_inference_errors(attrs, z_shape, message):
    with pytest.raises(CompileError, match=message):
        _fused(attrs, z_shape)


def test_fused_conv_reference_matches_numpy_formula():
    rng = np.random.default_rng(2)
    g = Graph("ref")
    g.add_input("x", TensorType(F32, (1, 2, 4, 4)))
    g.add_input("z", TensorType(F32, (1, 3, 4, 4)))
    w = g.add_param("w", rand(rng, 3, 2, 1, 1))
    b = g.add_param("b", rand(rng, 3))
    (y,) = g.add_node("FusedConv", ["x", w, b, "z"],
                      {"activation": "Clip", "activation_params": [-0.5, 0.5]})
    g.outputs = [y]
    feeds = random_inputs(g)
    x, z = feeds["x"].astype(np.float64), feeds["z"].astype(np.float64)
    conv = np.einsum("oc,nchw->nohw", g.params[w][:, :, 0, 0], x) + \
        g.params[b].reshape(1, 3, 1, 1)
    want = np.clip(conv + z, -0.5, 0.5)
    assert relative_error(run_graph(g, feeds)[y], want) < 1e-6


# ---- compiled ------------------------------------------------------------------------------------

CONV_KINDS = {
    # name: (input shape, weight shape, attrs)
    "general3x3": ((1, 8, 9, 11), (12, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    "pointwise": ((2, 16, 6, 6), (20, 16, 1, 1), {}),
    "depthwise": ((1, 8, 10, 13), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8}),
    "strided": ((1, 6, 11, 11), (10, 6, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "depthwise_strided": ((1, 4, 12, 12), (4, 1, 3, 3),
                          {"pads": [1, 0, 1, 0], "strides": [2, 2], "group": 4}),
    "grouped": ((1, 8, 7, 7), (12, 4, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}),
    "conv1d": ((2, 5, 17), (7, 5, 3), {"pads": [1, 1]}),
    # Few output tiles, long reduction: the cuda schedule splits it (the epilogue runs in the
    # second launch that adds the parts).
    "deep_split": ((1, 64, 4, 4), (16, 64, 3, 3), {"pads": [1, 1, 1, 1]}),
}


def compiled_matches(g: Graph, target: str, seed: int = 0):
    model = cnncc.compile(g, target=target)
    feeds = random_inputs(g, seed)
    ref = run_graph(g, feeds)
    got = model.run(feeds)
    for name in g.outputs:
        err = relative_error(got[name], ref[name])
        assert err <= RTOL, f"{target}: output {name}: relative error {err:.3g}"
    return model


def kernel_names(model) -> list[str]:
    return [k if isinstance(k, str) else k.name for k in model.kernels]


def kernels_of(names: list[str], node: str) -> list[str]:
    """The kernels named after node ``node`` (cuda prefixes kernel names with the model's)."""
    return [k for k in names if k == node or k.endswith("_" + node)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", list(CONV_KINDS))
@pytest.mark.parametrize("tail", ["add_relu", "add", "clip"])
def test_compiled_fused_conv_kinds(kind, tail, target):
    xs, ws, attrs = CONV_KINDS[kind]
    g = conv_graph(tail, xs=xs, ws=ws, attrs=attrs, z_first=True)
    assert ops(run_pipeline(g, FUSED)) == ["FusedConv"]
    model = compiled_matches(g, target)
    names = kernel_names(model)
    assert not kernels_of(names, "add") + kernels_of(names, "act"), names
    unfused = kernel_names(cnncc.compile(g, target=target, opt_level=0))
    assert kernels_of(unfused, "add" if "add" in tail else "act"), unfused


ACTS = [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("HardSigmoid", {"alpha": 0.3}),
        ("HardSwish", {}), ("Sigmoid", {}), ("Tanh", {}), ("Swish", {"alpha": 1.5}),
        ("Gelu", {}), ("Elu", {"alpha": 0.7}), ("Softplus", {}), ("Mish", {})]


@pytest.mark.parametrize("act, act_attrs", ACTS, ids=[a for a, _ in ACTS])
def test_compiled_every_activation_llvm(act, act_attrs):
    g = conv_graph(f"add_{act}", act_attrs=act_attrs)
    assert ops(run_pipeline(g, FUSED)) == ["FusedConv"]
    compiled_matches(g, "llvm")


@pytest.mark.parametrize("target", TARGETS)
def test_compiled_gelu_tanh(target):
    """Gelu's tanh form as the epilogue activation GeluTanh, on both code generators."""
    g = conv_graph("add_Gelu", act_attrs={"approximate": "tanh"})
    fused = run_pipeline(g, FUSED)
    assert [n.attrs.get("activation") for n in fused.nodes] == ["GeluTanh"]
    compiled_matches(g, target)


@pytest.mark.parametrize("target", TARGETS)
def test_compiled_runtime_weight_conv_with_residual(target):
    """A conv whose weight is a graph input takes the direct loop nest; the residual too."""
    rng = np.random.default_rng(3)
    g = Graph("runtime_w")
    g.add_input("x", TensorType(F32, (1, 3, 6, 6)))
    g.add_input("w", TensorType(F32, (5, 3, 3, 3)))
    g.add_input("z", TensorType(F32, (1, 5, 6, 6)))
    (c,) = g.add_node("Conv", ["x", "w", g.add_param("b", rand(rng, 5))],
                      {"pads": [1, 1, 1, 1]})
    (a,) = g.add_node("Add", [c, "z"])
    (y,) = g.add_node("Clip", [a, g.add_param("lo", np.array(0.0, np.float32))])
    g.outputs = [y]
    assert ops(run_pipeline(g, FUSED)) == ["FusedConv"]
    compiled_matches(g, target)


@pytest.mark.parametrize("target", TARGETS)
def test_tiny_resnet_has_no_separate_add_or_relu_kernels(target):
    net = zoo.tiny_resnet()
    g = net.to_graph()
    optimized = run_pipeline(g, FUSED)
    assert "Add" not in ops(optimized)
    convs = [n for n in optimized.nodes if n.op == "FusedConv"]
    residuals = {n.inputs[3] for n in convs if len(n.inputs) > 3}
    # The only plain convs left are downsampling shortcuts: the residual of another conv.
    plain = [n for n in optimized.nodes if n.op == "Conv"]
    assert convs and all(n.outputs[0] in residuals for n in plain), plain
    assert sum(len(n.inputs) > 3 and bool(n.inputs[3]) for n in convs) == 3    # 3 blocks
    # Relus remain only where no conv precedes them (none in this net).
    assert "Relu" not in ops(optimized)
    model = compiled_matches(g, target)
    names = kernel_names(model)
    assert not [k for k in names if k.endswith(("_add", "_relu"))], names
    assert [k for k in names if k.endswith("_conv")]
    unfused = cnncc.compile(g, target=target, opt_level=0)
    assert len(kernel_names(unfused)) > len(names)


# ---- ConvTranspose and Gemm anchors: FusedConvTranspose, FusedGemm ------------------------------

def anchors_graph(gemm_act: str = "Clip", gemm_act_attrs=None) -> Graph:
    """x -> ConvTranspose -> LeakyRelu -> Flatten -> Gemm -> gemm_act -> Gemm (no activation)."""
    rng = np.random.default_rng(4)
    g = Graph("anchors")
    g.add_input("x", TensorType(F32, (1, 4, 5, 5)))
    (t,) = g.add_node("ConvTranspose", ["x", g.add_param("wt", rand(rng, 4, 3, 2, 2)),
                                        g.add_param("bt", rand(rng, 3))], {"strides": [2, 2]},
                      name="up")
    (a,) = g.add_node("LeakyRelu", [t], {"alpha": 0.2}, name="up_act")
    (f,) = g.add_node("Flatten", [a])
    (m,) = g.add_node("Gemm", [f, g.add_param("w1", rand(rng, 16, 300) * 0.1),
                               g.add_param("b1", rand(rng, 16))], {"transB": 1}, name="fc1")
    extra = [g.add_param("lo", np.array(-0.5, np.float32)),
             g.add_param("hi", np.array(1.0, np.float32))] if gemm_act == "Clip" else []
    (r,) = g.add_node(gemm_act, [m] + extra, gemm_act_attrs or {}, name="fc1_act")
    (y,) = g.add_node("Gemm", [r, g.add_param("w2", rand(rng, 16, 6))], name="fc2")
    g.outputs = [y]
    return g


def test_conv_transpose_and_gemm_take_their_activation():
    g = anchors_graph()
    after = fuse_epilogue(g).verify()
    assert ops(after) == ["FusedConvTranspose", "Flatten", "FusedGemm", "Gemm"]
    up, fc1 = after.nodes[0], after.nodes[2]
    assert (up.name, up.attrs["activation"], up.attrs["activation_params"]) == \
        ("up", "LeakyRelu", [pytest.approx(0.2)])
    assert (fc1.attrs["activation"], fc1.attrs["activation_params"]) == ("Clip", [-0.5, 1.0])
    assert fc1.attrs["transB"] == 1 and set(fc1.origin) == {"fc1", "fc1_act"}
    assert_graphs_equivalent(g, after)
    assert ops(run_pipeline(g, PassContext(opt_level=0))) == [n.op for n in g.nodes]
    # The fused anchors see what their anchors see; their attributes are checked as FusedConv's.
    fields, unfused = receptive_fields(after), receptive_fields(g)
    assert fields[up.outputs[0]] == unfused[up.outputs[0]] != unfused["x"]
    assert fields[fc1.outputs[0]] == unfused[fc1.outputs[0]] != fields["x"]
    bad = Node("FusedGemm", fc1.inputs, fc1.outputs, {**fc1.attrs, "activation": "Selu"}, "b")
    with pytest.raises(CompileError, match="unknown activation 'Selu'"):
        infer_node(bad, after.types, after.params)
    # Gelu's tanh form is the activation GeluTanh (ACTIVATION_FORMS), for a Gemm as for a Conv.
    tanh_g = anchors_graph("Gelu", {"approximate": "tanh"})
    tanh = fuse_epilogue(tanh_g).verify()
    assert ops(tanh) == ["FusedConvTranspose", "Flatten", "FusedGemm", "Gemm"]
    assert tanh.nodes[2].attrs["activation"] == "GeluTanh"
    assert_graphs_equivalent(tanh_g, tanh)


@pytest.mark.parametrize("target", TARGETS)
def test_compiled_conv_transpose_and_gemm_epilogues(target):
    g = anchors_graph("Sigmoid")
    names = kernel_names(compiled_matches(g, target))
    assert not kernels_of(names, "up_act") + kernels_of(names, "fc1_act"), names
    unfused = kernel_names(cnncc.compile(g, target=target, opt_level=0))
    assert kernels_of(unfused, "up_act") and kernels_of(unfused, "fc1_act"), unfused
