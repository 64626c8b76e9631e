"""Graph passes: before/after IR, and numerical equivalence with the reference interpreter."""
from __future__ import annotations

import numpy as np
import pytest

from cnncc import host_target
from cnncc.ir import CompileError, DType, Graph, TensorType
from cnncc.passes import PASS_NAMES, PassContext, run_pipeline
from cnncc.passes.canonicalize import canonicalize
from cnncc.passes.eliminate_dead_code import eliminate_dead_code
from cnncc.passes.fold_batch_norm import fold_batch_norm
from cnncc.passes.fold_constants import fold_constants
from cnncc.testing import assert_graphs_equivalent

F32 = DType.float32
rng = np.random.default_rng(0)


def rand(*shape, lo=None, hi=None):
    if lo is not None:
        return rng.uniform(lo, hi, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def conv_bn_graph(bias=True, relu=True, extra_user=False) -> Graph:
    g = Graph("conv_bn")
    g.add_input("x", TensorType(F32, (1, 3, 9, 9)))
    w = g.add_param("w", rand(8, 3, 3, 3))
    ins = ["x", w] + ([g.add_param("b", rand(8))] if bias else [])
    (c,) = g.add_node("Conv", ins, {"pads": [1, 1, 1, 1], "strides": [2, 2]}, name="conv")
    bn_params = [g.add_param(n, v) for n, v in [("gamma", rand(8, lo=0.5, hi=1.5)),
                                                ("beta", rand(8)), ("mean", rand(8)),
                                                ("var", rand(8, lo=0.5, hi=1.5))]]
    (y,) = g.add_node("BatchNormalization", [c, *bn_params], {"epsilon": 1e-3}, name="bn")
    if relu:
        (y,) = g.add_node("Relu", [y], name="relu")
    g.outputs = [y]
    if extra_user:
        (z,) = g.add_node("Sigmoid", [c], name="other")
        g.outputs.append(z)
    return g.verify()


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batch_norm_into_conv(bias):
    before = conv_bn_graph(bias=bias)
    after = fold_batch_norm(before).verify()
    assert [n.op for n in after.nodes] == ["Conv", "Relu"]
    assert [n.op for n in before.nodes] == ["Conv", "BatchNormalization", "Relu"]  # untouched
    conv = after.nodes[0]
    assert conv.name == "conv" and len(conv.inputs) == 3
    assert set(after.params) == {conv.inputs[1], conv.inputs[2]}
    assert_graphs_equivalent(before, after, max_rel_error=1e-5)


def test_fold_batch_norm_respects_other_users():
    before = conv_bn_graph(extra_user=True)
    after = fold_batch_norm(before).verify()
    # The conv output is read twice: BN cannot fold into it; it becomes a scale-shift instead.
    assert [n.op for n in after.nodes] == ["Conv", "Mul", "Add", "Relu", "Sigmoid"]
    assert_graphs_equivalent(before, after, max_rel_error=1e-5)


def test_fold_scale_shift_written_as_mul_add():
    g = Graph("mul_add")
    g.add_input("x", TensorType(F32, (2, 4, 6, 6)))
    (c,) = g.add_node("Conv", ["x", g.add_param("w", rand(5, 4, 1, 1))], name="conv")
    (m,) = g.add_node("Mul", [c, g.add_param("a", rand(1, 5, 1, 1))], name="mul")
    (a,) = g.add_node("Add", [m, g.add_param("c", rand(5, 1, 1))], name="add")
    g.outputs = [a]
    after = fold_batch_norm(g.verify()).verify()
    assert [n.op for n in after.nodes] == ["Conv"]
    assert_graphs_equivalent(g, after, max_rel_error=1e-5)


def test_mul_that_is_not_per_channel_is_left_alone():
    g = Graph("mul_spatial")
    g.add_input("x", TensorType(F32, (1, 2, 4, 4)))
    (c,) = g.add_node("Conv", ["x", g.add_param("w", rand(3, 2, 1, 1))], name="conv")
    (m,) = g.add_node("Mul", [c, g.add_param("a", rand(1, 1, 4, 4))], name="mul")
    g.outputs = [m]
    after = fold_batch_norm(g.verify())
    assert [n.op for n in after.nodes] == ["Conv", "Mul"]


def test_standalone_batch_norm_becomes_scale_shift():
    g = Graph("bn")
    g.add_input("x", TensorType(F32, (2, 3, 4, 4)))
    ps = [g.add_param(n, v) for n, v in [("g", rand(3, lo=.5, hi=1.5)), ("b", rand(3)),
                                         ("m", rand(3)), ("v", rand(3, lo=.5, hi=1.5))]]
    (y,) = g.add_node("BatchNormalization", ["x", *ps], name="bn")
    g.outputs = [y]
    after = fold_batch_norm(g.verify()).verify()
    assert [n.op for n in after.nodes] == ["Mul", "Add"]
    assert after.types[after.nodes[0].inputs[1]].shape == (3, 1, 1)
    assert_graphs_equivalent(g, after, max_rel_error=1e-5)


def test_canonicalize_removes_identity_and_merges_reshapes():
    g = Graph("canon")
    g.add_input("x", TensorType(F32, (2, 3, 4)))
    (i,) = g.add_node("Identity", ["x"], name="id")
    (r1,) = g.add_node("Reshape", [i, g.add_param("s1", np.array([6, 4], np.int64))], name="r1")
    (r2,) = g.add_node("Reshape", [r1, g.add_param("s2", np.array([0, -1, 2], np.int64))],
                       name="r2")
    (f,) = g.add_node("Flatten", [r2], {"axis": 2}, name="flat")
    (d,) = g.add_node("Dropout", [f], name="drop")
    g.outputs = [d]
    after = canonicalize(g.verify()).verify()
    # Flatten becomes a Reshape, and the three reshapes collapse into one.
    assert [n.op for n in after.nodes] == ["Reshape"]
    assert after.nodes[0].inputs[0] == "x" and after.outputs == ["drop"]
    assert after.types["drop"].shape == (12, 2)
    assert_graphs_equivalent(g, after, max_rel_error=0)


def test_canonicalize_keeps_identity_that_copies_an_input_to_an_output():
    g = Graph("passthrough")
    g.add_input("x", TensorType(F32, (3,)))
    (y,) = g.add_node("Identity", ["x"], name="id")
    g.outputs = [y]
    after = canonicalize(g.verify()).verify()
    assert [n.op for n in after.nodes] == ["Identity"]


def test_canonicalize_spells_sum_as_adds_and_the_residual_fuses():
    # Caffe2-exported ResNets (onnx's light_resnet50) add the shortcut with Sum: as Adds, the
    # residual and its Relu go into the conv epilogue like an Add's (opt 3: no Sum, no Relu left).
    g = Graph("sum")
    g.add_input("x", TensorType(F32, (1, 16, 8, 8)))
    g.add_input("y", TensorType(F32, (1, 16, 1, 8)))
    (c,) = g.add_node("Conv", ["x", g.add_param("w", rand(16, 16, 3, 3))],
                      {"pads": [1, 1, 1, 1]}, name="conv")
    (s2,) = g.add_node("Sum", [c, "x"], name="res")
    (r,) = g.add_node("Relu", [s2], name="relu")
    (s3,) = g.add_node("Sum", [r, "y", r], name="three")      # broadcasting, a repeated input
    (s1,) = g.add_node("Sum", [s3], name="one")
    g.outputs = [s1]
    after = canonicalize(g.verify()).verify()
    assert [n.op for n in after.nodes] == ["Conv", "Add", "Relu", "Add", "Add", "Sum"]
    assert_graphs_equivalent(g, after, max_rel_error=0)
    fused = run_pipeline(g.verify(),
                         PassContext(opt_level=3, target="llvm", machine=host_target()))
    assert "Sum" not in [n.op for n in fused.nodes][:-1]
    assert "Relu" not in [n.op for n in fused.nodes]
    assert_graphs_equivalent(g, fused, max_rel_error=1e-5)


def test_fold_constants_and_dead_code():
    g = Graph("consts")
    g.add_input("x", TensorType(F32, (2, 3)))
    a = g.add_param("a", rand(2, 3))
    (s,) = g.add_node("Shape", ["x"], name="shape")          # type-only: folds on a runtime input
    (e,) = g.add_node("Exp", [a], name="exp")                # constant input: folds
    (y,) = g.add_node("Add", ["x", e], name="add")
    (dead,) = g.add_node("Relu", ["x"], name="unused")
    g.outputs = [y, s]
    after = eliminate_dead_code(fold_constants(g.verify()).verify()).verify()
    assert [n.op for n in after.nodes] == ["Add"]
    np.testing.assert_array_equal(after.params["shape"], [2, 3])
    assert "a" not in after.params and dead not in after.types
    assert_graphs_equivalent(g, after, max_rel_error=1e-6)


def test_pipeline_runs_every_pass_and_verifies():
    seen = []
    g = conv_bn_graph()
    out = run_pipeline(g, PassContext(opt_level=3, machine=host_target()),
                       after_pass=lambda n, h: seen.append(n))
    assert seen == PASS_NAMES
    assert_graphs_equivalent(g, out, max_rel_error=1e-5)
    assert run_pipeline(g, PassContext(opt_level=0)) is g
    skipped = run_pipeline(g, PassContext(skip=frozenset({"fold_batch_norm",
                                                          "alter_layout_nchwc"})))
    assert [n.op for n in skipped.nodes] == ["Conv", "BatchNormalization", "Relu"]
    with pytest.raises(CompileError, match="unknown pass"):
        run_pipeline(g, PassContext(skip=frozenset({"nope"})))
