"""Halos (cnncc/lower/halo.py): blocked values stored inside a zero ring that padded dense NCHWc
convs read in place of a padded copy. Which values get one (plan_halos, before/after on the
kernels emitted), and numbers against the reference interpreter with every kind of reader
(dense convs padding less than the halo or asymmetrically, residuals, depthwise convs, pools),
at |llvm - ref| <= RTOL * max(1, max |ref|), including with garbage left in the arena."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import cnncc
from cnncc.cli import resolve_model
from cnncc.ir import DType, Graph, TensorType
from cnncc.lower.halo import plan_halos

F32 = DType.float32
RTOL = 1e-4
BLOCK = 16


def _conv(g: Graph, x: str, ic: int, oc: int, k: int, name: str, *, pads=None, stride=1,
          depthwise: bool = False, z: str = "", act: str = "Relu", seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    group = ic if depthwise else 1
    w = rng.standard_normal((oc, ic // group, k, k)) / np.sqrt(ic // group * k * k)
    ins = [x, g.add_param(f"{name}_w", w.astype(np.float32)),
           g.add_param(f"{name}_b", rng.standard_normal(oc).astype(np.float32))]
    if z:
        ins.append(z)
    attrs = {"kernel_shape": [k, k], "strides": [stride] * 2,
             "pads": [k // 2] * 4 if pads is None else list(pads), "group": group,
             "block": BLOCK, "activation": act}
    return g.add_node("ConvNCHWc", ins, attrs, name=name)[0]


def readers_graph(ch: int = 24, h: int = 11, w: int = 9) -> Graph:
    """a = 1x1 conv of the input, read by: a 3x3 conv (pad 1) with a as its residual, a 5x5
    conv (pad 2), an asymmetrically padded 3x3 conv, a depthwise conv, a max pool; the
    depthwise conv's and the pool's outputs each read by a padded 3x3 conv."""
    g = Graph("halo")
    g.add_input("x", TensorType(F32, (1, ch, h, w)))
    (xb,) = g.add_node("ToNCHWc", ["x"], {"block": BLOCK})
    a = _conv(g, xb, ch, ch, 1, "a", pads=(0, 0, 0, 0))
    b = _conv(g, a, ch, ch, 3, "b", z=a, seed=1)
    c = _conv(g, a, ch, 20, 5, "c", seed=2)
    e = _conv(g, a, ch, 20, 3, "e", pads=(0, 1, 1, 0), stride=2, seed=3)
    d = _conv(g, a, ch, ch, 3, "d", depthwise=True, seed=4)
    (p,) = g.add_node("PoolNCHWc", [a], {"kind": "MaxPool", "kernel_shape": [3, 3],
                                         "strides": [2, 2], "pads": [1, 1, 1, 1]}, name="p")
    f = _conv(g, d, ch, 16, 3, "f", seed=5)
    q = _conv(g, p, ch, 16, 3, "q", seed=6, act="")
    outs = []
    for v, n in ((b, ch), (c, 20), (e, 20), (f, 16), (q, 16)):
        outs += g.add_node("FromNCHWc", [v], {"channels": n})
    g.outputs = outs
    return g.verify()


def _value_of(g: Graph, node: str) -> str:
    return next(n for n in g.nodes if n.name == node).outputs[0]


def test_plan_halos_readers():
    g = readers_graph()
    halos = plan_halos(g)
    # a: the largest padding of its dense readers (the 5x5 conv); d, p: read by 3x3 convs;
    # the convs read only by FromNCHWc (and the ToNCHWc output) get none.
    assert halos == {_value_of(g, "a"): (2, 2), _value_of(g, "d"): (1, 1),
                     _value_of(g, "p"): (1, 1)}


def test_no_halo_without_padded_dense_reader_or_for_outputs():
    g = Graph("nohalo")
    g.add_input("x", TensorType(F32, (1, 16, 8, 8)))
    (xb,) = g.add_node("ToNCHWc", ["x"], {"block": BLOCK})
    a = _conv(g, xb, 16, 16, 3, "a")
    b = _conv(g, a, 16, 16, 3, "b", depthwise=True)          # depthwise reader only
    c = _conv(g, b, 16, 16, 3, "c")                           # b: also a graph output
    (r,) = g.add_node("Relu", [c])                            # c: read by an elementwise op
    d = _conv(g, r, 16, 16, 3, "d")
    (out,) = g.add_node("FromNCHWc", [d], {"channels": 16})
    g.outputs = [out, b]
    g.verify()
    assert plan_halos(g) == {}


def _check(g: Graph, threads: int) -> Any:
    rng = np.random.default_rng(7)
    feeds = [rng.standard_normal(g.types[i].shape).astype(np.float32) for i in g.inputs]
    ref = cnncc.compile(g, target="reference")(*feeds)
    m = cnncc.compile(g, target="llvm", threads=threads, cache=False)
    got = m(*feeds)
    for r, o in zip(ref, got):
        assert np.abs(o - r).max() <= RTOL * max(1.0, float(np.abs(r).max()))
    return m


@pytest.mark.parametrize("threads", [1, 2])
def test_readers_match_reference(threads):
    g = readers_graph()
    m = _check(g, threads)
    names = [k.name for k in m.kernels]
    # No padded copy left: every padded dense conv reads a halo; one ring kernel per halo.
    assert not [n for n in names if n.endswith("_pad")], names
    assert sorted(n for n in names if n.endswith("_halo")) == ["a_halo", "d_halo", "p_halo"]


def test_ring_rezeroed_every_run():
    """The arena is shared by all intermediates: the ring is zeroed by each run, not once.
    With NaN in every arena byte before the run, the outputs still match."""
    g = readers_graph(ch=16, h=7, w=7)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(g.types["x"].shape).astype(np.float32)
    ref = cnncc.compile(g, target="reference")(x)
    m = cnncc.compile(g, target="llvm", threads=1, cache=False)
    if hasattr(m, "_rebuild"):          # an exported library: its JIT twin owns an arena
        m.program
        m = m._jit
    jit_model = m
    jit_model._arena[:] = 0xFF                                # every float a NaN
    got = jit_model._execute([x])
    for r, o in zip(ref, got):
        assert np.abs(o - r).max() <= RTOL * max(1.0, float(np.abs(r).max()))


def test_resnet18_pads_only_its_stem():
    """Before halos ResNet-18 at opt 3 copied the input of every padded conv (17 copies); now
    only the stem, which reads the NCHW graph input, has one (the maxpool and 15 convs write
    into halos)."""
    g = cnncc.load_graph(resolve_model("zoo:resnet18"))
    m = cnncc.compile(g, target="llvm", threads=1)
    names = [k.name for k in m.kernels]
    assert [n for n in names if n.endswith("_pad")] == ["stem_conv_pad"]
    assert len([n for n in names if n.endswith("_halo")]) == 16
