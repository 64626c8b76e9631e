"""ChannelLayerNorm: layer normalization over the channel axis of a feature map, at every pixel
(ConvNeXt's LayerNorm, which exporters write as Transpose -> LayerNormalization(axis -1) ->
Transpose; made by the lift_channels_last pass).

    ChannelLayerNorm(X, Scale, B; epsilon, block=0)
        block 0:  X [N, C, *S]           y[n, c, s] = (x - mean_c) / sqrt(var_c + eps) Scale[c] + B[c]
        block b:  X [N, ceil(C/b), *S, b] blocked (NCHWc); ``channels`` = C, the padding lanes
                  are not part of the statistics (their output is 0)

Scale and B have shape [C]. Statistics in float64 in the reference.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, register


def _channels(ctx: OpContext) -> int:
    x = ctx.type(0)
    return ctx["channels"] if ctx["block"] else x.shape[1]


def _infer(ctx: OpContext) -> list[TensorType]:
    x = ctx.type(0)
    ctx.check(x.dtype.is_float, f"X must be a float tensor, got {x.dtype}")
    block = ctx["block"]
    ctx.check(x.rank >= (3 if block else 2), f"X of rank {x.rank} has no channel axis")
    c = _channels(ctx)
    if block:
        ctx.check(block > 0 and x.shape[-1] == block and x.shape[1] == -(-c // block),
                  f"blocked X {list(x.shape)} does not hold {c} channels in blocks of {block}")
    for i, what in ((1, "Scale"), (2, "B")):
        t = ctx.type(i)
        ctx.check(t.shape == (c,) and t.dtype == x.dtype,
                  f"{what} must be {x.dtype}[{c}], got {t.dtype}{list(t.shape)}")
    return [x]


def _reference(ctx: OpContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    block, c = ctx["block"], _channels(ctx)
    xa = x.astype(np.float64)
    if block:        # [N, CB, *S, b] -> [N, CB * b, *S], padding channels dropped
        xa = np.moveaxis(xa, -1, 2).reshape((x.shape[0], -1) + x.shape[2:-1])[:, :c]
    mean = xa.mean(axis=1, keepdims=True)
    var = ((xa - mean) ** 2).mean(axis=1, keepdims=True)
    shape = (1, c) + (1,) * (xa.ndim - 2)
    y = (xa - mean) / np.sqrt(var + ctx["epsilon"]) * scale.astype(np.float64).reshape(shape) \
        + bias.astype(np.float64).reshape(shape)
    if block:
        cb = x.shape[1]
        yp = np.zeros((x.shape[0], cb * block) + x.shape[2:-1])
        yp[:, :c] = y
        y = np.moveaxis(yp.reshape((x.shape[0], cb, block) + x.shape[2:-1]), 2, -1)
    return np.ascontiguousarray(y).astype(x.dtype)


register(OpDef("ChannelLayerNorm", infer=_infer, reference=_reference, inputs=(3, 3),
               attrs={"epsilon": Attr("float", 1e-5), "block": Attr("int", 0),
                      "channels": Attr("int", 0)},
               doc="LayerNorm over the channel axis of NCHW or NCHWc maps (internal op of "
                   "lift_channels_last)."))
