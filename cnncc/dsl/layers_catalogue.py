"""The rest of the catalogue of conv, pooling and normalization layers.

1-D and 3-D convs and pools (ONNX Conv/MaxPool/AveragePool on (N, C, L) and (N, C, D, H, W)),
deformable convolution (ONNX DeformConv), separable convolution (a depthwise conv and a 1x1 conv:
the pair the depthwise_separable pass compiles to one kernel), L2/Lp pooling (ONNX LpPool),
layer/instance/group normalization, and the layers ONNX lacks, cnncc ops of their own domain
(ir/ops/catalogue.py): locally connected, tiled convolution and maxout. Every layer checks its
arguments and shapes as the net is built; errors point at the user's line.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import CompileError

from .layers import BiasArg, Padding, Size, fail, ints, pads_of, tensor_arg
from .tensor import Tensor
from .weights import given, he_normal, small_normal

_RANK_NAMES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _positive(value, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise fail(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _spatial_arg(x, what: str, nd: int) -> Tensor:
    x = tensor_arg(x, what)
    if x.ndim != nd + 2:
        raise fail(f"{what}: expected a rank-{nd + 2} tensor {_RANK_NAMES[nd]}, got shape "
                   f"{list(x.shape)}")
    return x


def _given(value, shape, what: str, dtype) -> np.ndarray:
    """A weight given by the user, checked; the error points at the user's line."""
    try:
        return given(value, shape, what, dtype)
    except CompileError as e:
        raise fail(str(e)) from None


def _weight(x: Tensor, node: str, what: str, weight, shape: tuple, fan_in: int) -> np.ndarray:
    """The given weight (checked against ``shape``) or a He-normal one."""
    if weight is not None:
        return _given(weight, shape, f"{what} '{node}': weight", x.dtype)
    return he_normal(x.builder, shape, fan_in, x.dtype)


def _bias_arr(x: Tensor, bias: BiasArg, shape: tuple, where: str) -> np.ndarray | None:
    if bias is None or bias is False:
        return None
    if bias is True:
        return small_normal(x.builder, shape, x.dtype)
    return _given(bias, shape, f"{where}: bias", x.dtype)


def _params(x: Tensor, node: str, w: np.ndarray, b: np.ndarray | None) -> list[Tensor]:
    inputs = [x, x.builder.param(node + ".weight", w, scoped=False)]
    if b is not None:
        inputs.append(x.builder.param(node + ".bias", b, scoped=False))
    return inputs


def _window(x: Tensor, what: str, kernel_size, stride, padding, dilation, nd: int,
            stride_default=None) -> dict:
    kernel = ints(kernel_size, nd, f"{what}: kernel_size")
    strides = (kernel if stride_default == "kernel" else [1] * nd) if stride is None \
        else ints(stride, nd, f"{what}: stride")
    dilations = ints(dilation, nd, f"{what}: dilation")
    pads = pads_of(padding, kernel, strides, dilations, x.shape[2:], what)
    return {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations}


