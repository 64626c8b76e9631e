"""Weightless DSL operations: activations, pooling, shape and tensor ops, elementwise arithmetic.

Each builds ONNX ops in their newest-opset form: values that newer opsets take as inputs (Clip
min/max, Pad pads, Reshape shape, Resize scales/sizes, Dropout ratio, ReduceMean axes) are constant
inputs (graph parameters).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cnncc.ir.ops.activation_exprs import UNARY_LOWERING

from .layers import Padding, Size, fail, ints, tensor_arg, pads_of
from .tensor import Operand, Tensor, binary


def _node_name(x: Tensor, name: str | None) -> str | None:
    return x.builder.unique(name) if name else None


def _unary(op: str, x: Tensor, attrs: dict | None = None, name: str | None = None) -> Tensor:
    x = tensor_arg(x, op)
    return x.builder.node(op, [x], attrs, name=_node_name(x, name))[0]


def _scalar(x: Tensor, value: float, base: str) -> Tensor:
    return x.builder.param(base, np.asarray(value, dtype=x.dtype))


# ---- activations ---------------------------------------------------------------------------------

def relu(x: Tensor, name: str | None = None) -> Tensor:
    return _unary("Relu", x, name=name)


def clip(x: Tensor, min: float | None = None, max: float | None = None,
         name: str | None = None) -> Tensor:
    """Clamp to [min, max] (ONNX Clip with constant min/max inputs; None = unbounded)."""
    x = tensor_arg(x, "clip")
    lo = _scalar(x, min, "clip_min") if min is not None else None
    hi = _scalar(x, max, "clip_max") if max is not None else None
    return x.builder.node("Clip", [x, lo, hi], name=_node_name(x, name))[0]


def relu6(x: Tensor, name: str | None = None) -> Tensor:
    """min(max(x, 0), 6) as ONNX Clip(x, 0, 6) (what PyTorch exports for nn.ReLU6)."""
    return clip(x, 0.0, 6.0, name=name)


def leaky_relu(x: Tensor, alpha: float = 0.01, name: str | None = None) -> Tensor:
    return _unary("LeakyRelu", x, {"alpha": float(alpha)}, name)


def hard_sigmoid(x: Tensor, alpha: float = 1.0 / 6.0, beta: float = 0.5,
                 name: str | None = None) -> Tensor:
    """max(0, min(1, alpha * x + beta)); the default alpha=1/6 is PyTorch's Hardsigmoid
    (ONNX's own default is 0.2)."""
    return _unary("HardSigmoid", x, {"alpha": float(alpha), "beta": float(beta)}, name)


def hard_swish(x: Tensor, name: str | None = None) -> Tensor:
    """x * max(0, min(1, x / 6 + 1/2)) (ONNX HardSwish)."""
    return _unary("HardSwish", x, name=name)


def sigmoid(x: Tensor, name: str | None = None) -> Tensor:
    return _unary("Sigmoid", x, name=name)


def tanh(x: Tensor, name: str | None = None) -> Tensor:
    return _unary("Tanh", x, name=name)


def silu(x: Tensor, name: str | None = None) -> Tensor:
    """x * sigmoid(x) (SiLU / Swish-1), as the Sigmoid + Mul pair exporters write."""
    x = tensor_arg(x, "silu")
    return x.builder.node("Mul", [x, sigmoid(x)], name=_node_name(x, name))[0]


def gelu(x: Tensor, approximate: str = "none", name: str | None = None) -> Tensor:
    """Gaussian error linear unit (ONNX Gelu-20); approximate 'none' (erf) or 'tanh'."""
    if approximate not in ("none", "tanh"):
        raise fail(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _unary("Gelu", x, {"approximate": approximate} if approximate != "none" else None,
                  name)


def softplus(x: Tensor, name: str | None = None) -> Tensor:
    """log(1 + exp(x)) (ONNX Softplus)."""
    return _unary("Softplus", x, name=name)


def mish(x: Tensor, name: str | None = None) -> Tensor:
    """x * tanh(softplus(x)) (ONNX Mish-18)."""
    return _unary("Mish", x, name=name)


def activation(op: str, x: Tensor, name: str | None = None, **attrs: float | str) -> Tensor:
    """Any unary op of the op table that the compiler lowers (``activation("Celu", x,
    alpha=2.0)``): a new table entry is usable here at once."""
    if op not in UNARY_LOWERING:
        raise fail(f"activation: unknown op {op!r} (one of {', '.join(sorted(UNARY_LOWERING))})")
    return _unary(op, x, dict(attrs) or None, name)


def softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    return _unary("Softmax", x, {"axis": int(axis)}, name)


def identity(x: Tensor, name: str | None = None) -> Tensor:
    return _unary("Identity", x, name=name)


def dropout(x: Tensor, ratio: float = 0.5, name: str | None = None) -> Tensor:
    """Dropout: the identity at inference. Kept as an ONNX Dropout node (ratio as an input)."""
    x = tensor_arg(x, "dropout")
    if not 0.0 <= float(ratio) < 1.0:
        raise fail(f"dropout: ratio must be in [0, 1), got {ratio!r}")
    r = _scalar(x, ratio, "dropout_ratio")
    return x.builder.node("Dropout", [x, r], name=_node_name(x, name))[0]


# ---- pooling -------------------------------------------------------------------------------------

def _pool(op: str, x: Tensor, kernel_size: Size, stride: Size | None, padding: Padding,
          ceil_mode: bool, extra: dict, name: str | None) -> Tensor:
    what = op
    x = tensor_arg(x, what, 4)
    kernel = ints(kernel_size, 2, f"{what}: kernel_size")
    strides = kernel if stride is None else ints(stride, 2, f"{what}: stride")
    dilations = extra.get("dilations", [1, 1])
    pads = pads_of(padding, kernel, strides, dilations, x.shape[2:], what)
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, **extra}
    if ceil_mode:
        attrs["ceil_mode"] = 1
    return x.builder.node(op, [x], attrs, name=_node_name(x, name))[0]


def max_pool2d(x: Tensor, kernel_size: Size, stride: Size | None = None, padding: Padding = 0,
               dilation: Size = 1, ceil_mode: bool = False, name: str | None = None) -> Tensor:
    """Max pooling (ONNX MaxPool; padding never wins a max). ``stride`` defaults to the kernel."""
    dil = ints(dilation, 2, "MaxPool: dilation")
    extra = {"dilations": dil} if dil != [1, 1] else {}
    return _pool("MaxPool", x, kernel_size, stride, padding, ceil_mode, extra, name)


def avg_pool2d(x: Tensor, kernel_size: Size, stride: Size | None = None, padding: Padding = 0,
               ceil_mode: bool = False, count_include_pad: bool = False,
               name: str | None = None) -> Tensor:
    """Average pooling (ONNX AveragePool). ``count_include_pad`` as in PyTorch/ONNX."""
    extra = {"count_include_pad": 1} if count_include_pad else {}
    return _pool("AveragePool", x, kernel_size, stride, padding, ceil_mode, extra, name)


def global_avg_pool(x: Tensor, name: str | None = None) -> Tensor:
    """Mean over the spatial axes, keeping them as size 1: (N, C, H, W) -> (N, C, 1, 1)."""
    return _unary("GlobalAveragePool", x, name=name)


def global_max_pool(x: Tensor, name: str | None = None) -> Tensor:
    return _unary("GlobalMaxPool", x, name=name)


def reduce_mean(x: Tensor, axes: Sequence[int], keepdims: bool = True,
                name: str | None = None) -> Tensor:
    """Mean over ``axes`` (ONNX ReduceMean with constant axes input)."""
    x = tensor_arg(x, "reduce_mean")
    ax = x.builder.param("axes", np.asarray([int(a) for a in axes], dtype=np.int64))
    return x.builder.node("ReduceMean", [x, ax], {"keepdims": int(bool(keepdims))},
                          name=_node_name(x, name))[0]


# ---- shape and tensor ops ------------------------------------------------------------------------

def flatten(x: Tensor, axis: int = 1, name: str | None = None) -> Tensor:
    """(d0..d[axis-1], rest) -> 2-D (ONNX Flatten)."""
    return _unary("Flatten", x, {"axis": int(axis)}, name)


def reshape(x: Tensor, shape: Sequence[int], name: str | None = None) -> Tensor:
    """ONNX Reshape with a constant shape: -1 infers one dim, 0 copies the input's dim."""
    x = tensor_arg(x, "reshape")
    s = x.builder.param("shape", np.asarray([int(d) for d in shape], dtype=np.int64))
    return x.builder.node("Reshape", [x, s], name=_node_name(x, name))[0]


def transpose(x: Tensor, perm: Sequence[int] | None = None, name: str | None = None) -> Tensor:
    attrs = {"perm": [int(p) for p in perm]} if perm is not None else None
    return _unary("Transpose", x, attrs, name)


def concat(tensors: Sequence[Tensor], axis: int = 1, name: str | None = None) -> Tensor:
    """Join along ``axis`` (ONNX Concat); default axis 1 = channels."""
    ts = [tensor_arg(t, "concat") for t in tensors]
    if not ts:
        raise fail("concat: needs at least one tensor")
    return ts[0].builder.node("Concat", ts, {"axis": int(axis)}, name=_node_name(ts[0], name))[0]


def split(x: Tensor, sizes: Sequence[int], axis: int = 1,
          name: str | None = None) -> list[Tensor]:
    """Cut ``x`` along ``axis`` into parts of ``sizes`` (ONNX Split with a constant split input;
    PyTorch's ``chunk``/``split`` export as this)."""
    x = tensor_arg(x, "split")
    parts = ints(sizes, len(list(sizes)), "split: sizes")
    if not parts:
        raise fail("split: needs at least one part")
    s = x.builder.param("split", np.asarray(parts, dtype=np.int64))
    return x.builder.node("Split", [x, s], {"axis": int(axis)}, name=_node_name(x, name),
                          outputs=len(parts))


def pad(x: Tensor, pads: Sequence, mode: str = "constant", value: float = 0.0,
        name: str | None = None) -> Tensor:
    """ONNX Pad of every axis. ``pads``: one (begin, end) pair per axis, or the flat ONNX list
    [begins..., ends...]. ``mode``: constant, reflect, edge or wrap."""
    x = tensor_arg(x, "pad")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise fail(f"pad: mode must be constant, reflect, edge or wrap, got {mode!r}")
    items = list(pads)
    if items and all(isinstance(p, (tuple, list)) for p in items):
        pairs = [ints(p, 2, "pad: pads", minimum=-(1 << 30)) for p in items]
        flat = [p[0] for p in pairs] + [p[1] for p in pairs]
    else:
        flat = ints(items, len(items), "pad: pads", minimum=-(1 << 30))
    b = x.builder
    inputs = [x, b.param("pads", np.asarray(flat, dtype=np.int64))]
    if mode == "constant":
        inputs.append(_scalar(x, value, "pad_value"))
    attrs = {"mode": mode} if mode != "constant" else None
    return b.node("Pad", inputs, attrs, name=_node_name(x, name))[0]


def resize(x: Tensor, scale_factor: float | Sequence[float] | None = None,
           size: Sequence[int] | None = None, mode: str = "nearest", align_corners: bool = False,
           name: str | None = None) -> Tensor:
    """Resize the spatial axes of an NCHW tensor (ONNX Resize), by ``scale_factor`` or to ``size``.

    mode 'nearest' matches PyTorch's nearest (asymmetric, floor); 'linear' is bilinear with
    half-pixel centers, or corner-aligned with ``align_corners=True``.
    """
    x = tensor_arg(x, "resize", 4)
    if mode not in ("nearest", "linear"):
        raise fail(f"resize: mode must be 'nearest' or 'linear', got {mode!r}")
    if (scale_factor is None) == (size is None):
        raise fail("resize: give exactly one of scale_factor and size")
    b = x.builder
    attrs: dict = {"mode": mode}
    if mode == "nearest":
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        attrs["coordinate_transformation_mode"] = "align_corners" if align_corners \
            else "half_pixel"
    if scale_factor is not None:
        sf = [scale_factor] * 2 if isinstance(scale_factor, (int, float)) else list(scale_factor)
        if len(sf) != 2 or not all(isinstance(s, (int, float)) and s > 0 for s in sf):
            raise fail(f"resize: scale_factor must be a positive number or two, got "
                        f"{scale_factor!r}")
        scales = b.param("scales", np.asarray([1.0, 1.0, *sf], dtype=np.float32))
        return b.node("Resize", [x, None, scales], attrs, name=_node_name(x, name))[0]
    hw = ints(size, 2, "resize: size")
    sizes = b.param("sizes", np.asarray([*x.shape[:2], *hw], dtype=np.int64))
    return b.node("Resize", [x, None, None, sizes], attrs, name=_node_name(x, name))[0]


def upsample(x: Tensor, scale_factor: float | Sequence[float] = 2, mode: str = "nearest",
             name: str | None = None) -> Tensor:
    """Upsample the spatial axes by ``scale_factor`` (a Resize)."""
    return resize(x, scale_factor=scale_factor, mode=mode, name=name)


# ---- elementwise arithmetic ----------------------------------------------------------------------

def add(a: Operand, b: Operand) -> Tensor:
    """a + b with numpy broadcasting (ONNX Add); one side may be a number or array."""
    return binary("Add", a, b)


def sub(a: Operand, b: Operand) -> Tensor:
    return binary("Sub", a, b)


def mul(a: Operand, b: Operand) -> Tensor:
    return binary("Mul", a, b)


def div(a: Operand, b: Operand) -> Tensor:
    return binary("Div", a, b)


def matmul(a: Operand, b: Operand) -> Tensor:
    """Numpy-style matrix product (ONNX MatMul)."""
    return binary("MatMul", a, b)


def maximum(a: Operand, b: Operand) -> Tensor:
    return binary("Max", a, b)


def minimum(a: Operand, b: Operand) -> Tensor:
    return binary("Min", a, b)


__all__ = [
    "relu", "clip", "relu6", "leaky_relu", "hard_sigmoid", "hard_swish", "sigmoid", "tanh",
    "silu", "gelu", "softmax", "identity", "dropout", "max_pool2d", "avg_pool2d",
    "global_avg_pool", "global_max_pool", "reduce_mean", "flatten", "reshape", "transpose",
    "concat", "pad", "resize", "upsample", "add", "sub", "mul", "div", "matmul", "maximum",
    "minimum",
]
