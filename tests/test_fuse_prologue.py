"""fuse_prologue: a per-channel affine + activation of a blocked map (DenseNet's BN + ReLU) moves
into the dense unpadded conv reading it. Each rewrite: the rewritten graph's reference equals
the original's (<= 1e-6) and the compiled kernel equals the original's reference (<= 1e-5);
look-alikes that must stay apart; malformed prologues refused by name; DenseNet-121 with every
pre-activation inside its convs; the NCHW route (BatchNormalization after a Concat) for AVX2."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import cnncc
from cnncc.ir import CompileError, DType, Graph, TensorType
from cnncc.passes import PassContext, run_pipeline
from cnncc.passes.fuse_prologue import fuse_prologue
from cnncc import host_target
from cnncc.testing import relative_error

F32 = DType.float32
XS = (1, 3, 7, 6, 16)        # 40 channels in 3 blocks of 16: the last block half padding
AVX2 = "+avx2,+fma,+avx,+sse4.2,-avx512f"


def _graph(chain: str, k: int = 1, stride: int = 1, pads: int = 0, extra: str = "",
           batch: int = 1) -> Graph:
    """x -> chain -> ConvNCHWc(k x k, 40 -> 40). ``chain``: ops separated by "_" among mul,
    smul (the constant first), add, sadd, relu, clip, gelutanh, rmul (a run-time per-image
    scale, as a squeeze-excitation gate);
    ``extra``: "shared" (the chain's output has another user), "output" (it is a graph
    output), "spatial" (the Mul's constant varies over pixels)."""
    rng = np.random.default_rng(0)
    g = Graph("prologue")
    xs = (batch,) + XS[1:]
    g.add_input("x", TensorType(F32, xs))
    per_channel = (1, XS[1], 1, 1, XS[4])
    y = "x"
    for op in chain.split("_"):
        if op in ("mul", "smul", "add", "sadd"):
            shape = xs if extra == "spatial" and op.endswith("mul") else per_channel
            c = g.add_param(f"{op}_c", (rng.standard_normal(shape) * 0.5
                                        + (1.0 if op.endswith("mul") else 0.0)).astype(np.float32))
            (y,) = g.add_node("Mul" if op.endswith("mul") else "Add",
                              [c, y] if op.startswith("s") else [y, c], name=op)
        elif op == "rmul":
            g.add_input("s", TensorType(F32, (batch,) + per_channel[1:]))
            (y,) = g.add_node("Mul", [y, "s"], name=op)
        elif op == "clip":
            lo, hi = (g.add_param(n, np.array(v, np.float32)) for n, v in (("lo", 0), ("hi", 0.8)))
            (y,) = g.add_node("Clip", [y, lo, hi], name=op)
        else:
            attrs = {"approximate": "tanh"} if op == "gelutanh" else {}
            (y,) = g.add_node({"relu": "Relu", "gelutanh": "Gelu"}[op], [y], attrs, name=op)
    w = g.add_param("w", (rng.standard_normal((40, 40, k, k)) * 0.2).astype(np.float32))
    b = g.add_param("b", (rng.standard_normal(40) * 0.1).astype(np.float32))
    (out,) = g.add_node("ConvNCHWc", [y, w, b], {"block": 16, "pads": [pads] * 4,
                                                 "strides": [stride] * 2}, name="conv")
    g.outputs = [out]
    if extra == "shared":
        (other,) = g.add_node("Sigmoid", [y], name="other")
        g.outputs.append(other)
    elif extra == "output":
        g.outputs.append(y)
    return g.verify()


def _feeds(g: Graph) -> dict:
    rng = np.random.default_rng(1)
    return {i: rng.standard_normal(g.types[i].shape).astype(np.float32) for i in g.inputs}


# (chain, conv kernel, stride, pads, extra) -> the ops left besides the conv
CASES = {
    "bn_relu_1x1": (("mul_add_relu", 1, 1, 0, ""), []),
    "constant_first_clip": (("smul_sadd_clip", 1, 1, 0, ""), []),
    "gelu_tanh_stride2": (("mul_add_gelutanh", 1, 2, 0, ""), []),
    "affine_3x3_unpadded": (("mul_add", 3, 1, 0, ""), []),
    "relu_only_3x3_stride2": (("relu", 3, 2, 0, ""), []),
    # At batch 1 a gate is fuse_channel_scale's (the weights scaled); at batch 2, a prologue.
    "runtime_scale_stays": (("rmul_add_relu", 1, 1, 0, ""), ["Mul"]),
    "se_gate_batch2": (("rmul", 1, 1, 0, "", 2), []),
    "se_gate_bn_relu_batch2": (("rmul_add_relu", 1, 1, 0, "", 2), []),
    "padded_3x3": (("mul_add_relu", 3, 1, 1, ""), ["Mul", "Add", "Relu"]),
    "shared": (("mul_add_relu", 1, 1, 0, "shared"), ["Mul", "Add", "Relu", "Sigmoid"]),
    "graph_output": (("mul_add_relu", 1, 1, 0, "output"), ["Mul", "Add", "Relu"]),
    "spatial_scale": (("mul_add_relu", 1, 1, 0, "spatial"), ["Mul"]),
}


@pytest.mark.parametrize("case", CASES)
def test_rewrite(case):
    args, left = CASES[case]
    g = _graph(*args)
    out = fuse_prologue(g).verify()
    assert sorted(n.op for n in out.nodes if n.op != "ConvNCHWc") == sorted(left)
    conv = next(n for n in out.nodes if n.op == "ConvNCHWc")
    fused = len(conv.inputs) == 7
    assert fused == (case not in ("padded_3x3", "shared", "graph_output"))
    feeds = _feeds(g)
    want = cnncc.compile(g, target="reference").run(feeds)
    got = cnncc.compile(out, target="reference").run(feeds)
    for k in want:
        assert relative_error(got[k], want[k]) <= 1e-6
    if fused:
        native = cnncc.compile(out, threads=1, cache=False).run(feeds)
        for k in want:
            assert relative_error(native[k], want[k]) <= 1e-5, k


@pytest.mark.parametrize("change,match", [
    (lambda n: n.inputs.pop(), "both P"),
    (lambda n: n.attrs.update(pads=[1] * 4), "unpadded"),
    (lambda n: n.inputs.__setitem__(5, "bad"), "prologue P must be"),
    (lambda n: n.attrs.update(pre_activation="Tanhh"), "unknown pre_activation"),
])
def test_malformed_prologue_refused(change, match):
    g = fuse_prologue(_graph("mul_add_relu"))
    g.add_param("bad", np.ones((1, 3, 1, 1, 8), np.float32))
    conv = next(n for n in g.nodes if n.op == "ConvNCHWc")
    change(conv)
    with pytest.raises(CompileError, match=match):
        g.verify()


def test_densenet_pre_activations_inside_the_convs():
    """Every dense layer's and transition's BN + ReLU is its 1x1 conv's prologue; only the
    final norm5 + ReLU (read by the pooling) stays elementwise."""
    from cnncc.dsl import zoo
    g = run_pipeline(zoo.densenet121(input_size=32).to_graph(),
                     PassContext(opt_level=3, machine=host_target(1)))
    pro = [n for n in g.nodes if n.op == "ConvNCHWc" and n.attrs.get("pre_activation")]
    assert len(pro) == 58 + 3 and {n.attrs["pre_activation"] for n in pro} == {"Relu"}
    ops = [n.op for n in g.nodes]
    assert ops.count("Mul") == ops.count("Add") == ops.count("Relu") == 1


def _nchw_graph() -> Graph:
    """Two convs -> Concat -> BatchNormalization -> Relu -> 1x1 conv (a DenseNet layer)."""
    rng = np.random.default_rng(2)
    g = Graph("dense_layer")
    g.add_input("x", TensorType(F32, (1, 5, 9, 8)))

    def p(name, *shape, offset=0.0):
        return g.add_param(name, (rng.standard_normal(shape) * 0.3 + offset).astype(np.float32))
    ys = []
    for i, oc in enumerate((12, 20)):
        (y,) = g.add_node("Conv", ["x", p(f"w{i}", oc, 5, 3, 3)], {"pads": [1] * 4}, name=f"c{i}")
        ys.append(y)
    (cat,) = g.add_node("Concat", ys, {"axis": 1}, name="cat")
    (bn,) = g.add_node("BatchNormalization", [cat, p("g", 32, offset=1.0), p("bb", 32),
                                              p("m", 32), g.add_param("v", np.full(32, 0.8,
                                                                                   np.float32))],
                       name="bn")
    (r,) = g.add_node("Relu", [bn], name="relu")
    (out,) = g.add_node("Conv", [r, p("w2", 24, 32, 1, 1)], name="conv1")
    g.outputs = [out]
    return g.verify()


@pytest.mark.parametrize("features", [None, AVX2])
def test_dense_layer_from_nchw(features):
    """The pipeline makes the prologue from BatchNormalization + Relu (blocks of 16 on AVX-512,
    8 on AVX2, in a child process with CNNCC_FEATURES) and the result matches the reference."""
    g = _nchw_graph()
    x = _feeds(g)["x"]
    expect = cnncc.compile(g, target="reference")(x)
    code = ("import pickle, sys, cnncc; from cnncc.driver import load_graph, host_target; "
            "from cnncc.passes import PassContext, run_pipeline; g, x = pickle.load(sys.stdin.buffer); "
            "o = run_pipeline(load_graph(g), PassContext(opt_level=3, machine=host_target(1))); "
            "pro = [n.attrs.get('pre_activation') for n in o.nodes if len(n.inputs) == 7]; "
            "sys.stdout.buffer.write(pickle.dumps((pro, sorted(n.op for n in o.nodes), "
            "cnncc.compile(g, cache=False, threads=1)(x))))")
    env = dict(os.environ, **({"CNNCC_FEATURES": features} if features else {}))
    run = subprocess.run([sys.executable, "-c", code], input=pickle.dumps((g, x)),
                         capture_output=True, env=env, check=True, timeout=600)
    pro, ops, got = pickle.loads(run.stdout)
    assert pro == ["Relu"] and "Relu" not in ops and "Mul" not in ops, ops
    assert relative_error(got, expect) <= 1e-5
