"""depthwise_separable: depthwise -> pointwise pairs fused, rank-1 depthwise filters factored.

(a) Fusion (NCHW{c}c convs, after alter_layout_nchwc). With DW = ConvNCHWc(x, Wd, bd; group=C,
    Wd [C, 1, KH, KW], pads P, strides S, dilations D, activation ad) and PW a 1x1 ConvNCHWc
    (stride 1, no pads, group 1, Wp [OC, C, 1, 1], activation ap):

        ConvNCHWc(DW(x), Wp, bp, z?; ap)
            ==>  DwPwConvNCHWc(x, Wd, bd, Wp, bp, z?; dw_pads=P, dw_strides=S, dw_dilations=D,
                               dw_activation=ad, pw_activation=ap)

    only when DW's output has exactly one user (that PW) and is not a graph output (the rewriter
    guarantees both), DW has no residual, both convs use the same block, every weight and bias
    is a constant and every value is float32. The fused kernel (cnncc/lower/conv_dwpw.py) keeps
    the depthwise output in an L1-sized tile instead of writing and re-reading it.

(b) Exact rank-1 spatial factoring (Conv, FusedConv or ConvNCHWc; 2-D, depthwise: group = C =
    OC, Wd [C, 1, KH, KW] with KH, KW >= 3, dilation 1). When every channel filter is rank 1,
    Wd[c, 0] = u_c v_c^T (second singular value <= RANK1_TOL x the first, per channel):

        DW(x, Wd, b, z?; pads (t, l, b_, r), strides (sh, sw), act)
            ==>  DW(DW(x, U; KHx1, pads (t, 0, b_, 0), strides (sh, 1)),
                    V, b, z?; 1xKW, pads (0, l, 0, r), strides (1, sw), act)

    with U[c, 0, :, 0] = u_c and V[c, 0, 0, :] = v_c (each sqrt(sigma_1) times a singular
    vector). The first conv's zero row padding and the second's zero column padding reproduce
    the KHxKW window exactly (the padded columns of the intermediate are zero), so the result is
    the same up to float rounding, for KH + KW instead of KH * KW multiply-adds per output.
    Fusion runs first: a depthwise conv that fuses with its pointwise conv is not factored.

(b') Approximate rank-1 factoring, opt-in: with the compile option dw_lowrank_tol=tol
    (PassContext.lowrank_tol; 0 < tol < 1), a filter
    set that is not exactly rank 1 is replaced by its best rank-1 approximation sigma_1 u v^T
    (the same rewrite as (b)) when, for every channel, ||W_c - sigma_1 u v^T||_F =
    sqrt(sigma_2^2 + ...) <= tol * ||W_c||_F. By Cauchy-Schwarz each output before the
    activation moves by at most max_c ||W_c - sigma_1 u v^T||_F * ||its input window||_2; the
    pass prints that factor for every conv it approximates (stderr).
"""
from __future__ import annotations

import functools
import sys

import numpy as np

from cnncc.ir import CompileError, DType, Graph, Node
from cnncc.ir.ops import OP_TABLE, OpContext
from cnncc.ir.ops.layout import fused_conv_of
from cnncc.ir.ops.spatial import Window, resolve_window
from cnncc.ir.rewrite import AnyValue, Builder, Match, Op, Opt, Param, Rule, apply_rules

# sigma_2 <= RANK1_TOL * sigma_1 (per channel) counts as rank 1: float32 weights built as an
# outer product have sigma_2 / sigma_1 ~ 1e-8; anything a trained net has is far above 1e-6.
RANK1_TOL = 1e-6
DW_OPS = ("Conv", "FusedConv", "ConvNCHWc")


def _float32(g: Graph, *values: str | None) -> bool:
    return all(g.types[v].dtype is DType.float32 for v in values if v)


