"""Resize (ONNX opset 19 form): nearest / linear / cubic interpolation along chosen axes.

Inputs: X, roi (used by tf_crop_and_resize only), scales, sizes (exactly one of the two, given as a
compile-time constant; an empty tensor counts as absent). Interpolation is separable, so the
reference resamples one axis at a time: every output coordinate maps to a source coordinate
(coordinate_transformation_mode), and the output is a weighted sum of nearby source elements
(indices clamped to the edge; exclude_outside drops and renormalizes the taps that fall outside;
antialias widens the linear/cubic filter by 1/scale when downscaling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cnncc.ir.types import MAX_ELEMENTS, TensorType
from .registry import Attr, OpContext, OpDef, register
from .shape import unique_axes

MODES = ("nearest", "linear", "cubic")
COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
POLICIES = ("stretch", "not_larger", "not_smaller")


@dataclass
class ResizePlan:
    out_shape: tuple[int, ...]
    axes: list[int]                     # the resized axes, in the order given
    scales: dict[int, float]            # per resized axis: the scale the coordinates use
    roi: dict[int, tuple[float, float]]  # per resized axis (tf_crop_and_resize only)


def _present(ctx: OpContext, i: int) -> bool:
    return ctx.has(i) and ctx.type(i).size > 0


def resize_plan(ctx: OpContext) -> ResizePlan:
    """Validate a Resize node and work out its output shape and per-axis scales."""
    t = ctx.type(0)
    ctx.check(t.rank >= 1, "cannot resize a scalar")
    ctx.check(t.dtype.is_float or t.dtype.is_int, f"element type {t.dtype} not supported")
    for key, allowed in (("mode", MODES), ("coordinate_transformation_mode", COORD_MODES),
                         ("nearest_mode", NEAREST_MODES), ("keep_aspect_ratio_policy", POLICIES)):
        ctx.check(ctx[key] in allowed, f"{key} must be one of {', '.join(allowed)}, "
                                       f"got {ctx[key]!r}")
    for key in ("antialias", "exclude_outside"):
        ctx.check(ctx[key] in (0, 1), f"{key} must be 0 or 1, got {ctx[key]}")
    axes = list(range(t.rank)) if ctx["axes"] is None else unique_axes(ctx, ctx["axes"], t.rank)
    has_scales, has_sizes = _present(ctx, 2), _present(ctx, 3)
    ctx.check(has_scales != has_sizes, "exactly one of scales and sizes must be given")
    shape = list(t.shape)
    scales: dict[int, float] = {}
    if has_scales:
        raw = ctx.const(2, "scales")
        ctx.check(raw.dtype.kind == "f" and raw.ndim == 1, "scales must be a 1-D float tensor")
        ctx.check(raw.size == len(axes), f"scales has {raw.size} entries for {len(axes)} axes")
        for a, s in zip(axes, raw.tolist()):
            ctx.check(math.isfinite(s) and s > 0, f"scale {s} for axis {a} must be positive")
            shape[a] = math.floor(t.shape[a] * s)
            scales[a] = s
    else:
        raw = ctx.const(3, "sizes")
        ctx.check(raw.dtype.kind in "iu" and raw.ndim == 1, "sizes must be a 1-D int tensor")
        ctx.check(raw.size == len(axes), f"sizes has {raw.size} entries for {len(axes)} axes")
        sizes = [int(v) for v in raw]
        for a, n in zip(axes, sizes):
            ctx.check(n > 0, f"size {n} for axis {a} must be positive")
            ctx.check(t.shape[a] > 0, f"cannot resize the empty axis {a}")
            scales[a] = n / t.shape[a]
            shape[a] = n
        policy = ctx["keep_aspect_ratio_policy"]
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            s = pick(scales[a] for a in axes)
            for a in axes:
                scales[a] = s
                shape[a] = int(s * t.shape[a] + 0.5)      # round half up
    for a in axes:
        ctx.check(0 <= shape[a] <= MAX_ELEMENTS, f"invalid output size {shape[a]} on axis {a}")
    roi: dict[int, tuple[float, float]] = {}
    if ctx["coordinate_transformation_mode"] == "tf_crop_and_resize":
        raw = ctx.const(1, "roi").astype(np.float64).reshape(-1)
        k = len(axes) if raw.size == 2 * len(axes) else t.rank
        ctx.check(raw.size == 2 * k, f"roi has {raw.size} entries; needs 2 per resized axis")
        roi_axes = axes if k == len(axes) else list(range(t.rank))
        for j, a in enumerate(roi_axes):
            roi[a] = (float(raw[j]), float(raw[j + k]))
    return ResizePlan(tuple(shape), axes, scales, roi)


def _infer_resize(ctx: OpContext) -> list[TensorType]:
    return [TensorType(ctx.type(0).dtype, resize_plan(ctx).out_shape)]


# ---- the reference -------------------------------------------------------------------------------

def source_coords(ctx: OpContext, n_in: int, n_out: int, scale: float,
                  roi: tuple[float, float] | None) -> np.ndarray:
    """The source coordinate of each output index along one axis."""
    mode = ctx["coordinate_transformation_mode"]
    y = np.arange(n_out, dtype=np.float64)
    # length_resized is the integer output length, as the ONNX spec's formulas and onnxruntime
    # (and PyTorch/TF) have it; onnx's Python reference uses the fractional scale * n_in.
    if mode == "align_corners":
        return np.zeros(n_out) if n_out == 1 else y * (n_in - 1) / (n_out - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        if n_out == 1:
            return np.full(n_out, (hi + lo) / 2 * (n_in - 1))
        return y * (hi - lo) * (n_in - 1) / (n_out - 1) + lo * (n_in - 1)
    if mode == "pytorch_half_pixel":
        return np.zeros(n_out) if n_out == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / (scale * n_in))
        return offset + (y + 0.5) / scale - 0.5
    return (y + 0.5) / scale - 0.5       # half_pixel


def _cubic(s: np.ndarray, a: float) -> np.ndarray:
    s = np.abs(s)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(s <= 1, near, np.where(s < 2, far, 0.0))


def tap_weights(ctx: OpContext, x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices [n_out, taps], weights [n_out, taps]) of the interpolation filter."""
    mode = ctx["mode"]
    if mode == "nearest":
        nm = ctx["nearest_mode"]
        fl = np.floor(x)
        if nm == "floor":
            idx = fl
        elif nm == "ceil":
            idx = np.ceil(x)
        else:
            frac = x - fl
            half_up = frac > 0.5 if nm == "round_prefer_floor" else frac >= 0.5
            idx = np.where(half_up, fl + 1, fl)
        return idx.astype(np.int64)[:, None], np.ones((x.size, 1))
    # Reference convention: an exact integer coordinate uses ratio 1 on the left neighbour.
    base = np.floor(x)
    exact = base == x
    base = np.where(exact, x - 1, base)
    ratio = np.where(exact, 1.0, x - base)
    sc = min(scale, 1.0) if ctx["antialias"] else 1.0
    if mode == "linear":
        start = math.floor(-1 / sc) + 1
    else:
        start = math.floor(-2 / sc) + 1
    offsets = np.arange(start, 2 - start)
    dist = (offsets[None, :] - ratio[:, None]) * sc
    if mode == "linear":
        w = np.clip(1 - np.abs(dist), 0, 1)
    else:
        w = _cubic(dist, ctx["cubic_coeff_a"])
    if ctx["antialias"]:
        w = w / w.sum(axis=1, keepdims=True)
    return base.astype(np.int64)[:, None] + offsets[None, :], w


