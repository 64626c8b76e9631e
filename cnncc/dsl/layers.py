"""Layers with weights: conv2d, depthwise_conv2d, conv_transpose2d, dense, batch_norm.

Each builds one ONNX-form node (Conv, ConvTranspose, Gemm, BatchNormalization) whose weights are
graph parameters: given as numpy arrays, or seeded-random (He-normal weights, small random biases,
random but sane BatchNorm statistics). Weights and biases are named ``<node>.weight``/``.bias``.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from cnncc.ir import CompileError

from .tensor import Tensor, user_location
from .weights import bn_statistics, given, he_normal, small_normal

Size = Union[int, Sequence[int]]
Padding = Union[int, str, Sequence[int], Sequence[Sequence[int]]]
BiasArg = Union[bool, None, np.ndarray]


def fail(message: str) -> CompileError:
    return CompileError(message + user_location())


def tensor_arg(x: Any, what: str, rank: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise fail(f"{what}: expected a dsl.Tensor, got {type(x).__name__}")
    if rank is not None and x.ndim != rank:
        raise fail(f"{what}: expected a rank-{rank} tensor (N, C, H, W), got shape "
                    f"{list(x.shape)}")
    return x


def ints(value: Size, n: int, what: str, minimum: int = 1) -> list[int]:
    """An int (repeated n times) or a sequence of n ints, each >= minimum."""
    vals = [value] * n if isinstance(value, (int, np.integer)) else list(value)
    if len(vals) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in vals):
        raise fail(f"{what} must be an int or {n} ints, got {value!r}")
    if any(v < minimum for v in vals):
        raise fail(f"{what} must be >= {minimum}, got {value!r}")
    return [int(v) for v in vals]


def _positive(value: Any, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise fail(f"{what} must be a positive int, got {value!r}")
    return int(value)


def pads_of(padding: Padding, kernel: Sequence[int], stride: Sequence[int],
            dilation: Sequence[int], spatial: Sequence[int], what: str) -> list[int]:
    """ONNX ``pads`` [h_begin, w_begin, h_end, w_end] from a user padding spec.

    Accepts an int; (ph, pw); (top, left, bottom, right) in ONNX order; ((top, bottom),
    (left, right)); "valid"; or "same" (output = ceil(input / stride), extra pixel at the end,
    like ONNX SAME_UPPER and TensorFlow).
    """
    n = len(kernel)
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return [0] * (2 * n)
        if padding.lower() != "same":
            raise fail(f"{what}: padding must be 'same', 'valid' or ints, got {padding!r}")
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, stride, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            begin.append(total // 2)
            end.append(total - total // 2)
        return begin + end
    if isinstance(padding, (int, np.integer)):
        return ints(padding, 2 * n, f"{what}: padding", minimum=0)
    items = list(padding)
    if len(items) == n and all(isinstance(p, (tuple, list)) for p in items):
        pairs = [ints(p, 2, f"{what}: padding", minimum=0) for p in items]
        return [p[0] for p in pairs] + [p[1] for p in pairs]
    if len(items) == n:
        vals = ints(items, n, f"{what}: padding", minimum=0)
        return vals + vals
    return ints(items, 2 * n, f"{what}: padding (ONNX order: begins, then ends)", minimum=0)


def _bias(x: Tensor, bias: BiasArg, channels: int, where: str) -> np.ndarray | None:
    b = x.builder
    if bias is None or bias is False:
        return None
    if bias is True:
        return small_normal(b, (channels,), x.dtype)
    return given(bias, (channels,), f"{where}: bias", x.dtype)


def conv2d(x: Tensor, out_channels: int | None = None, kernel_size: Size | None = None,
           stride: Size = 1, padding: Padding = 0, dilation: Size = 1, groups: int = 1,
           bias: BiasArg = True, weight: np.ndarray | None = None,
           name: str | None = None) -> Tensor:
    """2-D convolution (ONNX Conv) of an NCHW tensor.

    ``weight`` (optional) has shape (out_channels, in_channels / groups, kh, kw); when given,
    ``out_channels`` and ``kernel_size`` may be omitted. ``bias``: True (random), False/None (no
    bias) or an array of shape (out_channels,). ``padding``: see ``pads_of``.
    """
    x = tensor_arg(x, "conv2d", 4)
    b = x.builder
    node = b.unique(name or "conv")
    c_in = x.shape[1]
    groups = _positive(groups, f"conv2d '{node}': groups")
    if c_in % groups:
        raise fail(f"conv2d '{node}': groups={groups} does not divide the {c_in} input "
                    "channels")
    if weight is not None:
        w = given(weight, None, f"conv2d '{node}': weight", x.dtype)
        if w.ndim != 4 or w.shape[1] != c_in // groups:
            raise fail(f"conv2d '{node}': weight shape {list(w.shape)} should be "
                        f"[out, {c_in // groups}, kh, kw]")
        if out_channels is not None and out_channels != w.shape[0]:
            raise fail(f"conv2d '{node}': out_channels={out_channels} but weight has "
                        f"{w.shape[0]}")
        if kernel_size is not None and ints(kernel_size, 2, "kernel_size") != list(w.shape[2:]):
            raise fail(f"conv2d '{node}': kernel_size={kernel_size} but weight is "
                        f"{w.shape[2]}x{w.shape[3]}")
        out_channels, kernel = w.shape[0], list(w.shape[2:])
    else:
        if out_channels is None or kernel_size is None:
            raise fail(f"conv2d '{node}': give out_channels and kernel_size, or a weight")
        out_channels = _positive(out_channels, f"conv2d '{node}': out_channels")
        kernel = ints(kernel_size, 2, f"conv2d '{node}': kernel_size")
        if out_channels % groups:
            raise fail(f"conv2d '{node}': groups={groups} does not divide out_channels="
                        f"{out_channels}")
        fan_in = c_in // groups * kernel[0] * kernel[1]
        w = he_normal(b, (out_channels, c_in // groups, *kernel), fan_in, x.dtype)
    strides = ints(stride, 2, f"conv2d '{node}': stride")
    dilations = ints(dilation, 2, f"conv2d '{node}': dilation")
    pads = pads_of(padding, kernel, strides, dilations, x.shape[2:], f"conv2d '{node}'")
    inputs = [x, b.param(node + ".weight", w, scoped=False)]
    bias_arr = _bias(x, bias, out_channels, f"conv2d '{node}'")
    if bias_arr is not None:
        inputs.append(b.param(node + ".bias", bias_arr, scoped=False))
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations,
             "group": groups}
    return b.node("Conv", inputs, attrs, name=node)[0]


def depthwise_conv2d(x: Tensor, kernel_size: Size | None = None, stride: Size = 1,
                     padding: Padding = 0, dilation: Size = 1, multiplier: int = 1,
                     bias: BiasArg = True, weight: np.ndarray | None = None,
                     name: str | None = None) -> Tensor:
    """Depthwise convolution: a conv2d with groups == in_channels and ``multiplier`` filters per
    channel (weight shape (C * multiplier, 1, kh, kw))."""
    x = tensor_arg(x, "depthwise_conv2d", 4)
    mult = _positive(multiplier, "depthwise_conv2d: multiplier")
    return conv2d(x, x.shape[1] * mult if weight is None else None, kernel_size, stride,
                  padding, dilation, groups=x.shape[1], bias=bias, weight=weight,
                  name=name or "dwconv")


def conv_transpose2d(x: Tensor, out_channels: int | None = None,
                     kernel_size: Size | None = None, stride: Size = 1, padding: Padding = 0,
                     output_padding: Size = 0, dilation: Size = 1, groups: int = 1,
                     bias: BiasArg = True, weight: np.ndarray | None = None,
                     name: str | None = None) -> Tensor:
    """Transposed 2-D convolution (ONNX ConvTranspose), e.g. a learned 2x upsampling.

    ``weight`` has shape (in_channels, out_channels / groups, kh, kw) (as in ONNX and PyTorch).
    Output size: stride * (in - 1) + output_padding + dilation * (k - 1) + 1 - pad_begin - pad_end.
    """
    x = tensor_arg(x, "conv_transpose2d", 4)
    b = x.builder
    node = b.unique(name or "convtranspose")
    c_in = x.shape[1]
    groups = _positive(groups, f"conv_transpose2d '{node}': groups")
    if c_in % groups:
        raise fail(f"conv_transpose2d '{node}': groups={groups} does not divide the {c_in} "
                    "input channels")
    if weight is not None:
        w = given(weight, None, f"conv_transpose2d '{node}': weight", x.dtype)
        if w.ndim != 4 or w.shape[0] != c_in:
            raise fail(f"conv_transpose2d '{node}': weight shape {list(w.shape)} should be "
                        f"[{c_in}, out / groups, kh, kw]")
        if out_channels is not None and out_channels != w.shape[1] * groups:
            raise fail(f"conv_transpose2d '{node}': out_channels={out_channels} but weight "
                        f"gives {w.shape[1] * groups}")
        kernel = list(w.shape[2:])
        out_channels = w.shape[1] * groups
    else:
        if out_channels is None or kernel_size is None:
            raise fail(f"conv_transpose2d '{node}': give out_channels and kernel_size, or a "
                        "weight")
        out_channels = _positive(out_channels, f"conv_transpose2d '{node}': out_channels")
        kernel = ints(kernel_size, 2, f"conv_transpose2d '{node}': kernel_size")
        if out_channels % groups:
            raise fail(f"conv_transpose2d '{node}': groups={groups} does not divide "
                        f"out_channels={out_channels}")
        fan_in = c_in // groups * kernel[0] * kernel[1]
        w = he_normal(b, (c_in, out_channels // groups, *kernel), fan_in, x.dtype)
    if isinstance(padding, str):
        raise fail(f"conv_transpose2d '{node}': give padding as ints ('same'/'valid' are "
                    "conv2d options)")
    strides = ints(stride, 2, f"conv_transpose2d '{node}': stride")
    dilations = ints(dilation, 2, f"conv_transpose2d '{node}': dilation")
    out_pad = ints(output_padding, 2, f"conv_transpose2d '{node}': output_padding", minimum=0)
    pads = pads_of(padding, kernel, strides, dilations, x.shape[2:],
                   f"conv_transpose2d '{node}'")
    inputs = [x, b.param(node + ".weight", w, scoped=False)]
    bias_arr = _bias(x, bias, out_channels, f"conv_transpose2d '{node}'")
    if bias_arr is not None:
        inputs.append(b.param(node + ".bias", bias_arr, scoped=False))
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations,
             "group": groups}
    if any(out_pad):
        attrs["output_padding"] = out_pad
    return b.node("ConvTranspose", inputs, attrs, name=node)[0]


def dense(x: Tensor, out_features: int | None = None, bias: BiasArg = True,
          weight: np.ndarray | None = None, name: str | None = None) -> Tensor:
    """Fully connected layer y = x @ W.T + b (ONNX Gemm, transB=1) of a (N, in) tensor.

    ``weight`` has shape (out_features, in_features), as in PyTorch's nn.Linear.
    """
    x = tensor_arg(x, "dense")
    b = x.builder
    node = b.unique(name or "fc")
    if x.ndim != 2:
        raise fail(f"dense '{node}': expects a (batch, features) tensor, got shape "
                    f"{list(x.shape)} (flatten it first)")
    n_in = x.shape[1]
    if weight is not None:
        w = given(weight, None, f"dense '{node}': weight", x.dtype)
        if w.ndim != 2 or w.shape[1] != n_in:
            raise fail(f"dense '{node}': weight shape {list(w.shape)} should be [out, {n_in}]")
        if out_features is not None and out_features != w.shape[0]:
            raise fail(f"dense '{node}': out_features={out_features} but weight has "
                        f"{w.shape[0]} rows")
        out_features = w.shape[0]
    else:
        if out_features is None:
            raise fail(f"dense '{node}': give out_features or a weight")
        out_features = _positive(out_features, f"dense '{node}': out_features")
        w = he_normal(b, (out_features, n_in), n_in, x.dtype)
    inputs = [x, b.param(node + ".weight", w, scoped=False)]
    bias_arr = _bias(x, bias, out_features, f"dense '{node}'")
    if bias_arr is not None:
        inputs.append(b.param(node + ".bias", bias_arr, scoped=False))
    return b.node("Gemm", inputs, {"transB": 1}, name=node)[0]


linear = dense


def batch_norm(x: Tensor, eps: float = 1e-5, scale: np.ndarray | None = None,
               bias: np.ndarray | None = None, mean: np.ndarray | None = None,
               var: np.ndarray | None = None, name: str | None = None) -> Tensor:
    """Inference BatchNorm over axis 1 (ONNX BatchNormalization).

    Each of scale (gamma), bias (beta), mean, var is an array of shape (C,) or random: gamma and
    var in [0.5, 1.5], beta and mean ~ N(0, 0.1).
    """
    x = tensor_arg(x, "batch_norm")
    b = x.builder
    node = b.unique(name or "bn")
    if x.ndim < 2:
        raise fail(f"batch_norm '{node}': needs a tensor with a channel axis (rank >= 2), got "
                    f"shape {list(x.shape)}")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        raise fail(f"batch_norm '{node}': eps must be a non-negative number, got {eps!r}")
    c = x.shape[1]
    stats = list(bn_statistics(b, c, x.dtype))
    names = ("scale", "bias", "mean", "var")
    for i, given_value in enumerate((scale, bias, mean, var)):
        if given_value is not None:
            stats[i] = given(given_value, (c,), f"batch_norm '{node}': {names[i]}", x.dtype)
    params = [b.param(f"{node}.{n}", v, scoped=False) for n, v in zip(names, stats)]
    return b.node("BatchNormalization", [x, *params], {"epsilon": float(eps)}, name=node)[0]
