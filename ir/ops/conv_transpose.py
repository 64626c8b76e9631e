"""ConvTranspose: the N-d transposed (fractionally strided) convolution of ONNX ConvTranspose-11+.

X is (N, C, D1..Dn), W is (C, M/group, k1..kn), B is (M,). Every input pixel scatters its
weighted kernel into the output: the "full" output of an axis has
``stride * (in - 1) + output_padding + (k - 1) * dilation + 1`` entries, of which ``pads`` are cut
from the two ends. ``output_shape`` (or auto_pad SAME_*, meaning ``in * stride``) fixes the
output size instead and the pads follow from it.
"""
from __future__ import annotations

from math import prod

import numpy as np

from cnncc.ir.types import TensorType
from .conv import check_group, check_weight_and_bias
from .registry import Attr, OpContext, OpDef, register
from .spatial import (AUTO_PADS, WINDOW_ATTRS, check_input, check_padded_size, int_list,
                      kernel_from_attr, matmul_dtype)


def transpose_geometry(ctx: OpContext, x_shape: tuple[int, ...], kernel: tuple[int, ...],
              out_channels: int):
    """(strides, dilations, begin pads, output spatial shape, full spatial shape)."""
    in_spatial = tuple(x_shape[2:])
    nd = len(kernel)
    strides = int_list(ctx, "strides", nd, 1, 1)
    dilations = int_list(ctx, "dilations", nd, 1, 1)
    out_pad = int_list(ctx, "output_padding", nd, 0, 0)
    for i, (op, s, d) in enumerate(zip(out_pad, strides, dilations)):
        ctx.check(op < max(s, d), f"output_padding {list(out_pad)} must be less than "
                  f"max(stride, dilation) = {max(s, d)} along spatial axis {i}")
    full = tuple(s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d
                 in zip(strides, in_spatial, out_pad, kernel, dilations))
    auto = ctx["auto_pad"]
    ctx.check(auto in AUTO_PADS, f"auto_pad '{auto}' is not one of {', '.join(AUTO_PADS)}")
    target = list(ctx["output_shape"])
    if target:
        ctx.check(len(target) == nd, f"output_shape {target} must give the {nd} spatial "
                  "output sizes")
        ctx.check(all(t >= 1 for t in target), f"output_shape {target} must be positive")
        # As onnxruntime: a conv with these parameters over output_shape must give back the
        # input size, so at most stride - 1 entries may lie past the kernel's reach.
        most = [s * i + (k - 1) * d for s, i, k, d in zip(strides, in_spatial, kernel, dilations)]
        ctx.check(all(t <= m for t, m in zip(target, most)), f"output_shape {target} is larger "
                  f"than the input {list(in_spatial)} can produce (at most {most})")
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        # ONNX asks for in * stride; when the kernel is shorter than the stride that exceeds the
        # full extent and onnxruntime keeps the full extent instead. We follow onnxruntime.
        target = [min(i * s, f) for i, s, f in zip(in_spatial, strides, full)]
    explicit = int_list(ctx, "pads", 2 * nd, 0, 0)
    ctx.check(auto == "NOTSET" or not any(explicit), f"pads {list(explicit)} conflict with "
              f"auto_pad '{auto}' (use one or the other)")
    if target:
        # Given output_shape, explicit pads are ignored (ONNX spec): they follow from the shape.
        begin = []
        for f, t in zip(full, target):
            # Past the full extent the output only holds the bias (onnxruntime's behaviour).
            total = max(0, f - t)
            # SAME_UPPER puts the odd extra pad at the end, everything else at the beginning.
            begin.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        out = tuple(target)
    else:
        pads = explicit
        out = tuple(f - pads[i] - pads[nd + i] for i, f in enumerate(full))
        for i, o in enumerate(out):
            ctx.check(o >= 1, f"pads {list(pads)} remove all {full[i]} output positions along "
                      f"spatial axis {i} (output size would be {o})")
        begin = list(pads[:nd])
    check_padded_size(ctx, x_shape[0] * out_channels, out, full, "uncropped output")
    return strides, dilations, tuple(begin), out, full


def _infer(ctx: OpContext) -> list[TensorType]:
    x = check_input(ctx, 0, "X")
    group = ctx["group"]
    w = check_weight_and_bias(ctx, x, 1, 2, lambda s: s[1] * group)
    check_group(ctx, x.shape[1], w.shape, group, transpose=True)
    kernel = kernel_from_attr(ctx, x.rank - 2, w.shape[2:])
    out = transpose_geometry(ctx, x.shape, kernel, w.shape[1] * group)[3]
    return [TensorType(x.dtype, (x.shape[0], w.shape[1] * group) + out)]


def _reference(ctx: OpContext, x: np.ndarray, w: np.ndarray,
               b: np.ndarray | None = None) -> np.ndarray:
    n, c = x.shape[:2]
    group = ctx["group"]
    mg = w.shape[1]
    m = mg * group
    kernel = w.shape[2:]
    nd = len(kernel)
    in_spatial = x.shape[2:]
    strides, dilations, begin, out, full = transpose_geometry(ctx, x.shape, kernel, m)
    acc = matmul_dtype(x.dtype, n * c * mg * prod(in_spatial) * prod(kernel))
    xg = x.astype(acc, copy=False).reshape(n, group, c // group, prod(in_spatial))
    # (G, Cg, Mg, K) -> per kernel position the transposed (G, Mg, Cg) weight block.
    wg = w.astype(acc, copy=False).reshape(group, c // group, mg, -1).transpose(0, 2, 1, 3)
    y = np.zeros((n, group, mg) + full, acc)
    for k, pos in enumerate(np.ndindex(*kernel)):
        part = np.matmul(wg[None, ..., k], xg).reshape((n, group, mg) + in_spatial)
        dst = tuple(slice(p * d, p * d + (i - 1) * s + 1, s)
                    for p, d, i, s in zip(pos, dilations, in_spatial, strides))
        y[(Ellipsis,) + dst] += part
    y = y.reshape((n, m) + full)
    result = np.zeros((n, m) + out, acc)
    src = tuple(slice(bg, min(f, bg + o)) for bg, f, o in zip(begin, full, out))
    dst = tuple(slice(0, s.stop - s.start) for s in src)
    result[(Ellipsis,) + dst] = y[(Ellipsis,) + src]
    if b is not None:
        result += b.astype(acc).reshape((1, m) + (1,) * nd)
    return result.astype(x.dtype)


register(OpDef("ConvTranspose", infer=_infer, reference=_reference, inputs=(2, 3),
               attrs={**WINDOW_ATTRS, "group": Attr("int", 1),
                      "output_padding": Attr("ints", []), "output_shape": Attr("ints", [])},
               doc="N-d grouped transposed convolution (ONNX ConvTranspose)."))
