"""DeformConv (ONNX opset 19): convolution whose sampling points are shifted by learned offsets.

Inputs: X (N, C, D1..Dn), W (M, C/group, k1..kn), offset (N, offset_group * n * K, O1..On) with
K = k1 * .. * kn, optional B (M,), optional mask (N, offset_group * K, O1..On). Offsets are laid
out as (offset_group, kernel position (row-major), spatial axis); the input channels are split
into offset_group consecutive blocks that share offsets and mask. Each sample point is read with
multilinear (bilinear in 2-d) interpolation, where neighbours outside the input count as zero.
"""
from __future__ import annotations

from itertools import product
from math import prod

import numpy as np

from cnncc.ir.types import TensorType
from .conv import check_group, check_weight_and_bias
from .registry import Attr, OpContext, OpDef, register
from .spatial import check_input, kernel_from_attr, matmul_dtype, resolve_window


def _infer(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X")
    w = check_weight_and_bias(ctx, x, 1, 3, lambda s: s[0])
    group = ctx["group"]
    check_group(ctx, x.shape[1], w.shape, group)
    nd = x.rank - 2
    kernel = kernel_from_attr(ctx, nd, w.shape[2:])
    win = resolve_window(ctx, x.shape, kernel)
    og = ctx["offset_group"]
    ctx.check(og >= 1, f"offset_group must be >= 1, got {og}")
    ctx.check(x.shape[1] % og == 0, f"offset_group {og} does not divide the {x.shape[1]} input "
              "channels")
    k = prod(kernel)
    expect = (x.shape[0], og * nd * k) + win.out
    off = ctx.type(2)
    ctx.check(off.dtype == x.dtype, f"offset is {off.dtype} but input X is {x.dtype}")
    ctx.check(off.shape == expect, f"offset has shape {list(off.shape)}, expected "
              f"{list(expect)} (N, offset_group*{nd}*{k}, output spatial)")
    if ctx.has(4):
        mask = ctx.type(4)
        expect = (x.shape[0], og * k) + win.out
        ctx.check(mask.dtype == x.dtype, f"mask is {mask.dtype} but input X is {x.dtype}")
        ctx.check(mask.shape == expect, f"mask has shape {list(mask.shape)}, expected "
                  f"{list(expect)} (N, offset_group*{k}, output spatial)")
    return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + win.out)]


def _sample(x: np.ndarray, coords: list[np.ndarray], spatial: tuple[int, ...]) -> np.ndarray:
    """Multilinear samples of x (N, OG, Cog, S) at float coordinates (each (N, OG, P)).

    Returns (N, OG, Cog, P); neighbours outside the input contribute zero.
    """
    lows = [np.floor(c) for c in coords]
    fracs = [c - lo for c, lo in zip(coords, lows)]
    out = np.zeros(x.shape[:3] + coords[0].shape[-1:], x.dtype)
    for corner in product((0, 1), repeat=len(spatial)):
        weight = np.ones_like(coords[0])
        valid = np.ones(coords[0].shape, bool)
        flat = np.zeros(coords[0].shape, np.intp)
        for axis, size in enumerate(spatial):
            idx = lows[axis] + corner[axis]
            weight = weight * (fracs[axis] if corner[axis] else 1.0 - fracs[axis])
            inside = (idx >= 0) & (idx < size)
            valid &= inside
            # Out-of-range (or non-finite) indices are replaced before the integer cast.
            flat = flat * size + np.where(inside, idx, 0).astype(np.intp)
        flat = np.where(valid, flat, 0)
        vals = np.take_along_axis(x, flat[:, :, None, :], axis=3)
        out += vals * np.where(valid, weight, 0.0)[:, :, None, :]
    return out


def _reference(ctx: OpContext, x: np.ndarray, w: np.ndarray, offset: np.ndarray,
               b: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    n, c = x.shape[:2]
    m = w.shape[0]
    group, og = ctx["group"], ctx["offset_group"]
    spatial = x.shape[2:]
    nd = len(spatial)
    win = resolve_window(ctx, x.shape, w.shape[2:])
    pixels = prod(win.out)
    k_total = prod(win.kernel)
    acc = matmul_dtype(x.dtype, n * m * (c // group) * pixels * k_total)
    xs = x.astype(acc, copy=False).reshape(n, og, c // og, prod(spatial))
    off = offset.astype(acc, copy=False).reshape(n, og, k_total, nd, pixels)
    msk = None if mask is None else mask.astype(acc, copy=False).reshape(n, og, k_total, pixels)
    # Unshifted sampling origin of every output pixel along each axis, flattened to (P,).
    grids = np.meshgrid(*(np.arange(o) * s - win.begin(a) for a, (o, s)
                          in enumerate(zip(win.out, win.strides))), indexing="ij")
    origin = [g.reshape(-1).astype(acc) for g in grids]
    wg = w.astype(acc, copy=False).reshape(group, m // group, c // group, k_total)
    y = np.zeros((n, group, m // group, pixels), acc)
    for k, pos in enumerate(win.positions()):
        coords = [origin[a] + pos[a] * win.dilations[a] + off[:, :, k, a, :] for a in range(nd)]
        cols = _sample(xs, coords, spatial)
        if msk is not None:
            cols *= msk[:, :, k, None, :]
        cols = cols.reshape(n, group, c // group, pixels)
        y += np.matmul(wg[None, ..., k], cols)
    y = y.reshape((n, m) + win.out)
    if b is not None:
        y += b.astype(acc).reshape((1, m) + (1,) * nd)
    return y.astype(x.dtype)


register(OpDef("DeformConv", infer=_infer, reference=_reference, inputs=(3, 5),
               attrs={"dilations": Attr("ints", []), "group": Attr("int", 1),
                      "kernel_shape": Attr("ints", []), "offset_group": Attr("int", 1),
                      "pads": Attr("ints", []), "strides": Attr("ints", [])},
               doc="Deformable convolution (ONNX DeformConv-19)."))
