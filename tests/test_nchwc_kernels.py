"""CPU (llvm) kernels of the NCHWc layout ops (cnncc/lower/conv_nchwc.py, layout_nchwc.py)
against the reference interpreter (ir/ops/layout.py: numpy references built on FusedConv and
the NCHW pools): dense convs (odd channel counts, strides, asymmetric pads, dilation, 1x1,
7x7 stems on NCHW input), every fused activation, bias / residual, depthwise convs, pools,
layout changes, one and two threads. Tolerance: |llvm - ref| <= RTOL * max(1, max |ref|)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import cnncc
from cnncc.ir import DType, Graph, TensorType
from cnncc.ir.ops.fused import ACTIVATIONS
from cnncc.ir.ops.layout import from_blocked, to_blocked

F32 = DType.float32
RTOL = 1e-4
BLOCK = 16
PARAMS = {"Clip": [0.0, 6.0], "LeakyRelu": [0.1], "HardSigmoid": [0.2, 0.5], "Swish": [1.5],
          "Elu": [0.7]}


def conv_out(size: int, k: int, s: int, d: int, b: int, e: int) -> int:
    return (size + b + e - d * (k - 1) - 1) // s + 1


def conv_graph(ic: int, oc: int, h: int, w: int, k: int, *, stride: int = 1, pads=None,
               dil: int = 1, depthwise: bool = False, stem: bool = False, bias: bool = True,
               residual: bool = False, act: str = "", block: int = BLOCK, batch: int = 1,
               seed: int = 0) -> Graph:
    """x (NCHW) -> [ToNCHWc] -> ConvNCHWc(+ z blocked) -> FromNCHWc."""
    rng = np.random.default_rng(seed)
    pads = [k // 2 * dil] * 4 if pads is None else list(pads)
    group = ic if depthwise else 1
    g = Graph("nchwc")
    g.add_input("x", TensorType(F32, (batch, ic, h, w)))
    wv = rng.standard_normal((oc, ic // group, k, k)) / np.sqrt(ic // group * k * k)
    ins = ["x" if stem else g.add_node("ToNCHWc", ["x"], {"block": block})[0],
           g.add_param("w", wv.astype(np.float32)),
           g.add_param("b", rng.standard_normal(oc).astype(np.float32)) if bias else ""]
    if residual:
        oh = conv_out(h, k, stride, dil, pads[0], pads[2])
        ow = conv_out(w, k, stride, dil, pads[1], pads[3])
        g.add_input("z", TensorType(F32, (batch, oc, oh, ow)))
        ins.append(g.add_node("ToNCHWc", ["z"], {"block": block})[0])
    attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": pads,
             "dilations": [dil] * 2, "group": group, "block": block,
             "in_layout": "NCHW" if stem else "NCHWc", "activation": act,
             "activation_params": PARAMS.get(act, [])}
    (y,) = g.add_node("ConvNCHWc", ins, attrs, name="conv")
    (out,) = g.add_node("FromNCHWc", [y], {"channels": oc})
    g.outputs = [out]
    return g.verify()


def feeds_for(g: Graph, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(g.types[i].shape).astype(np.float32) for i in g.inputs]


def check(g: Graph, threads: int = 1) -> None:
    feeds = feeds_for(g)
    ref = cnncc.compile(g, target="reference")(*feeds)
    got = cnncc.compile(g, target="llvm", threads=threads, cache=False)(*feeds)
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max())
    assert err <= RTOL * max(1.0, float(np.abs(ref).max())), err


# ---- dense convs ----------------------------------------------------------------------------

@pytest.mark.parametrize("ic,oc,h,w,k,stride,pads,dil", [
    (16, 16, 8, 8, 3, 1, None, 1),
    (24, 40, 9, 11, 3, 1, None, 1),
    (5, 24, 7, 13, 3, 2, None, 1),           # stride 2, tail tiles, 1 input block padded
    (40, 72, 15, 9, 3, 2, (0, 1, 1, 0), 1),  # asymmetric pads
    (32, 80, 10, 10, 5, 1, None, 1),         # 5 output blocks: a tail group
    (24, 24, 12, 12, 3, 1, None, 2),         # dilation 2
    (3, 16, 11, 11, 7, 2, (3, 3, 2, 2), 1),
    (64, 48, 7, 7, 3, 1, (0, 0, 0, 0), 1),   # unpadded
    (32, 24, 9, 9, 1, 1, (0, 0, 0, 0), 1),   # 1x1 flattened over H * W
    (40, 32, 9, 9, 1, 2, (0, 0, 0, 0), 1),   # strided 1x1
    (16, 32, 6, 6, 1, 1, (1, 1, 1, 1), 1),   # padded 1x1
    (48, 96, 29, 31, 3, 1, None, 1),         # wide rows: several full tiles and a tail
])
def test_dense(ic, oc, h, w, k, stride, pads, dil):
    check(conv_graph(ic, oc, h, w, k, stride=stride, pads=pads, dil=dil, act="Relu"))


@pytest.mark.parametrize("act", [""] + sorted(ACTIVATIONS))
def test_activations_with_residual(act):
    check(conv_graph(20, 24, 6, 7, 3, residual=True, act=act, seed=3))


@pytest.mark.parametrize("bias,residual", [(False, False), (False, True), (True, True)])
def test_bias_residual(bias, residual):
    check(conv_graph(24, 40, 8, 9, 3, bias=bias, residual=residual, act="Clip"))


@pytest.mark.parametrize("ic,k,stride,pads", [(3, 7, 2, (3, 3, 3, 3)), (5, 3, 1, None),
                                              (1, 3, 2, (1, 0, 0, 1))])
def test_stem_nchw_input(ic, k, stride, pads):
    check(conv_graph(ic, 24, 17, 15, k, stride=stride, pads=pads, stem=True, act="Relu"))


@pytest.mark.parametrize("k,pads,depthwise,stem", [(3, None, False, False),
                                                   (1, (0, 0, 0, 0), False, False),
                                                   (3, None, True, False),
                                                   (3, None, False, True)])
def test_batch_2(k, pads, depthwise, stem):
    ic = 3 if stem else 24
    check(conv_graph(ic, 24, 7, 6, k, pads=pads, depthwise=depthwise, stem=stem,
                     residual=True, act="Relu", batch=2))


def test_block_8():
    check(conv_graph(12, 20, 7, 9, 3, residual=True, act="Relu", block=8))


@pytest.mark.parametrize("ic,oc,h,w,k,stride", [(64, 64, 18, 18, 3, 1), (48, 100, 16, 16, 1, 1),
                                                (32, 64, 20, 20, 3, 2)])
def test_two_threads(ic, oc, h, w, k, stride):
    check(conv_graph(ic, oc, h, w, k, stride=stride, residual=True, act="Relu"), threads=2)


@pytest.mark.parametrize("pixel_major", [True, False])
@pytest.mark.parametrize("ic,oc,h,w,k,stride,threads", [
    (32, 80, 13, 11, 3, 1, 2),      # a tail group, tail columns
    (48, 64, 9, 9, 1, 1, 3),        # flattened 1x1, three shares
    (16, 48, 15, 15, 3, 2, 2),
    (24, 40, 8, 9, 3, 1, 1),        # one thread: group-major whatever the weights
])
def test_loop_orders(ic, oc, h, w, k, stride, threads, pixel_major, monkeypatch):
    """Pixel-major (rows outer, every channel group per pixel tile; small weights, several
    threads) and group-major tile orders compute the same conv; the loop band says which one
    ran."""
    from cnncc.lower import conv_nchwc_tiles
    from cnncc import host_target
    from cnncc.lower.program import lower_graph

    monkeypatch.setattr(conv_nchwc_tiles, "PIXEL_MAJOR_L2_SHARE", 1e9 if pixel_major else 0)
    g = conv_graph(ic, oc, h, w, k, stride=stride, residual=True, act="Relu")
    (kern,) = [kn for kn, _ in lower_graph(g, host_target(threads).replace(lanes=BLOCK)).ctx.kernels if kn.name == "conv"]
    text = str(kern)
    want = ["n", "ot", "t", "og"] if pixel_major and threads > 1 else ["n", "og", "ot", "t"]
    if threads > 1:        # the band fused into one parallel loop, named after its loops
        assert re.search(rf"parallel for {'_'.join(want)}(_o)? in", text), text[:600]
    else:
        assert sorted(want, key=lambda v: text.index(f"for {v} in")) == want, text[:600]
    check(g, threads=threads)


def test_padding_lanes_ignored_and_finite():
    """Garbage (finite) in the padding lanes of a blocked input does not reach the real
    channels, and the output's padding lanes stay finite."""
    rng = np.random.default_rng(5)
    ic, oc = 20, 24
    g = Graph("lanes")
    g.add_input("xb", TensorType(F32, (1, 2, 6, 6, BLOCK)))
    w = g.add_param("w", rng.standard_normal((oc, ic, 3, 3)).astype(np.float32))
    attrs = {"kernel_shape": [3, 3], "pads": [1] * 4, "block": BLOCK, "activation": "Relu"}
    (y,) = g.add_node("ConvNCHWc", ["xb", w], attrs, name="conv")
    g.outputs = [y]
    g.verify()
    xb = to_blocked(rng.standard_normal((1, ic, 6, 6)).astype(np.float32), BLOCK)
    ref = cnncc.compile(g, target="reference")(xb)
    xb[:, -1, ..., ic % BLOCK:] = 1e3 * rng.standard_normal(xb[:, -1, ..., ic % BLOCK:].shape)
    got = cnncc.compile(g, target="llvm", threads=1, cache=False)(xb)
    assert np.isfinite(got).all()
    assert np.abs(from_blocked(got, oc) - from_blocked(ref, oc)).max() <= RTOL * np.abs(ref).max()