def _window(g: Graph, node: Node) -> tuple[OpContext, Window]:
    """The resolved attributes and window of a Conv / FusedConv / ConvNCHWc (NCHWc input)."""
    conv = fused_conv_of(node) if node.op == "ConvNCHWc" else node
    opdef = OP_TABLE[conv.op]
    types = [g.types[i] if i else None for i in conv.inputs]
    octx = OpContext(conv, opdef, types, [g.params.get(i) if i else None for i in conv.inputs])
    x = g.types[node.inputs[0]].shape
    w = g.types[node.inputs[1]].shape
    if node.op == "ConvNCHWc" and node.attrs.get("in_layout", "NCHWc") == "NCHWc":
        x = (x[0], w[1] * octx["group"]) + tuple(x[2:-1])
    return octx, resolve_window(octx, x, w[2:])


def _is_depthwise(g: Graph, node: Node) -> bool:
    w = g.types[node.inputs[1]].shape
    if len(w) != 4 or w[1] != 1 or node.attrs.get("group", 1) != w[0]:
        return False
    return node.op != "ConvNCHWc" or node.attrs.get("in_layout", "NCHWc") == "NCHWc"


# ---- (a) depthwise -> pointwise fusion ---------------------------------------------------------

def _fuse(b: Builder, m: Match) -> bool:
    g = b.graph
    dw, pw = m.nodes["dw"], m.nodes["pw"]
    if not (_is_depthwise(g, dw) and pw.attrs.get("in_layout", "NCHWc") == "NCHWc"):
        return False
    if pw.attrs.get("group", 1) != 1 or pw.attrs["block"] != dw.attrs["block"]:
        return False
    if g.types[m.values["wpw"]].shape[2:] != (1, 1):
        return False
    if not _float32(g, pw.outputs[0], *dw.inputs, *pw.inputs):
        return False
    pctx, pwin = _window(g, pw)
    if any(pwin.pads) or any(s != 1 for s in pwin.strides):
        return False
    dctx, dwin = _window(g, dw)
    attrs = {"dw_pads": list(dwin.pads), "dw_strides": list(dwin.strides),
             "dw_dilations": list(dwin.dilations), "block": dw.attrs["block"]}
    for prefix, c in (("dw_", dctx), ("pw_", pctx)):
        if c["activation"]:
            attrs[prefix + "activation"] = c["activation"]
            attrs[prefix + "activation_params"] = list(c["activation_params"])
    inputs = [m.values["x"], m.values["wdw"], m.values["bdw"] or "", m.values["wpw"],
              m.values["bpw"] or "", m.values["z"] or ""]
    while not inputs[-1]:
        inputs.pop()
    b.node("DwPwConvNCHWc", inputs, attrs, outputs=list(pw.outputs), name=pw.name)
    return True


FUSE_RULES = [
    Rule("dw_pw", Op("ConvNCHWc",
                     Op("ConvNCHWc", AnyValue("x"), Param("wdw"), Opt(Param("bdw")), bind="dw"),
                     Param("wpw"), Opt(Param("bpw")), Opt(AnyValue("z")), bind="pw"), _fuse),
]


# ---- (b) rank-1 factoring ----------------------------------------------------------------------

def rank1_factors(w: np.ndarray, tol: float = RANK1_TOL) -> tuple[np.ndarray, np.ndarray] | None:
    """(u [C, KH], v [C, KW]) with w[c, 0] = outer(u[c], v[c]) for a depthwise weight
    [C, 1, KH, KW] whose every channel filter is rank 1 (relative tolerance ``tol``); else None."""
    u, v, s = _svd1(w)
    return (u, v) if np.all(s[:, 1] <= tol * s[:, 0]) else None


