"""Blocked-channel (NCHWc) layout ops, made by the alter_layout_nchwc pass (internal ops).

A 2-D activation X[N, C, H, W] in NCHW{c}c is Xb[N, ceil(C/c), H, W, c] with

    Xb[n, cb, h, w, j] = X[n, cb*c + j, h, w]       (cb*c + j < C; the padding lanes are 0)

so the c channels of one pixel are one vector. The ops:

    ToNCHWc(X; block=c)                    = Xb
    FromNCHWc(Xb; channels=C)              = X
    ConvNCHWc(Xb, W, B?, Zb?, Sb?, Pb?, Qb?; conv attrs, activation, activation_params, block,
              in_layout, pre_activation, pre_activation_params)
                                           = block(FusedConv(pre(X * P + Q) * S, W, B, Z))
    PoolNCHWc(Xb; kind, pool attrs)        = block(kind(X))          (kind: MaxPool, AveragePool)

W and B stay in ONNX layout in the graph (the lowering packs them once, at compile time).
ConvNCHWc takes X in plain NCHW when in_layout = "NCHW" (a stem reading the network's RGB input
directly) and handles group = 1, depthwise (group = in channels = out channels) and grouped
convs whose groups tile the blocks (``group_span``). Sb (dense 1x1 convs of blocked input
only) is a per-input-channel scale [N, ICb, 1, 1, c] applied to X before the conv (a
squeeze-excitation gate; the lowering scales the weights). Pb, Qb (both or neither; dense
unpadded convs of blocked input) are a per-input-channel affine [1 or N, ICb, 1, 1, c] and
pre_activation its activation, applied to X as the conv reads it (a prologue: DenseNet's and
pre-activation ResNets' BN + ReLU; fuse_prologue); a padded conv cannot take one (its zero
padding would go through the affine). Lanes of the
padding channels of an op's output are unspecified by the kernels (finite when the inputs are):
every consumer ignores them (a conv has zero weights for them, FromNCHWc drops them). The
references here give 0 there. Elementwise ops, reductions over H, W and channel Concats of
blocked tensors are the ordinary ops on the 5-D arrays.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.node import Node
from cnncc.ir.types import TensorType
from .fused import CONV_ATTRS, check_activation, run_activation
from .registry import OP_TABLE, Attr, OpContext, OpDef, register, run_reference
from .spatial import WINDOW_ATTRS

LAYOUTS = ("NCHWc", "NCHW")
POOL_KINDS = ("MaxPool", "AveragePool")


def blocked_shape(shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    """[N, C, *S] -> [N, ceil(C/block), *S, block]."""
    return (shape[0], -(-shape[1] // block)) + tuple(shape[2:]) + (block,)


def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    n, c = x.shape[:2]
    cb = -(-c // block)
    xp = np.zeros((n, cb * block) + x.shape[2:], x.dtype)
    xp[:, :c] = x
    xp = xp.reshape((n, cb, block) + x.shape[2:])
    return np.ascontiguousarray(np.moveaxis(xp, 2, -1))


def from_blocked(xb: np.ndarray, channels: int) -> np.ndarray:
    n, cb, block = xb.shape[0], xb.shape[1], xb.shape[-1]
    x = np.moveaxis(xb, -1, 2).reshape((n, cb * block) + xb.shape[2:-1])
    return np.ascontiguousarray(x[:, :channels])


def _check_block(ctx: OpContext) -> int:
    block = ctx["block"]
    ctx.check(block in (1, 2, 4, 8, 16, 32), f"block must be a power of two <= 32, got {block}")
    return block


def _check_blocked(ctx: OpContext, i: int, what: str, block: int, channels: int) -> TensorType:
    t = ctx.type(i)
    ctx.check(t.rank == 5, f"{what} must be a 2-D NCHWc tensor [N, C/c, H, W, c], got shape "
              f"{list(t.shape)}")
    ctx.check(t.shape[-1] == block, f"{what} has blocks of {t.shape[-1]} channels, the op "
              f"uses {block}")
    ctx.check(t.shape[1] == -(-channels // block), f"{what} has {t.shape[1]} channel blocks; "
              f"{channels} channels need {-(-channels // block)}")
    return t


def _unblocked_type(t: TensorType, channels: int) -> TensorType:
    return TensorType(t.dtype, (t.shape[0], channels) + tuple(t.shape[2:-1]))


# ---- ToNCHWc / FromNCHWc --------------------------------------------------------------------

def _infer_to(ctx: OpContext) -> list[TensorType]:
    block = _check_block(ctx)
    x = ctx.type(0)
    ctx.check(x.rank == 4, f"ToNCHWc takes a 2-D NCHW tensor, got shape {list(x.shape)}")
    return [TensorType(x.dtype, blocked_shape(x.shape, block))]


def _infer_from(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    ctx.check(x.rank == 5, f"FromNCHWc takes a 2-D NCHWc tensor, got shape {list(x.shape)}")
    c = ctx["channels"]
    ctx.check(0 < c <= x.shape[1] * x.shape[-1] and c > (x.shape[1] - 1) * x.shape[-1],
              f"channels={c} does not fit {x.shape[1]} blocks of {x.shape[-1]}")
    return [_unblocked_type(x, c)]


register(OpDef("ToNCHWc", infer=_infer_to,
               reference=lambda ctx, x: to_blocked(x, ctx["block"]),
               attrs={"block": Attr("int")},
               doc="NCHW -> NCHW{c}c, the padding channels zero (internal op)."))
register(OpDef("FromNCHWc", infer=_infer_from,
               reference=lambda ctx, x: from_blocked(x, ctx["channels"]),
               attrs={"channels": Attr("int")},
               doc="NCHW{c}c -> NCHW, the padding channels dropped (internal op)."))


# ---- ConvNCHWc ------------------------------------------------------------------------------

def fused_conv_of(node: Node) -> Node:
    """The FusedConv (NCHW) that a ConvNCHWc node computes, blocked (the input scale S aside)."""
    attrs = {k: v for k, v in node.attrs.items()
             if k in CONV_ATTRS or k in ("activation", "activation_params")}
    return Node("FusedConv", list(node.inputs[:4]), list(node.outputs), attrs, node.name)


def group_span(ic: int, oc: int, group: int, block: int) -> int | None:
    """The input channels K that one output block of a grouped (not depthwise) ConvNCHWc reads.

    With k = IC / group = OC / group channels per group and k dividing the block (or the block
    dividing k), output block b reads the K = max(k, block) input channels from
    (b * block // K) * K on: its own groups' inputs, a whole number of input blocks. None for
    group 1, depthwise convs and groupings that do not tile the blocks."""
    if group <= 1 or ic != oc or ic % group:
        return None
    k = ic // group
    if k == 1 or (block % k and k % block):
        return None
    return max(k, block)


def _conv_channels(ctx: OpContext) -> tuple[int, int]:
    w = ctx.type(1)
    ctx.check(w.rank == 4, f"ConvNCHWc is 2-D: W must be [OC, IC/group, KH, KW], got shape "
              f"{list(w.shape)}")
    group = ctx["group"]
    ctx.check(group >= 1, f"group must be >= 1, got {group}")
    ic, oc = w.shape[1] * group, w.shape[0]
    ctx.check(group == 1 or (w.shape[1] == 1 and group == oc)
              or group_span(ic, oc, group, ctx["block"]) is not None,
              f"ConvNCHWc handles group=1, depthwise convs and groups of k channels in and out "
              f"with k dividing the block {ctx['block']} or a multiple of it, got group={group} "
              f"with W shape {list(w.shape)}")
    return ic, oc


def _infer_conv(ctx: OpContext) -> list[TensorType]:
    block = _check_block(ctx)
    layout = ctx["in_layout"]
    ctx.check(layout in LAYOUTS, f"in_layout must be one of {LAYOUTS}, got '{layout}'")
    ic, oc = _conv_channels(ctx)
    if layout == "NCHW":
        x = ctx.type(0)
        ctx.check(ctx["group"] == 1, "a grouped ConvNCHWc reads a blocked input")
    else:
        x = _unblocked_type(_check_blocked(ctx, 0, "X", block, ic), ic)
    types = [x, ctx.type(1), ctx.type(2) if ctx.has(2) else None]
    if ctx.has(3):
        types.append(_unblocked_type(_check_blocked(ctx, 3, "residual Z", block, oc), oc))
    if ctx.has(4):
        s, xb = ctx.type(4), ctx.type(0)
        ctx.check(layout == "NCHWc" and ctx["group"] == 1 and ctx.type(1).shape[2:] == (1, 1),
                  "the input scale S is for dense 1x1 convs of blocked input")
        want = (xb.shape[0], xb.shape[1], 1, 1, block)
        ctx.check(s.shape == want and s.dtype == xb.dtype,
                  f"input scale S must be {xb.dtype}{list(want)}, got {s.dtype}{list(s.shape)}")
    _check_prologue(ctx, layout, block)
    fused = fused_conv_of(ctx.node)
    (y,) = OP_TABLE["FusedConv"].infer(OpContext(fused, OP_TABLE["FusedConv"], types,
                                                 ctx.consts))
    return [TensorType(y.dtype, blocked_shape(y.shape, block))]


def _check_prologue(ctx: OpContext, layout: str, block: int) -> None:
    """The prologue inputs P, Q (both or neither) and pre_activation of a ConvNCHWc."""
    check_activation(ctx, "pre_activation")
    if not (ctx.has(5) or ctx.has(6)):
        ctx.check(not ctx["pre_activation"], "pre_activation needs the prologue inputs P and Q")
        return
    ctx.check(ctx.has(5) and ctx.has(6), "the prologue takes both P (scale) and Q (shift)")
    pads, auto = ctx["pads"], ctx["auto_pad"]
    ctx.check(layout == "NCHWc" and ctx["group"] == 1 and not any(pads or [])
              and auto in ("NOTSET", "VALID"),
              "the prologue P, Q is for dense unpadded convs of blocked input (a padded conv "
              "would apply it to its zero padding)")
    xb = ctx.type(0)
    for i, what in ((5, "P"), (6, "Q")):
        t = ctx.type(i)
        want = (t.shape[0] if t.shape and t.shape[0] == xb.shape[0] else 1, xb.shape[1], 1, 1,
                block)
        ctx.check(t.shape == want and t.dtype == xb.dtype,
                  f"prologue {what} must be {xb.dtype}{list(want)}, got {t.dtype}"
                  f"{list(t.shape)}")


def _conv_reference(ctx: OpContext, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                    z: np.ndarray | None = None, s: np.ndarray | None = None,
                    p: np.ndarray | None = None, q: np.ndarray | None = None) -> np.ndarray:
    ic, oc = w.shape[1] * ctx["group"], w.shape[0]
    if p is not None and q is not None:
        x = run_activation(ctx["pre_activation"], ctx["pre_activation_params"], x * p + q,
                           ctx.node.name).astype(x.dtype)
    if s is not None:
        x = x * s
    if ctx["in_layout"] == "NCHWc":
        x = from_blocked(x, ic)
    if z is not None:
        z = from_blocked(z, oc)
    fused = fused_conv_of(ctx.node)
    (y,) = run_reference(fused, [x, w, b, z])
    return to_blocked(y, ctx["block"])


register(OpDef("ConvNCHWc", infer=_infer_conv, reference=_conv_reference, inputs=(2, 7),
               attrs={**WINDOW_ATTRS, "group": Attr("int", 1), "activation": Attr("str", ""),
                      "activation_params": Attr("floats", []), "block": Attr("int"),
                      "in_layout": Attr("str", "NCHWc"), "pre_activation": Attr("str", ""),
                      "pre_activation_params": Attr("floats", [])},
               doc="FusedConv on NCHW{c}c activations (internal op of alter_layout_nchwc)."))


# ---- PoolNCHWc ------------------------------------------------------------------------------

def pool_of(node: Node) -> Node:
    """The NCHW pool node that a PoolNCHWc node computes, blocked."""
    attrs = {k: v for k, v in node.attrs.items() if k != "kind"}
    return Node(node.attrs.get("kind", ""), list(node.inputs), list(node.outputs), attrs,
                node.name)


def _infer_pool(ctx: OpContext) -> list[TensorType]:
    kind = ctx["kind"]
    ctx.check(kind in POOL_KINDS, f"kind must be one of {POOL_KINDS}, got '{kind}'")
    x = ctx.type(0)
    ctx.check(x.rank == 5, f"PoolNCHWc takes a 2-D NCHWc tensor, got shape {list(x.shape)}")
    block = x.shape[-1]
    channels = x.shape[1] * block
    node = pool_of(ctx.node)
    if kind == "MaxPool":
        node.attrs.pop("count_include_pad", None)
    y = OP_TABLE[kind].infer(OpContext(node, OP_TABLE[kind], [_unblocked_type(x, channels)],
                                       [None]))[0]
    return [TensorType(y.dtype, blocked_shape(y.shape, block))]


def _pool_reference(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    block = x.shape[-1]
    node = pool_of(ctx.node)
    if ctx["kind"] == "MaxPool":
        node.attrs.pop("count_include_pad", None)
    (y,) = run_reference(node, [from_blocked(x, x.shape[1] * block)])
    return to_blocked(y, block)


register(OpDef("PoolNCHWc", infer=_infer_pool, reference=_pool_reference,
               attrs={**WINDOW_ATTRS, "ceil_mode": Attr("int", 0),
                      "count_include_pad": Attr("int", 0), "kind": Attr("str")},
               doc="MaxPool / AveragePool on NCHW{c}c activations (internal op)."))