# ---- depthwise ------------------------------------------------------------------------------

@pytest.mark.parametrize("c,h,w,k,stride,pads,dil,act,residual", [
    (16, 8, 8, 3, 1, None, 1, "Relu", False),
    (24, 9, 13, 3, 2, None, 1, "Clip", True),
    (40, 11, 7, 5, 1, None, 1, "HardSwish", False),
    (5, 10, 10, 3, 2, (0, 1, 1, 0), 1, "", True),
    (32, 12, 12, 3, 1, None, 2, "Sigmoid", False),
    (96, 30, 33, 3, 1, None, 1, "Relu", True),
    (16, 4, 3, 5, 1, None, 1, "Relu", False),      # no interior column
])
def test_depthwise(c, h, w, k, stride, pads, dil, act, residual):
    check(conv_graph(c, c, h, w, k, stride=stride, pads=pads, dil=dil, depthwise=True,
                     act=act, residual=residual))


def test_depthwise_two_threads():
    check(conv_graph(64, 64, 24, 24, 3, depthwise=True, act="Relu"), threads=2)


# ---- pools and layout changes ---------------------------------------------------------------

def pool_graph(c: int, h: int, w: int, kind: str, k: int, stride: int, pads, ceil: int = 0,
               include: int = 0) -> Graph:
    g = Graph("pool")
    g.add_input("x", TensorType(F32, (2, c, h, w)))
    (xb,) = g.add_node("ToNCHWc", ["x"], {"block": BLOCK})
    attrs = {"kind": kind, "kernel_shape": [k, k], "strides": [stride] * 2, "pads": list(pads),
             "ceil_mode": ceil, "count_include_pad": include}
    (y,) = g.add_node("PoolNCHWc", [xb], attrs, name="pool")
    (out,) = g.add_node("FromNCHWc", [y], {"channels": c})
    g.outputs = [out]
    return g.verify()