def _resize_axis(ctx: OpContext, data: np.ndarray, axis: int, n_out: int, scale: float,
                 roi: tuple[float, float] | None) -> np.ndarray:
    n_in = data.shape[axis]
    x = source_coords(ctx, n_in, n_out, scale, roi)
    idx, w = tap_weights(ctx, x, scale)
    if ctx["exclude_outside"]:
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    taken = np.take(data, np.clip(idx, 0, n_in - 1), axis=axis)   # [..., n_out, taps, ...]
    shape = (1,) * axis + w.shape + (1,) * (data.ndim - axis - 1)
    out = (taken * w.reshape(shape)).sum(axis=axis + 1)
    if ctx["coordinate_transformation_mode"] == "tf_crop_and_resize":
        outside = ((x < 0) | (x > n_in - 1)).reshape((1,) * axis + (n_out,)
                                                     + (1,) * (data.ndim - axis - 1))
        out = np.where(outside, ctx["extrapolation_value"], out)
    return out


def _resize(ctx: OpContext, x: np.ndarray, *rest: np.ndarray | None) -> np.ndarray:
    plan = resize_plan(ctx)
    out = x.astype(np.float64)
    for a in plan.axes:
        roi = plan.roi.get(a)
        identity = plan.out_shape[a] == x.shape[a] and math.isclose(plan.scales[a], 1.0) and (
            roi is None or (math.isclose(roi[0], 0.0) and math.isclose(roi[1], 1.0)))
        if identity or plan.out_shape[a] == 0:
            if plan.out_shape[a] == 0:
                out = np.take(out, np.zeros(0, dtype=np.int64), axis=a)
            continue
        out = _resize_axis(ctx, out, a, plan.out_shape[a], plan.scales[a], roi)
    if x.dtype.kind in "iu":       # integer images: round and saturate
        info = np.iinfo(x.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(x.dtype)


register(OpDef(
    "Resize", infer=_infer_resize, reference=_resize, inputs=(1, 4),
    attrs={"antialias": Attr("int", 0), "axes": Attr("ints", None),
           "coordinate_transformation_mode": Attr("str", "half_pixel"),
           "cubic_coeff_a": Attr("float", -0.75), "exclude_outside": Attr("int", 0),
           "extrapolation_value": Attr("float", 0.0),
           "keep_aspect_ratio_policy": Attr("str", "stretch"),
           "mode": Attr("str", "nearest"), "nearest_mode": Attr("str", "round_prefer_floor")}))
