"""Normalizations: BatchNormalization (inference), InstanceNormalization, LayerNormalization, LRN,
LpNormalization and MeanVarianceNormalization.

The references compute in float64 and cast the result back to the input's type.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.types import TensorType
from .registry import Attr, OpContext, OpDef, normalize_axis, register
from .spatial import acc_dtype, check_input


def _f64(a: np.ndarray) -> np.ndarray:
    return a.astype(acc_dtype(a.dtype), copy=False)


def _per_channel(ctx: OpContext, x: TensorType, indices: dict[int, str],
                 same_dtype: bool) -> None:
    """Inputs that hold one float value per channel (shape (C,))."""
    c = x.shape[1]
    for i, what in indices.items():
        t = ctx.type(i)
        ctx.check(t.dtype.is_float, f"{what} must be a float tensor, got {t.dtype}")
        if same_dtype:
            ctx.check(t.dtype == x.dtype, f"{what} is {t.dtype} but input X is {x.dtype}")
        ctx.check(t.shape == (c,), f"{what} has shape {list(t.shape)}, expected [{c}] (one value "
                  "per channel)")


def _channel_view(a: np.ndarray, rank: int) -> np.ndarray:
    """A (C,) array shaped to broadcast against (N, C, spatial...)."""
    return _f64(a).reshape((1, -1) + (1,) * (rank - 2))


# ---- BatchNormalization ----------------------------------------------------------------------

def _infer_batch_norm(ctx: OpContext) -> list[TensorType]:
    if ctx["training_mode"] != 0:
        ctx.fail(f"training_mode={ctx['training_mode']} is not supported: only inference "
                 "(training_mode=0, using the given mean and variance) is")
    ctx.check(ctx.num_outputs == 1, f"has {ctx.num_outputs} outputs: the running mean/variance "
              "outputs exist only in training mode, and only inference is supported")
    x = check_input(ctx, 0, "X", min_rank=2)
    _per_channel(ctx, x, {1: "scale", 2: "B", 3: "input_mean", 4: "input_var"}, False)
    ctx.check(ctx["epsilon"] >= 0, f"epsilon must be >= 0, got {ctx['epsilon']}")
    return [x]


def _batch_norm(ctx: OpContext, x: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    r = x.ndim
    inv = _channel_view(scale, r) / np.sqrt(_channel_view(var, r) + ctx["epsilon"])
    y = (_f64(x) - _channel_view(mean, r)) * inv + _channel_view(bias, r)
    return y.astype(x.dtype)


register(OpDef("BatchNormalization", infer=_infer_batch_norm, reference=_batch_norm,
               inputs=(5, 5), outputs=(1, 3),
               attrs={"epsilon": Attr("float", 1e-5), "momentum": Attr("float", 0.9),
                      "training_mode": Attr("int", 0)},
               doc="Per-channel affine normalization with given statistics (inference mode)."))


# ---- InstanceNormalization -------------------------------------------------------------------

def _infer_instance_norm(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X")
    _per_channel(ctx, x, {1: "scale", 2: "B"}, True)
    ctx.check(ctx["epsilon"] >= 0, f"epsilon must be >= 0, got {ctx['epsilon']}")
    return [x]


def _instance_norm(ctx: OpContext, x: np.ndarray, scale: np.ndarray,
                   bias: np.ndarray) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    xa = _f64(x)
    mean = xa.mean(axis=axes, keepdims=True)
    var = ((xa - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xa - mean) / np.sqrt(var + ctx["epsilon"])
    return (y * _channel_view(scale, x.ndim) + _channel_view(bias, x.ndim)).astype(x.dtype)


register(OpDef("InstanceNormalization", infer=_infer_instance_norm, reference=_instance_norm,
               inputs=(3, 3), attrs={"epsilon": Attr("float", 1e-5)},
               doc="Normalizes each (n, c) image over its spatial axes, then scales per channel."))


# ---- LayerNormalization ----------------------------------------------------------------------

# stash_type (the precision of the statistics) -> the type of the Mean/InvStdDev outputs.
_STASH = {1: DType.float32, 11: DType.float64, 10: DType.float16}


def _infer_layer_norm(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X", min_rank=1)
    axis = normalize_axis(ctx, ctx["axis"], x.rank)
    stash = ctx["stash_type"]
    ctx.check(stash in _STASH, f"stash_type {stash} is not a float type (1, 10 or 11)")
    for i, what in ((1, "Scale"), (2, "B")):
        if ctx.has(i):
            t = ctx.type(i)
            ctx.check(t.dtype == x.dtype, f"{what} is {t.dtype} but input X is {x.dtype}")
            norm_shape = x.shape[axis:]
            ok = t.rank <= len(norm_shape) and all(
                d in (1, n) for d, n in zip(t.shape[::-1], norm_shape[::-1]))
            ctx.check(ok, f"{what} shape {list(t.shape)} does not broadcast to the normalized "
                      f"shape {list(x.shape[axis:])}")
    stats = TensorType(_STASH[stash], x.shape[:axis] + (1,) * (x.rank - axis))
    return [x, stats, stats]


def _layer_norm(ctx: OpContext, x: np.ndarray, scale: np.ndarray,
                bias: np.ndarray | None = None):
    axis = ctx["axis"] % x.ndim
    axes = tuple(range(axis, x.ndim))
    xa = _f64(x)
    mean = xa.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(((xa - mean) ** 2).mean(axis=axes, keepdims=True) + ctx["epsilon"])
    y = (xa - mean) * inv_std * _f64(scale)
    if bias is not None:
        y = y + _f64(bias)
    stash = _STASH[ctx["stash_type"]].np
    return [y.astype(x.dtype), mean.astype(stash), inv_std.astype(stash)][:ctx.num_outputs]


register(OpDef("LayerNormalization", infer=_infer_layer_norm, reference=_layer_norm,
               inputs=(2, 3), outputs=(1, 3),
               attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5),
                      "stash_type": Attr("int", 1)},
               doc="Normalizes over the axes from `axis` on; optional Mean/InvStdDev outputs."))


# ---- LRN -------------------------------------------------------------------------------------

def _infer_lrn(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X", min_rank=2)
    ctx.check(ctx["size"] >= 1, f"size must be >= 1, got {ctx['size']}")
    return [x]


def _lrn(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    size = ctx["size"]
    sq = _f64(x) ** 2
    # Channel c sums squares over [c - floor((size-1)/2), c + ceil((size-1)/2)], clipped.
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    widths = [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2)
    csum = np.cumsum(np.pad(sq, widths), axis=1)
    csum = np.concatenate([np.zeros_like(csum[:, :1]), csum], axis=1)
    c = x.shape[1]
    window = csum[:, size:size + c] - csum[:, :c]
    denom = (ctx["bias"] + ctx["alpha"] / size * window) ** ctx["beta"]
    return (_f64(x) / denom).astype(x.dtype)


register(OpDef("LRN", infer=_infer_lrn, reference=_lrn,
               attrs={"alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75),
                      "bias": Attr("float", 1.0), "size": Attr("int")},
               doc="Local response normalization across channels."))


# ---- LpNormalization, MeanVarianceNormalization ----------------------------------------------

def _infer_lp_norm(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X", min_rank=1)
    normalize_axis(ctx, ctx["axis"], x.rank)
    ctx.check(ctx["p"] in (1, 2), f"p must be 1 or 2, got {ctx['p']}")
    return [x]


def _lp_norm(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    xa = _f64(x)
    norm = (np.abs(xa) ** ctx["p"]).sum(axis=ctx["axis"], keepdims=True) ** (1.0 / ctx["p"])
    # An all-zero slice stays zero (as onnxruntime) rather than becoming NaN.
    y = np.divide(xa, norm, out=np.zeros_like(xa), where=norm != 0)
    return y.astype(x.dtype)


register(OpDef("LpNormalization", infer=_infer_lp_norm, reference=_lp_norm,
               attrs={"axis": Attr("int", -1), "p": Attr("int", 2)},
               doc="Divides by the Lp norm along one axis."))


def _infer_mvn(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X", min_rank=1)
    axes = [normalize_axis(ctx, a, x.rank, "axes entry") for a in ctx["axes"]]
    ctx.check(len(set(axes)) == len(axes), f"axes {ctx['axes']} has duplicates")
    return [x]


def _mvn(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    axes = tuple(a % x.ndim for a in ctx["axes"])
    xa = _f64(x)
    mean = xa.mean(axis=axes, keepdims=True)
    std = np.sqrt(((xa - mean) ** 2).mean(axis=axes, keepdims=True))
    # The ONNX definition adds 1e-9 to the standard deviation (not to the variance).
    return ((xa - mean) / (std + 1e-9)).astype(x.dtype)


register(OpDef("MeanVarianceNormalization", infer=_infer_mvn, reference=_mvn,
               attrs={"axes": Attr("ints", [0, 2, 3])},
               doc="(x - mean) / (std + 1e-9) over the given axes."))
