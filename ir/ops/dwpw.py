"""DwPwConvNCHWc: a depthwise conv and the pointwise conv reading it, as one op (made by the
depthwise_separable pass; internal op).

    DwPwConvNCHWc(Xb, Wdw, Bdw?, Wpw, Bpw?, Zb?; dw_*, pw_activation, pw_activation_params, block)
        = ConvNCHWc(ConvNCHWc(Xb, Wdw, Bdw; group=C, dw_*), Wpw, Bpw, Zb; 1x1, pw_activation)

Xb is [N, C/c, H, W, c] (NCHW{c}c, c = block), Wdw is [C, 1, KH, KW], Wpw is [OC, C, 1, 1], Zb
(the residual, optional) has the output's shape [N, OC/c, OH, OW, c]. The depthwise conv takes
dw_pads (ONNX order, explicit), dw_strides, dw_dilations and its activation dw_activation /
dw_activation_params; the pointwise conv is 1x1, stride 1, unpadded, group 1, with
pw_activation / pw_activation_params applied after its bias and the residual. The reference is
the ConvNCHWc reference applied twice (so the padding lanes are 0, like ConvNCHWc's).
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.node import Node
from .registry import OP_TABLE, Attr, OpContext, OpDef, register, run_reference

# Attributes of the depthwise conv -> the ConvNCHWc attribute each one becomes.
DW_ATTRS = {"dw_pads": "pads", "dw_strides": "strides", "dw_dilations": "dilations",
            "dw_activation": "activation", "dw_activation_params": "activation_params"}
PW_ATTRS = {"pw_activation": "activation", "pw_activation_params": "activation_params"}


def dw_node(node: Node, attrs: dict, channels: int) -> Node:
    """The depthwise ConvNCHWc of a DwPwConvNCHWc node (inputs X, Wdw, Bdw); ``attrs`` are
    the node's attributes with defaults filled (OpContext.attrs)."""
    attrs = {conv: attrs[k] for k, conv in DW_ATTRS.items()} | \
        {"group": channels, "block": attrs["block"]}
    return Node("ConvNCHWc", list(node.inputs[:3]), [f"{node.name}_dw"], attrs,
                f"{node.name}_dw")


def pw_node(node: Node, attrs: dict, mid: str) -> Node:
    """The pointwise ConvNCHWc of a DwPwConvNCHWc node, reading ``mid`` (inputs Wpw, Bpw, Z)."""
    attrs = {conv: attrs[k] for k, conv in PW_ATTRS.items()} | {"block": attrs["block"]}
    return Node("ConvNCHWc", [mid] + list(node.inputs[3:6]), list(node.outputs), attrs,
                node.name)


def _sub_context(node: Node, ctx: OpContext, indices: list[int], types: list) -> OpContext:
    consts = [ctx.consts[i] if i < len(ctx.consts) else None for i in indices]
    return OpContext(node, OP_TABLE["ConvNCHWc"], types, consts)


def _infer(ctx: OpContext) -> list:
    ctx.check(ctx.has(0) and ctx.has(1) and ctx.has(3), "X, Wdw and Wpw are required")
    wdw, wpw = ctx.type(1), ctx.type(3)
    ctx.check(wdw.rank == 4 and wdw.shape[1] == 1,
              f"Wdw must be a depthwise weight [C, 1, KH, KW], got shape {list(wdw.shape)}")
    ctx.check(wpw.rank == 4 and wpw.shape[2:] == (1, 1),
              f"Wpw must be a pointwise weight [OC, C, 1, 1], got shape {list(wpw.shape)}")
    ctx.check(wpw.shape[1] == wdw.shape[0], f"Wpw reads {wpw.shape[1]} channels but the "
              f"depthwise conv makes {wdw.shape[0]}")
    dw = dw_node(ctx.node, ctx.attrs, wdw.shape[0])
    types = [ctx.types[i] if i < len(ctx.types) else None for i in range(6)]
    (mid,) = OP_TABLE["ConvNCHWc"].infer(_sub_context(dw, ctx, [0, 1, 2], types[:3]))
    pw = pw_node(ctx.node, ctx.attrs, dw.outputs[0])
    return OP_TABLE["ConvNCHWc"].infer(_sub_context(pw, ctx, [0, 3, 4, 5],
                                                    [mid] + types[3:6]))


def _reference(ctx: OpContext, x: np.ndarray, wdw: np.ndarray, bdw: np.ndarray | None,
               wpw: np.ndarray, bpw: np.ndarray | None = None,
               z: np.ndarray | None = None) -> np.ndarray:
    dw = dw_node(ctx.node, ctx.attrs, wdw.shape[0])
    (mid,) = run_reference(dw, [x, wdw, bdw])
    (y,) = run_reference(pw_node(ctx.node, ctx.attrs, dw.outputs[0]), [mid, wpw, bpw, z])
    return y


register(OpDef("DwPwConvNCHWc", infer=_infer, reference=_reference, inputs=(4, 6),
               attrs={"dw_pads": Attr("ints", []), "dw_strides": Attr("ints", []),
                      "dw_dilations": Attr("ints", []), "dw_activation": Attr("str", ""),
                      "dw_activation_params": Attr("floats", []),
                      "pw_activation": Attr("str", ""),
                      "pw_activation_params": Attr("floats", []), "block": Attr("int")},
               doc="Pointwise ConvNCHWc of a depthwise ConvNCHWc, fused (internal op of "
                   "depthwise_separable)."))
