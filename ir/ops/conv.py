"""Conv: N-d grouped, strided, dilated, padded convolution with optional bias (ONNX Conv-11+).

X is (N, C, D1..Dn), W is (M, C/group, k1..kn), B is (M,). The reference accumulates, for each
kernel position, a batched matrix product of the weights at that position with the strided view
of the padded input every output pixel sees there (float64 accumulation for float inputs).
"""
from __future__ import annotations

from math import prod

import numpy as np

from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, register
from .spatial import (WINDOW_ATTRS, Window, check_input, kernel_from_attr, matmul_dtype,
                      pad_spatial, resolve_window)


def check_group(ctx: OpContext, channels: int, w_shape: tuple[int, ...], group: int,
                transpose: bool = False) -> None:
    """Validate ``group`` against the input channels and the weight shape.

    Conv weights are (M, C/group, k...); ConvTranspose weights are (C, M/group, k...).
    """
    ctx.check(group >= 1, f"group must be >= 1, got {group}")
    ctx.check(channels % group == 0, f"group {group} does not divide the {channels} input "
              "channels")
    if transpose:
        ctx.check(w_shape[0] == channels, f"weight shape {list(w_shape)} needs {channels} "
                  f"(input channels) as its first dimension, got {w_shape[0]}")
        ctx.check(w_shape[1] >= 1, f"weight shape {list(w_shape)} has no output channels")
        return
    ctx.check(w_shape[1] == channels // group,
              f"weight shape {list(w_shape)} has {w_shape[1]} input channels per group; input has "
              f"{channels} channels and group {group}, so {channels // group} are expected")
    ctx.check(w_shape[0] >= 1, f"weight shape {list(w_shape)} has no output channels")
    ctx.check(w_shape[0] % group == 0, f"group {group} does not divide the {w_shape[0]} output "
              f"channels of weight shape {list(w_shape)}")


def check_weight_and_bias(ctx: OpContext, x: TensorType, w_index: int, b_index: int,
                          out_channels_of_w) -> TensorType:
    """Weight rank/dtype and the optional bias (rank 1, one value per output channel)."""
    w = ctx.type(w_index)
    ctx.check(w.rank == x.rank, f"weight W has rank {w.rank} (shape {list(w.shape)}) but input X "
              f"has rank {x.rank} (shape {list(x.shape)}); they must match")
    ctx.check(w.dtype == x.dtype, f"weight W is {w.dtype} but input X is {x.dtype}")
    if ctx.has(b_index):
        b = ctx.type(b_index)
        m = out_channels_of_w(w.shape)
        ctx.check(b.dtype == x.dtype, f"bias B is {b.dtype} but input X is {x.dtype}")
        ctx.check(b.shape == (m,), f"bias B has shape {list(b.shape)}, expected [{m}] "
                  "(one value per output channel)")
    return w


def _infer_conv(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X")
    w = check_weight_and_bias(ctx, x, 1, 2, lambda s: s[0])
    group = ctx["group"]
    check_group(ctx, x.shape[1], w.shape, group)
    kernel = kernel_from_attr(ctx, x.rank - 2, w.shape[2:])
    win = resolve_window(ctx, x.shape, kernel)
    return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + win.out)]


def window_of(ctx: OpContext, x: np.ndarray, w: np.ndarray) -> Window:
    """The resolved window for concrete inputs (reference side: inference already validated)."""
    return resolve_window(ctx, x.shape, w.shape[2:])


# Kernel positions are batched so that each matmul has an inner dimension of about this size:
# big enough for BLAS to be efficient on few-channel layers (e.g. a 7x7 stem on RGB), small enough
# that the gathered columns stay a few times the input size (and under _MAX_COLUMNS elements).
_INNER_TARGET = 256
_MAX_COLUMNS = 1 << 25


def accumulate_columns(y: np.ndarray, wg: np.ndarray, xp: np.ndarray, win: Window,
                       group: int) -> None:
    """y (N, G, Mg, P) += sum over kernel positions of wg[..., k] (G, Mg, Cg) @ columns.

    ``xp`` is the padded input (N, C, ...); ``wg`` is (G, Mg, Cg, K) in the accumulation type.
    """
    n, c = xp.shape[:2]
    cg = c // group
    pixels = y.shape[-1]
    positions = list(win.positions())
    if cg == 1:
        # Depthwise (one input channel per group): broadcast multiplies beat tiny matmuls.
        for k, pos in enumerate(positions):
            cols = xp[win.slices(pos)].reshape(n, group, 1, pixels)
            y += wg[None, :, :, 0, k, None] * cols
        return
    chunk = min(len(positions), -(-_INNER_TARGET // cg), max(1, _MAX_COLUMNS // (n * c * pixels)))
    out = tuple(win.out)
    buf = np.empty((n, group, chunk, cg) + out, xp.dtype)
    for k0 in range(0, len(positions), chunk):
        part = positions[k0:k0 + chunk]
        q = len(part)
        for j, pos in enumerate(part):
            # Splitting C into (G, Cg) keeps the strided slice a view: one copy per position.
            buf[:, :, j] = xp[win.slices(pos)].reshape((n, group, cg) + out)
        cols = buf[:, :, :q].reshape(n, group, q * cg, pixels)
        w_part = wg[..., k0:k0 + q].transpose(0, 1, 3, 2).reshape(group, wg.shape[1], q * cg)
        y += np.matmul(w_part[None], cols)


def conv_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, win: Window,
            group: int) -> np.ndarray:
    """Grouped N-d convolution of ``x`` by ``w`` over window ``win``; result in x's dtype."""
    n, c = x.shape[:2]
    m = w.shape[0]
    acc = matmul_dtype(x.dtype, n * m * (c // group) * prod(win.out) * prod(win.kernel))
    xp = pad_spatial(x.astype(acc, copy=False), win)
    wg = w.astype(acc, copy=False).reshape(group, m // group, c // group, -1)
    y = np.zeros((n, group, m // group, prod(win.out)), acc)
    accumulate_columns(y, wg, xp, win, group)
    y = y.reshape((n, m) + win.out)
    if b is not None:
        y += b.astype(acc).reshape((1, m) + (1,) * win.nd)
    return y.astype(x.dtype)


def _conv_reference(ctx: OpContext, x: np.ndarray, w: np.ndarray,
                    b: np.ndarray | None = None) -> np.ndarray:
    return conv_nd(x, w, b, window_of(ctx, x, w), ctx["group"])


register(OpDef("Conv", infer=_infer_conv, reference=_conv_reference, inputs=(2, 3),
               attrs={**WINDOW_ATTRS, "group": Attr("int", 1)},
               doc="N-d grouped convolution (ONNX Conv)."))