@pytest.mark.parametrize("kind", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("c,h,w,k,stride,pads,ceil,include", [
    (16, 12, 12, 3, 2, (1, 1, 1, 1), 0, 0),
    (24, 11, 13, 3, 2, (1, 1, 1, 1), 1, 0),
    (5, 10, 9, 2, 2, (0, 0, 0, 0), 1, 1),
    (40, 9, 9, 3, 1, (0, 1, 2, 1), 0, 1),
    (32, 8, 23, 5, 3, (2, 2, 2, 2), 1, 1),
    (16, 4, 4, 5, 1, (2, 2, 2, 2), 0, 1),    # no interior column: every one a border
])
def test_pool(kind, c, h, w, k, stride, pads, ceil, include):
    check(pool_graph(c, h, w, kind, k, stride, pads, ceil, include))


def test_max_pool_all_negative():
    """-inf padding (not 0) at the borders of a max pool."""
    g = pool_graph(16, 7, 7, "MaxPool", 3, 2, (1, 1, 1, 1))
    x = -1.0 - np.abs(feeds_for(g)[0])
    ref = cnncc.compile(g, target="reference")(x)
    got = cnncc.compile(g, target="llvm", threads=1, cache=False)(x)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("c,h,w,block,threads", [(3, 5, 7, 16, 1), (16, 4, 33, 16, 1),
                                                 (40, 9, 20, 8, 1), (100, 30, 30, 16, 2)])
def test_layout_round_trip(c, h, w, block, threads):
    """ToNCHWc is to_blocked (padding lanes 0), FromNCHWc drops the padding lanes."""
    g = Graph("layout")
    g.add_input("x", TensorType(F32, (2, c, h, w)))
    (xb,) = g.add_node("ToNCHWc", ["x"], {"block": block})
    (y,) = g.add_node("Sigmoid", [xb])
    (out,) = g.add_node("FromNCHWc", [y], {"channels": c})
    g.outputs = [xb, out]
    g.verify()
    x = feeds_for(g)[0]
    xb_got, out_got = cnncc.compile(g, target="llvm", threads=threads, cache=False)(x)
    np.testing.assert_array_equal(xb_got, to_blocked(x, block))
    np.testing.assert_allclose(out_got, 1 / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
