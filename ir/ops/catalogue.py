"""Layers ONNX lacks (cnncc's own domain): LocallyConnected2d, TiledConv2d, Maxout.

    LocallyConnected2d(X, W, B?; strides, pads, dilations)
        X [N, C, H, W], W [OH, OW, OC, C, KH, KW], B [OC, OH, OW] (optional):
        Y[n, o, i, j] = B[o, i, j] + sum_{c, u, v} W[i, j, o, c, u, v] * Xpad[n, c, i*sh + u*dh,
        j*sw + v*dw]: a convolution with a separate filter at every output position (no weight
        sharing; Taigman et al.'s DeepFace, Huang et al.'s unshared convolutions).
    TiledConv2d(X, W, B?; strides, pads, dilations)
        W [TH, TW, OC, C, KH, KW], B [OC] (optional): output position (i, j) uses filter set
        W[i % TH, j % TW] (Ngiam et al., "Tiled convolutional neural networks", 2010): TH = TW =
        1 is a convolution, TH = OH and TW = OW a locally connected layer.
    Maxout(X; pieces)
        X [N, C, ...] with C % pieces == 0: Y[n, j, ...] = max_{p < pieces} X[n, j*pieces + p, ...]
        (Goodfellow et al., 2013: each output unit the max of ``pieces`` consecutive channels).

``pads`` are ONNX-ordered (top, left, bottom, right). The export writes these ops as ONNX
model-local functions of the ``cnncc`` domain whose bodies use standard ops only
(cnncc/onnx_functions.py); the importer maps the calls back to these ops.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, register
from .spatial import Window, acc_dtype, check_input, pad_spatial, resolve_window

# The domain of these ops in exported ONNX files.
DOMAIN = "cnncc"

_WINDOW = {"strides": Attr("ints", []), "pads": Attr("ints", []),
           "dilations": Attr("ints", [])}


def _window(ctx: OpContext, x_shape: tuple, kernel: tuple) -> Window:
    return resolve_window(ctx, x_shape, kernel)


def _infer_unshared(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X", min_rank=4)
    ctx.check(x.rank == 4, f"input X must be (N, C, H, W), got shape {list(x.shape)}")
    w = ctx.type(1)
    ctx.check(w.dtype == x.dtype, f"W is {w.dtype} but X is {x.dtype}")
    ctx.check(w.rank == 6, f"W must have rank 6 [{'OH, OW' if _local(ctx) else 'TH, TW'}, OC, "
              f"C, KH, KW], got shape {list(w.shape)}")
    ctx.check(w.shape[3] == x.shape[1], f"W reads {w.shape[3]} channels but X has "
              f"{x.shape[1]}")
    win = _window(ctx, x.shape, w.shape[4:])
    oc = w.shape[2]
    if _local(ctx):
        ctx.check(tuple(w.shape[:2]) == win.out, f"W has filters for {list(w.shape[:2])} "
                  f"output positions but the output is {list(win.out)}")
        bias_shape = (oc,) + win.out
    else:
        bias_shape = (oc,)
    if ctx.has(2):
        b = ctx.type(2)
        ctx.check(b.dtype == x.dtype and b.shape == bias_shape,
                  f"B must be {x.dtype} of shape {list(bias_shape)}, got {b}")
    return [TensorType(x.dtype, (x.shape[0], oc) + win.out)]


def _local(ctx: OpContext) -> bool:
    return ctx.op.name == "LocallyConnected2d"


def unshared_filters(w: np.ndarray, out: tuple) -> np.ndarray:
    """The [OH, OW, OC, C, KH, KW] filters of every output position (a tiled W repeated)."""
    th, tw = w.shape[:2]
    rows, cols = np.arange(out[0]) % th, np.arange(out[1]) % tw
    return w[rows[:, None], cols[None, :]]


def _unshared_reference(ctx: OpContext, x: np.ndarray, w: np.ndarray,
                        b: np.ndarray | None = None) -> np.ndarray:
    acc = acc_dtype(x.dtype)
    win = _window(ctx, x.shape, w.shape[4:])
    xp = pad_spatial(x.astype(acc, copy=False), win)
    full = unshared_filters(w, win.out).astype(acc, copy=False)
    y = np.zeros((x.shape[0], w.shape[2]) + win.out, acc)
    for pos in win.positions():
        patch = xp[win.slices(pos)]                                   # [N, C, OH, OW]
        y += np.einsum("nchw,hwoc->nohw", patch, full[:, :, :, :, pos[0], pos[1]])
    if b is not None:
        y += b.astype(acc).reshape((1, w.shape[2]) + ((1, 1) if b.ndim == 1 else b.shape[1:]))
    return y.astype(x.dtype)


register(OpDef("LocallyConnected2d", infer=_infer_unshared, reference=_unshared_reference,
               inputs=(2, 3), attrs=dict(_WINDOW),
               doc="2-D convolution with a separate filter at every output position."))
register(OpDef("TiledConv2d", infer=_infer_unshared, reference=_unshared_reference,
               inputs=(2, 3), attrs=dict(_WINDOW),
               doc="2-D convolution whose filter set rotates through TH x TW tiles of output "
                   "positions."))


def _infer_maxout(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X", min_rank=2)
    pieces = ctx["pieces"]
    ctx.check(pieces >= 1, f"pieces must be >= 1, got {pieces}")
    ctx.check(x.shape[1] % pieces == 0, f"pieces={pieces} does not divide the {x.shape[1]} "
              "channels")
    return [TensorType(x.dtype, (x.shape[0], x.shape[1] // pieces) + x.shape[2:])]


def _maxout_reference(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    p = ctx["pieces"]
    return x.reshape((x.shape[0], x.shape[1] // p, p) + x.shape[2:]).max(axis=2)


register(OpDef("Maxout", infer=_infer_maxout, reference=_maxout_reference,
               attrs={"pieces": Attr("int")},
               doc="Max over groups of `pieces` consecutive channels."))

# The ops of the cnncc domain, in the order the exporter and importer list them.
CNNCC_OPS = ("LocallyConnected2d", "TiledConv2d", "Maxout")


def is_cnncc_op(domain: str, op_type: str) -> bool:
    """Whether an ONNX node (or model-local function) of ``domain`` is one of these ops."""
    return domain == DOMAIN and op_type in CNNCC_OPS