def _conv_nd(x, nd: int, what: str, out_channels, kernel_size, stride, padding, dilation,
             groups, bias, weight, name) -> Tensor:
    x = _spatial_arg(x, what, nd)
    node = x.builder.unique(name or "conv")
    c_in = x.shape[1]
    groups = _positive(groups, f"{what} '{node}': groups")
    if c_in % groups:
        raise fail(f"{what} '{node}': groups={groups} does not divide the {c_in} input channels")
    if weight is not None:
        w = np.asarray(weight)
        if w.ndim != nd + 2:
            raise fail(f"{what} '{node}': weight shape {list(w.shape)} should be [out, "
                       f"{c_in // groups}, {nd} kernel dims]")
        out_channels = w.shape[0] if out_channels is None else out_channels
        kernel_size = list(w.shape[2:]) if kernel_size is None else kernel_size
    if out_channels is None or kernel_size is None:
        raise fail(f"{what} '{node}': give out_channels and kernel_size, or a weight")
    oc = _positive(out_channels, f"{what} '{node}': out_channels")
    if oc % groups:
        raise fail(f"{what} '{node}': groups={groups} does not divide out_channels={oc}")
    attrs = _window(x, f"{what} '{node}'", kernel_size, stride, padding, dilation, nd)
    kernel = attrs["kernel_shape"]
    w = _weight(x, node, what, weight, (oc, c_in // groups, *kernel),
                c_in // groups * int(np.prod(kernel)))
    b = _bias_arr(x, bias, (oc,), f"{what} '{node}'")
    return x.builder.node("Conv", _params(x, node, w, b), {**attrs, "group": groups},
                          name=node)[0]


def conv1d(x: Tensor, out_channels: int | None = None, kernel_size: Size | None = None,
           stride: Size = 1, padding: Padding = 0, dilation: Size = 1, groups: int = 1,
           bias: BiasArg = True, weight: np.ndarray | None = None,
           name: str | None = None) -> Tensor:
    """1-D convolution (ONNX Conv) of an (N, C, L) tensor; weight (out, in / groups, k)."""
    return _conv_nd(x, 1, "conv1d", out_channels, kernel_size, stride, padding, dilation,
                    groups, bias, weight, name)


def conv3d(x: Tensor, out_channels: int | None = None, kernel_size: Size | None = None,
           stride: Size = 1, padding: Padding = 0, dilation: Size = 1, groups: int = 1,
           bias: BiasArg = True, weight: np.ndarray | None = None,
           name: str | None = None) -> Tensor:
    """3-D convolution (ONNX Conv) of an (N, C, D, H, W) tensor; weight (out, in / groups, kd,
    kh, kw)."""
    return _conv_nd(x, 3, "conv3d", out_channels, kernel_size, stride, padding, dilation,
                    groups, bias, weight, name)


def _pool_nd(op: str, what: str, nd: int, x, kernel_size, stride, padding, dilation,
             ceil_mode: bool, extra: dict, name) -> Tensor:
    x = _spatial_arg(x, what, nd)
    attrs = _window(x, what, kernel_size, stride, padding, dilation, nd, "kernel")
    if attrs["dilations"] == [1] * nd:
        del attrs["dilations"]
    if ceil_mode:
        attrs["ceil_mode"] = 1
    node = x.builder.unique(name) if name else None
    return x.builder.node(op, [x], {**attrs, **extra}, name=node)[0]


def max_pool1d(x: Tensor, kernel_size: Size, stride: Size | None = None, padding: Padding = 0,
               dilation: Size = 1, ceil_mode: bool = False, name: str | None = None) -> Tensor:
    """Max pooling of an (N, C, L) tensor (ONNX MaxPool); stride defaults to the kernel."""
    return _pool_nd("MaxPool", "max_pool1d", 1, x, kernel_size, stride, padding, dilation,
                    ceil_mode, {}, name)


def max_pool3d(x: Tensor, kernel_size: Size, stride: Size | None = None, padding: Padding = 0,
               dilation: Size = 1, ceil_mode: bool = False, name: str | None = None) -> Tensor:
    """Max pooling of an (N, C, D, H, W) tensor (ONNX MaxPool)."""
    return _pool_nd("MaxPool", "max_pool3d", 3, x, kernel_size, stride, padding, dilation,
                    ceil_mode, {}, name)


def avg_pool1d(x: Tensor, kernel_size: Size, stride: Size | None = None, padding: Padding = 0,
               ceil_mode: bool = False, count_include_pad: bool = False,
               name: str | None = None) -> Tensor:
    """Average pooling of an (N, C, L) tensor (ONNX AveragePool)."""
    extra = {"count_include_pad": 1} if count_include_pad else {}
    return _pool_nd("AveragePool", "avg_pool1d", 1, x, kernel_size, stride, padding, 1,
                    ceil_mode, extra, name)


def avg_pool3d(x: Tensor, kernel_size: Size, stride: Size | None = None, padding: Padding = 0,
               ceil_mode: bool = False, count_include_pad: bool = False,
               name: str | None = None) -> Tensor:
    """Average pooling of an (N, C, D, H, W) tensor (ONNX AveragePool)."""
    extra = {"count_include_pad": 1} if count_include_pad else {}
    return _pool_nd("AveragePool", "avg_pool3d", 3, x, kernel_size, stride, padding, 1,
                    ceil_mode, extra, name)


def lp_pool2d(x: Tensor, kernel_size: Size, stride: Size | None = None, padding: Padding = 0,
              p: int = 2, name: str | None = None) -> Tensor:
    """Lp pooling (ONNX LpPool): (sum of |x|^p over each window)^(1/p); p=2 is L2 pooling."""
    p = _positive(p, "lp_pool2d: p")
    return _pool_nd("LpPool", "lp_pool2d", 2, x, kernel_size, stride, padding, 1, False,
                    {"p": p}, name)


def deform_conv2d(x: Tensor, offset: Tensor, out_channels: int | None = None,
                  kernel_size: Size | None = None, mask: Tensor | None = None, stride: Size = 1,
                  padding: Padding = 0, dilation: Size = 1, groups: int = 1,
                  offset_groups: int = 1, bias: BiasArg = True,
                  weight: np.ndarray | None = None, name: str | None = None) -> Tensor:
    """Deformable convolution (ONNX DeformConv, as torchvision.ops.deform_conv2d).

    ``offset`` (N, 2 * offset_groups * kh * kw, OH, OW) shifts each sampling point (dy, dx per
    kernel position, row-major); the optional ``mask`` (N, offset_groups * kh * kw, OH, OW)
    scales each sample (modulated, "v2"). Both are tensors of the net, usually conv outputs.
    """
    x = _spatial_arg(x, "deform_conv2d", 2)
    offset = tensor_arg(offset, "deform_conv2d: offset", 4)
    node = x.builder.unique(name or "deformconv")
    what = f"deform_conv2d '{node}'"
    c_in = x.shape[1]
    groups = _positive(groups, f"{what}: groups")
    og = _positive(offset_groups, f"{what}: offset_groups")
    for g, label in ((groups, "groups"), (og, "offset_groups")):
        if c_in % g:
            raise fail(f"{what}: {label}={g} does not divide the {c_in} input channels")
    if weight is not None:
        w = np.asarray(weight)
        if w.ndim != 4:
            raise fail(f"{what}: weight shape {list(w.shape)} should be [out, "
                       f"{c_in // groups}, kh, kw]")
        out_channels = w.shape[0] if out_channels is None else out_channels
        kernel_size = list(w.shape[2:]) if kernel_size is None else kernel_size
    if out_channels is None or kernel_size is None:
        raise fail(f"{what}: give out_channels and kernel_size, or a weight")
    oc = _positive(out_channels, f"{what}: out_channels")
    attrs = _window(x, what, kernel_size, stride, padding, dilation, 2)
    kernel = attrs.pop("kernel_shape")
    w = _weight(x, node, "deform_conv2d", weight, (oc, c_in // groups, *kernel),
                c_in // groups * kernel[0] * kernel[1])
    b = _bias_arr(x, bias, (oc,), what)
    inputs = [x, x.builder.param(node + ".weight", w, scoped=False), offset]
    inputs.append(x.builder.param(node + ".bias", b, scoped=False) if b is not None else None)
    if mask is not None:
        inputs.append(tensor_arg(mask, f"{what}: mask", 4))
    attrs.update(kernel_shape=kernel, group=groups, offset_group=og)
    return x.builder.node("DeformConv", inputs, attrs, name=node)[0]


def separable_conv2d(x: Tensor, out_channels: int, kernel_size: Size, stride: Size = 1,
                     padding: Padding = 0, dilation: Size = 1, multiplier: int = 1,
                     bias: BiasArg = True, depthwise_weight: np.ndarray | None = None,
                     pointwise_weight: np.ndarray | None = None,
                     name: str | None = None) -> Tensor:
    """Depthwise-separable convolution (Keras SeparableConv2D): a depthwise conv (``multiplier``
    filters per channel, no bias) and a 1x1 conv to ``out_channels`` with ``bias``. The pair
    compiles to one fused depthwise->pointwise kernel (the depthwise_separable pass)."""
    x = _spatial_arg(x, "separable_conv2d", 2)
    base = name or "sepconv"
    mult = _positive(multiplier, f"separable_conv2d '{base}': multiplier")
    c_in = x.shape[1]
    dw = _conv_nd(x, 2, "separable_conv2d", c_in * mult if depthwise_weight is None else None,
                  kernel_size if depthwise_weight is None else None, stride, padding, dilation,
                  c_in, False, depthwise_weight, base + ".depthwise")
    return _conv_nd(dw, 2, "separable_conv2d", out_channels if pointwise_weight is None else None,
                    1 if pointwise_weight is None else None, 1, 0, 1, 1, bias, pointwise_weight,
                    base + ".pointwise")


def _unshared(op: str, what: str, x, out_channels: int, kernel_size, tiles, stride, padding,
              dilation, bias, weight, name) -> Tensor:
    x = _spatial_arg(x, what, 2)
    node = x.builder.unique(name or what.replace("2d", ""))
    where = f"{what} '{node}'"
    oc = _positive(out_channels, f"{where}: out_channels")
    attrs = _window(x, where, kernel_size, stride, padding, dilation, 2)
    kernel = attrs.pop("kernel_shape")
    out = []
    for size, k, s, d, pb, pe in zip(x.shape[2:], kernel, attrs["strides"], attrs["dilations"],
                                     attrs["pads"][:2], attrs["pads"][2:]):
        room = size + pb + pe - (k - 1) * d - 1
        if room < 0:
            raise fail(f"{where}: kernel {kernel} (dilation {attrs['dilations']}) is larger than "
                       f"the padded input {list(x.shape[2:])}")
        out.append(room // s + 1)
    sets = tuple(out) if tiles is None else tuple(ints(tiles, 2, f"{where}: tiles"))
    c = x.shape[1]
    w = _weight(x, node, what, weight, (*sets, oc, c, *kernel), c * kernel[0] * kernel[1])
    b = _bias_arr(x, bias, (oc, *out) if tiles is None else (oc,), where)
    return x.builder.node(op, _params(x, node, w, b), attrs, name=node)[0]


def locally_connected2d(x: Tensor, out_channels: int, kernel_size: Size, stride: Size = 1,
                        padding: Padding = 0, dilation: Size = 1, bias: BiasArg = True,
                        weight: np.ndarray | None = None, name: str | None = None) -> Tensor:
    """Locally connected layer (cnncc op LocallyConnected2d): a conv with its own filter at
    every output position. weight (OH, OW, out, C, kh, kw); bias (out, OH, OW)."""
    return _unshared("LocallyConnected2d", "locally_connected2d", x, out_channels, kernel_size,
                     None, stride, padding, dilation, bias, weight, name)


def tiled_conv2d(x: Tensor, out_channels: int, kernel_size: Size, tiles: Size = 2,
                 stride: Size = 1, padding: Padding = 0, dilation: Size = 1,
                 bias: BiasArg = True, weight: np.ndarray | None = None,
                 name: str | None = None) -> Tensor:
    """Tiled convolution (cnncc op TiledConv2d, Ngiam et al. 2010): ``tiles`` = k (or (kh, kw))
    filter sets rotated through space, output (i, j) using set (i % kh, j % kw). weight (kh, kw,
    out, C, kernel_h, kernel_w); bias (out,). tiles=1 is a convolution."""
    return _unshared("TiledConv2d", "tiled_conv2d", x, out_channels, kernel_size, tiles, stride,
                     padding, dilation, bias, weight, name)


def maxout(x: Tensor, pieces: int, name: str | None = None) -> Tensor:
    """Maxout / cross-channel max pooling (cnncc op Maxout): output channel j is the max of input
    channels j*pieces .. j*pieces + pieces - 1. (N, C, ...) -> (N, C / pieces, ...)."""
    x = tensor_arg(x, "maxout")
    pieces = _positive(pieces, "maxout: pieces")
    if x.ndim < 2 or x.shape[1] % pieces:
        raise fail(f"maxout: pieces={pieces} must divide the channel axis (1) of shape "
                   f"{list(x.shape)}")
    node = x.builder.unique(name) if name else None
    return x.builder.node("Maxout", [x], {"pieces": pieces}, name=node)[0]


def _affine(x: Tensor, node: str, shape: tuple, scale, bias,
            stored: tuple | None = None) -> list[Tensor]:
    """Scale (gamma, default random in [0.5, 1.5]) and bias (beta, default N(0, 0.1)) of
    ``shape``, stored with shape ``stored`` (default: the same)."""
    b = x.builder
    gamma = _given(scale, shape, f"'{node}': scale", x.dtype) if scale is not None \
        else b.rng.uniform(0.5, 1.5, size=shape).astype(x.dtype)
    beta = _given(bias, shape, f"'{node}': bias", x.dtype) if bias is not None \
        else small_normal(b, shape, x.dtype)
    stored = shape if stored is None else stored
    return [b.param(node + ".scale", gamma.reshape(stored), scoped=False),
            b.param(node + ".bias", beta.reshape(stored), scoped=False)]


def _eps(eps, what: str) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise fail(f"{what}: eps must be a positive number, got {eps!r}")
    return float(eps)


def layer_norm(x: Tensor, axis: int = 1, eps: float = 1e-5, scale: np.ndarray | None = None,
               bias: np.ndarray | None = None, name: str | None = None) -> Tensor:
    """Layer normalization (ONNX LayerNormalization) over the axes from ``axis`` on (default 1:
    C, H, W of each image, as nn.LayerNorm([C, H, W])); scale and bias have those axes' shape."""
    x = tensor_arg(x, "layer_norm")
    node = x.builder.unique(name or "layernorm")
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise fail(f"layer_norm '{node}': axis {axis!r} out of range for shape {list(x.shape)}")
    axis = axis % x.ndim
    inputs = [x] + _affine(x, node, tuple(x.shape[axis:]), scale, bias)
    return x.builder.node("LayerNormalization", inputs,
                          {"axis": axis, "epsilon": _eps(eps, f"layer_norm '{node}'")},
                          name=node)[0]


def instance_norm(x: Tensor, eps: float = 1e-5, scale: np.ndarray | None = None,
                  bias: np.ndarray | None = None, name: str | None = None) -> Tensor:
    """Instance normalization (ONNX InstanceNormalization): each (image, channel) plane to zero
    mean and unit variance, then a per-channel scale and bias."""
    x = tensor_arg(x, "instance_norm")
    node = x.builder.unique(name or "instancenorm")
    if x.ndim < 3:
        raise fail(f"instance_norm '{node}': needs (N, C, spatial...), got shape "
                   f"{list(x.shape)}")
    inputs = [x] + _affine(x, node, (x.shape[1],), scale, bias)
    return x.builder.node("InstanceNormalization", inputs,
                          {"epsilon": _eps(eps, f"instance_norm '{node}'")}, name=node)[0]


def group_norm(x: Tensor, groups: int, eps: float = 1e-5, scale: np.ndarray | None = None,
               bias: np.ndarray | None = None, name: str | None = None) -> Tensor:
    """Group normalization (Wu & He 2018, nn.GroupNorm): the channels split into ``groups``,
    each group of each image normalized over its channels and positions, then a per-channel
    scale and bias. Built as PyTorch exports it: Reshape to (N, G, -1), InstanceNormalization
    (unit scale), Reshape back, Mul by scale, Add bias."""
    x = tensor_arg(x, "group_norm")
    node = x.builder.unique(name or "groupnorm")
    where = f"group_norm '{node}'"
    g = _positive(groups, f"{where}: groups")
    if x.ndim < 3 or x.shape[1] % g:
        raise fail(f"{where}: groups={g} must divide the channels of an (N, C, spatial...) "
                   f"tensor, got shape {list(x.shape)}")
    b = x.builder
    view = (x.shape[1],) + (1,) * (x.ndim - 2)
    gamma, beta = _affine(x, node, (x.shape[1],), scale, bias, view)
    shape = b.param(node + ".groups_shape", np.asarray([x.shape[0], g, -1], np.int64),
                    scoped=False)
    back = b.param(node + ".shape", np.asarray(x.shape, np.int64), scoped=False)
    ones = b.param(node + ".unit_scale", np.ones(g, x.dtype), scoped=False)
    zeros = b.param(node + ".zero_bias", np.zeros(g, x.dtype), scoped=False)
    y = b.node("Reshape", [x, shape], name=node + ".reshape")[0]
    y = b.node("InstanceNormalization", [y, ones, zeros],
               {"epsilon": _eps(eps, where)}, name=node)[0]
    y = b.node("Reshape", [y, back], name=node + ".reshape_back")[0]
    y = b.node("Mul", [y, gamma], name=node + ".scale_mul")[0]
    return b.node("Add", [y, beta], name=node + ".bias_add")[0]

