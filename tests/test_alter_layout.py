"""alter_layout_nchwc: before/after IR (what becomes blocked, where the transforms go, no
opposite pairs) and numerical equivalence with the reference interpreter (the layout ops'
references convert back to NCHW and reuse the NCHW op references); then every pass of the
pipeline on every DSL zoo net, pass by pass."""
from __future__ import annotations

import inspect
from collections import Counter

import numpy as np
import pytest

from cnncc import host_target
from cnncc.dsl import zoo
from cnncc.ir import DType, Graph, TensorType
from cnncc.passes import PASS_NAMES, PassContext
from cnncc.passes.alter_layout_nchwc import alter_layout_nchwc
from cnncc.testing import assert_graphs_equivalent
from cnncc.verify import verify_pipeline

F32 = DType.float32
BLOCK = 8          # small blocks: channel counts below exercise padding and whole blocks


def rand(rng, *shape) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.3).astype(np.float32)


def conv(g: Graph, rng, x: str, oc: int, k: int = 3, stride: int = 1, group: int = 1,
         act: str | None = "Relu", name: str = "conv") -> str:
    ic = g.types[x].shape[1]
    w = g.add_param(f"{name}.w", rand(rng, oc, ic // group, k, k))
    b = g.add_param(f"{name}.b", rand(rng, oc))
    (y,) = g.add_node("Conv", [x, w, b], {"pads": [k // 2] * 4, "strides": [stride] * 2,
                                          "group": group}, name=name)
    if act:
        (y,) = g.add_node(act, [y], name=f"{name}.act")
    return y


def run(g: Graph, block: int = BLOCK) -> Graph:
    out = alter_layout_nchwc(g, PassContext(machine=host_target().replace(lanes=block))).verify()
    assert_graphs_equivalent(g, out, max_rel_error=1e-6)
    return out


def ops(g: Graph) -> Counter:
    return Counter(n.op for n in g.nodes)


def assert_no_opposite_pairs(g: Graph) -> None:
    prod = g.producers()
    for n in g.nodes:
        if n.op in ("ToNCHWc", "FromNCHWc"):
            src = prod.get(n.inputs[0])
            assert src is None or {src.op, n.op} != {"ToNCHWc", "FromNCHWc"}, n.name


def test_resnet_block_is_blocked_end_to_end():
    rng = np.random.default_rng(0)
    g = Graph("block")
    g.add_input("x", TensorType(F32, (1, 3, 17, 17)))
    stem = conv(g, rng, "x", 16, k=7, stride=2, name="stem")
    (p,) = g.add_node("MaxPool", [stem], {"kernel_shape": [3, 3], "strides": [2, 2],
                                          "pads": [1, 1, 1, 1]}, name="pool")
    a = conv(g, rng, p, 16, name="c1")
    b = conv(g, rng, a, 16, act=None, name="c2")
    (s,) = g.add_node("Add", [b, p], name="add")
    (r,) = g.add_node("Relu", [s], name="relu")
    (gap,) = g.add_node("GlobalAveragePool", [r], name="gap")
    g.outputs = [gap]
    out = run(g)
    assert ops(out) == {"ConvNCHWc": 3, "Relu": 3, "PoolNCHWc": 1, "Add": 1, "ReduceMean": 1,
                        "FromNCHWc": 1}
    stem_node = next(n for n in out.nodes if n.name == "stem")
    assert stem_node.attrs["in_layout"] == "NCHW" and stem_node.inputs[0] == "x"
    assert out.nodes[-1].op == "FromNCHWc" and out.nodes[-1].outputs == [gap]
    assert_no_opposite_pairs(out)


def test_odd_channels_are_padded_and_depthwise_blocked():
    rng = np.random.default_rng(1)
    g = Graph("odd")
    g.add_input("x", TensorType(F32, (1, 12, 9, 7)))
    a = conv(g, rng, "x", 20, k=1, act="HardSwish", name="expand")
    d = conv(g, rng, a, 20, k=3, stride=2, group=20, name="dw")
    p = conv(g, rng, d, 5, k=1, act=None, name="project")
    g.outputs = [p]
    out = run(g)
    assert ops(out) == {"ToNCHWc": 1, "ConvNCHWc": 3, "HardSwish": 1, "Relu": 1,
                        "FromNCHWc": 1}
    assert out.types[p].shape == (1, 5, 5, 4)
    assert out.types[out.nodes[-1].inputs[0]].shape == (1, 1, 5, 4, BLOCK)


def test_unblockable_consumer_gets_one_from_nchwc_and_convs_after_it_one_to_nchwc():
    rng = np.random.default_rng(2)
    g = Graph("edge")
    g.add_input("x", TensorType(F32, (1, 8, 6, 6)))
    a = conv(g, rng, "x", 16, name="c1")
    (sm,) = g.add_node("Softmax", [a], {"axis": 1}, name="softmax")
    (e,) = g.add_node("Exp", [a], name="exp")          # not finite-preserving: stays NCHW
    b = conv(g, rng, sm, 16, name="c2")
    (s,) = g.add_node("Add", [b, e], name="add")       # e is NCHW only: Add stays NCHW
    g.outputs = [s, a]
    out = run(g)
    c = ops(out)
    assert c["ToNCHWc"] == 2 and c["ConvNCHWc"] == 2
    assert c["FromNCHWc"] == 2              # a (once, shared by softmax, exp and the output), c2
    assert [n.op for n in out.nodes if n.name in ("softmax", "exp", "add")] == \
        ["Softmax", "Exp", "Add"]
    assert_no_opposite_pairs(out)


def test_concat_of_whole_blocks_stays_a_concat_others_become_gathers():
    rng = np.random.default_rng(3)
    g = Graph("cat")
    g.add_input("x", TensorType(F32, (1, 8, 5, 5)))
    a = conv(g, rng, "x", 8, k=1, name="a")
    b = conv(g, rng, "x", 16, k=3, name="b")
    (cat,) = g.add_node("Concat", [a, b], {"axis": 1}, name="cat")
    c = conv(g, rng, cat, 12, name="c")
    d = conv(g, rng, c, 4, name="d")
    (cat2,) = g.add_node("Concat", [c, d], {"axis": 1}, name="cat2")   # 12 + 4: not whole
    g.outputs = [cat2]
    out = run(g)
    assert [n.op for n in out.nodes if n.name == "cat"] == ["Concat"]
    assert out.types[next(n for n in out.nodes if n.name == "cat").outputs[0]].rank == 5
    # 12 + 4 channels: a blocked ChannelGather of them all, and one FromNCHWc (the output)
    (gather,) = [n for n in out.nodes if n.name == "cat2"]
    assert gather.op == "ChannelGather" and gather.attrs["sources"] == list(range(16))
    assert out.types[cat2].rank == 4 and ops(out)["FromNCHWc"] == 1


def test_squeeze_excitation_broadcast_and_scalar_ops_stay_blocked():
    rng = np.random.default_rng(4)
    g = Graph("se")
    g.add_input("x", TensorType(F32, (1, 16, 6, 6)))
    a = conv(g, rng, "x", 16, name="c1")
    (gap,) = g.add_node("GlobalAveragePool", [a], name="gap")
    s1 = conv(g, rng, gap, 8, k=1, name="fc1")
    s2 = conv(g, rng, s1, 16, k=1, act="Sigmoid", name="fc2")
    (m,) = g.add_node("Mul", [a, s2], name="scale")
    half = g.add_param("half", np.array([0.5], np.float32))
    (h,) = g.add_node("Mul", [m, half], name="half_it")
    g.outputs = [h]
    out = run(g)
    assert ops(out)["ConvNCHWc"] == 3 and ops(out)["FromNCHWc"] == 1
    assert ops(out)["ToNCHWc"] == 1
    assert all(out.types[o].rank == 5 for n in out.nodes if n.name in ("scale", "half_it")
               for o in n.outputs)


def test_left_alone_without_convs_grouped_convs_runtime_weights_and_on_gpu():
    rng = np.random.default_rng(5)
    g = Graph("none")
    g.add_input("x", TensorType(F32, (1, 12, 5, 5)))
    g.add_input("w", TensorType(F32, (8, 12, 3, 3)))
    # groups of 6 channels tile no block of 8: not blocked (groups of 2, 4, 8k are)
    y = conv(g, rng, "x", 12, group=2, name="grouped")
    (z,) = g.add_node("Conv", [y, "w"], {"pads": [1] * 4}, name="runtime_w")
    g.outputs = [z]
    out = run(g)
    assert [n.op for n in out.nodes] == [n.op for n in g.nodes]
    g2 = Graph("gpu")
    g2.add_input("x", TensorType(F32, (1, 8, 5, 5)))
    g2.outputs = [conv(g2, rng, "x", 8)]
    assert alter_layout_nchwc(g2, PassContext(target="cuda")) is g2
    assert ops(alter_layout_nchwc(g2, PassContext(machine=host_target().replace(lanes=16))))["ConvNCHWc"] == 1


def _small(name: str):
    make = zoo.ZOO[name]
    size = inspect.signature(make).parameters.get("input_size")
    # 64 x 64 for the 224 x 224 nets; the small nets keep their own (smaller) default
    kw = {"input_size": min(64, size.default)} if size is not None else {}
    return make(seed=0, **kw)


# VGG and AlexNet: plain conv/pool/dense chains whose big classifiers cost ~30 s here each.
@pytest.mark.parametrize("name", sorted(n for n in zoo.ZOO if not n.startswith(("vgg", "alexnet"))))
def test_every_pass_on_every_zoo_net(name):
    """The whole pipeline, pass by pass, against the graph as imported (reference interpreter)."""
    report = verify_pipeline(_small(name).to_graph(), opt_level=3, tolerance=1e-4)
    assert [s.name for s in report.steps] == PASS_NAMES, report.format()
    assert report.ok, report.format()


def test_show_marks_blocked_values_and_transforms():
    from cnncc.show import blocked_values, to_dot
    rng = np.random.default_rng(6)
    g = Graph("shown")
    g.add_input("x", TensorType(F32, (1, 8, 5, 5)))
    a = conv(g, rng, "x", 8, name="c1")
    g.outputs = [conv(g, rng, a, 8, name="c2")]
    out = alter_layout_nchwc(g, PassContext(machine=host_target().replace(lanes=BLOCK)))
    blocked = blocked_values(out)
    assert {o for n in out.nodes if n.op != "FromNCHWc" for o in n.outputs} == blocked
    dot = to_dot(out)
    assert dot.count('label="NCHWc"') == 5      # to->c1->relu->c2->relu->from
    assert "in_layout=NCHWc" in dot and "ToNCHWc" in dot and "FromNCHWc" in dot