def rank1_approximation(w: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(u, v, max_c ||w[c, 0] - outer(u[c], v[c])||_F): the best rank-1 filters (Eckart-Young)
    when every channel's residual is <= ``tol`` x its filter's Frobenius norm; else None."""
    u, v, s = _svd1(w)
    resid = np.sqrt(np.sum(s[:, 1:] ** 2, axis=1))
    if np.any(resid > tol * np.sqrt(np.sum(s ** 2, axis=1))):
        return None
    return u, v, float(resid.max())


def _svd1(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The leading singular pair of every channel filter, each scaled by sqrt(sigma_1), and
    all singular values [C, min(KH, KW)]."""
    u, s, vt = np.linalg.svd(w[:, 0].astype(np.float64))
    root = np.sqrt(s[:, :1])
    return u[:, :, 0] * root, vt[:, 0, :] * root, s


def approx_tolerance(ctx) -> float | None:
    """The relative filter error the compile option dw_lowrank_tol allows, or None (exact
    rewrites only)."""
    tol = getattr(ctx, "lowrank_tol", None)
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise CompileError(f"dw_lowrank_tol={tol!r}: expected a relative filter error in "
                           "(0, 1), e.g. 0.01")
    return float(tol)


def _split_attrs(node: Node, win: Window, first: bool) -> dict:
    """Attributes of the KHx1 (``first``) or 1xKW conv replacing the depthwise ``node``."""
    top, left, bottom, right = win.pads
    sh, sw = win.strides
    kh, kw = win.kernel
    attrs = {k: v for k, v in node.attrs.items()
             if k not in ("auto_pad", "pads", "strides", "dilations", "kernel_shape")}
    if first:
        attrs.update(pads=[top, 0, bottom, 0], strides=[sh, 1], kernel_shape=[kh, 1])
        for k in ("activation", "activation_params"):
            attrs.pop(k, None)
    else:
        attrs.update(pads=[0, left, 0, right], strides=[1, sw], kernel_shape=[1, kw])
    return attrs


def _factor(b: Builder, m: Match, approx_tol: float | None = None) -> bool:
    g = b.graph
    node = m.root
    w = g.params[m.values["w"]]
    if not _is_depthwise(g, node) or not _float32(g, node.outputs[0], *node.inputs):
        return False
    if w.shape[2] < 3 or w.shape[3] < 3:
        return False
    _, win = _window(g, node)
    if any(d != 1 for d in win.dilations):
        return False
    factors = rank1_factors(w)
    if factors is None and approx_tol is not None:
        approx = rank1_approximation(w, approx_tol)
        if approx is None:
            return False
        u, v, err = approx
        print(f"depthwise_separable: {node.name}: {w.shape[2]}x{w.shape[3]} depthwise filters "
              f"replaced by rank-1 approximations (filter error <= {approx_tol:g} of each "
              f"filter's norm): every output before the activation is off by at most "
              f"{err:.3g} x ||its input window||_2", file=sys.stderr)
        factors = u, v
    if factors is None:
        return False
    u, v = factors
    c, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    wu = b.param(f"{node.name}_w_kx1", u.reshape(c, 1, kh, 1).astype(w.dtype))
    wv = b.param(f"{node.name}_w_1xk", v.reshape(c, 1, 1, kw).astype(w.dtype))
    # The first conv has no bias, residual nor activation: a plain Conv in NCHW.
    first_op = "ConvNCHWc" if node.op == "ConvNCHWc" else "Conv"
    first_attrs = _split_attrs(node, win, True)
    if first_op == "Conv":
        first_attrs = {k: v for k, v in first_attrs.items()
                       if k in ("pads", "strides", "kernel_shape", "group")}
    (mid,) = b.node(first_op, [m.values["x"], wu], first_attrs, name=f"{node.name}_kx1")
    rest = list(node.inputs[2:])
    b.node(node.op, [mid, wv] + rest, _split_attrs(node, win, False),
           outputs=list(node.outputs), name=node.name)
    return True


def _factor_rules(approx_tol: float | None) -> list[Rule]:
    return [Rule("rank1_dw", Op(DW_OPS, AnyValue("x"), Param("w"), Opt(AnyValue("b")), Opt(AnyValue("z")),
                                bind="conv"), functools.partial(_factor, approx_tol=approx_tol))]


def depthwise_separable(graph: Graph, ctx=None) -> Graph:
    """(a) then (b) of the module docstring (and (b') when ctx.lowrank_tol is set), each to a
    fixed point."""
    return apply_rules(apply_rules(graph, FUSE_RULES), _factor_rules(approx_tolerance(ctx)))
