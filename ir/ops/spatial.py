"""Sliding-window geometry shared by the convolution and pooling ops.

Resolves and validates the ONNX window attributes (kernel_shape, strides, dilations, pads,
auto_pad, ceil_mode) into a `Window`, computes output sizes, and gives the strided slices the
numpy references use: a reference loops over the (few) kernel positions and, for each, reads the
input values every output pixel sees at that position as one strided view, so no Python loop
ever runs over pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from math import prod
from typing import Iterator, Sequence

import numpy as np

from cnncc.ir.types import TensorType
from .registry import Attr, OpContext

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

# The attributes every windowed op shares (ConvTranspose and the pools add their own).
WINDOW_ATTRS = {
    "auto_pad": Attr("str", "NOTSET"),
    "dilations": Attr("ints", []),
    "kernel_shape": Attr("ints", []),
    "pads": Attr("ints", []),
    "strides": Attr("ints", []),
}


@dataclass(frozen=True)
class Window:
    """A resolved sliding window over ``len(kernel)`` spatial axes.

    ``pads`` is ONNX-ordered: all begin pads, then all end pads. ``out`` is the output spatial
    shape.
    """
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def nd(self) -> int:
        return len(self.kernel)

    @property
    def span(self) -> tuple[int, ...]:
        """The dilated (effective) kernel extent along each axis."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))

    def begin(self, axis: int) -> int:
        return self.pads[axis]

    def end(self, axis: int) -> int:
        return self.pads[self.nd + axis]

    def positions(self) -> Iterator[tuple[int, ...]]:
        """Kernel positions in row-major order."""
        return product(*(range(k) for k in self.kernel))

    def needed_input(self) -> tuple[int, ...]:
        """Padded input extent the output windows read (ceil_mode may read past the end pad)."""
        return tuple((o - 1) * s + sp for o, s, sp in zip(self.out, self.strides, self.span))

    def slices(self, pos: Sequence[int]) -> tuple[slice, ...]:
        """Slices of a padded input (leading N, C axes included) that put, for kernel position
        ``pos``, the value seen by every output pixel at that pixel's place."""
        sl = [slice(None), slice(None)]
        for p, d, o, s in zip(pos, self.dilations, self.out, self.strides):
            start = p * d
            sl.append(slice(start, start + (o - 1) * s + 1, s))
        return tuple(sl)

    def input_coords(self, axis: int, p: int) -> np.ndarray:
        """Unpadded input coordinate read at kernel position ``p`` by each output index."""
        return np.arange(self.out[axis]) * self.strides[axis] - self.begin(axis) \
            + p * self.dilations[axis]


def int_list(ctx: OpContext, name: str, count: int, default: int,
             minimum: int) -> tuple[int, ...]:
    """Attribute ``name`` as a tuple of ``count`` ints >= ``minimum`` (empty means ``default``)."""
    vals = list(ctx[name])
    if not vals:
        return (default,) * count
    ctx.check(len(vals) == count, f"'{name}' has {len(vals)} values {vals}, expected {count} "
              f"for {count // 2 if name == 'pads' else count} spatial axes")
    bad = [v for v in vals if v < minimum]
    ctx.check(not bad, f"'{name}' {vals} has values below {minimum}: {bad}")
    return tuple(vals)


def check_input(ctx: OpContext, i: int, what: str = "X", min_rank: int = 3,
                float_only: bool = True) -> TensorType:
    """Input ``i`` as (N, C, spatial...): a rank check and, for arithmetic ops, a float dtype."""
    t = ctx.type(i)
    ctx.check(t.rank >= min_rank, f"input {what} must have rank >= {min_rank} (N, C, spatial...), "
              f"got shape {list(t.shape)}")
    if float_only:
        ctx.check(t.dtype.is_float, f"input {what} must be a float tensor, got {t.dtype}")
    ctx.check(all(d > 0 for d in t.shape), f"input {what} has an empty dimension: "
              f"{list(t.shape)}")
    return t


def kernel_from_attr(ctx: OpContext, nd: int, weight_kernel: Sequence[int] | None) -> tuple:
    """kernel_shape: from the attribute (validated) and/or the weight's spatial dims."""
    attr = list(ctx["kernel_shape"])
    if weight_kernel is None:
        ctx.check(bool(attr), "attribute 'kernel_shape' is required")
    if attr:
        kernel = int_list(ctx, "kernel_shape", nd, 1, 1)
        if weight_kernel is not None:
            ctx.check(tuple(weight_kernel) == kernel, f"kernel_shape {list(kernel)} does not "
                      f"match the weight's spatial shape {list(weight_kernel)}")
        return kernel
    ctx.check(all(k >= 1 for k in weight_kernel), f"weight has an empty kernel "
              f"{list(weight_kernel)}")
    return tuple(weight_kernel)


def resolve_pads(ctx: OpContext, in_spatial: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> tuple[int, ...]:
    """Explicit pads, or those auto_pad implies (SAME_*: output = ceil(input / stride))."""
    nd = len(kernel)
    auto = ctx.attrs.get("auto_pad", "NOTSET")    # DeformConv has no auto_pad
    ctx.check(auto in AUTO_PADS, f"auto_pad '{auto}' is not one of {', '.join(AUTO_PADS)}")
    explicit = int_list(ctx, "pads", 2 * nd, 0, 0)
    if auto == "NOTSET":
        return explicit
    ctx.check(not any(explicit), f"pads {list(explicit)} conflict with auto_pad '{auto}' "
              "(use one or the other)")
    if auto == "VALID":
        return (0,) * (2 * nd)
    begin, end = [], []
    for i in range(nd):
        span = (kernel[i] - 1) * dilations[i] + 1
        out = -(-in_spatial[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + span - in_spatial[i])
        small, big = total // 2, total - total // 2
        # SAME_UPPER puts the odd extra pad at the end, SAME_LOWER at the beginning.
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return tuple(begin + end)


def output_size(ctx: OpContext, axis: int, size: int, begin: int, end: int, span: int,
                stride: int, ceil_mode: bool = False) -> int:
    """Number of window positions along one axis (ONNX/ORT rule, ceil_mode included)."""
    room = size + begin + end - span
    ctx.check(room >= 0, f"kernel (extent {span} with dilation) is larger than the padded input "
              f"({size} + pads {begin}+{end} = {size + begin + end}) along spatial axis {axis}")
    if not ceil_mode:
        return room // stride + 1
    out = -(-room // stride) + 1
    # The last window must start inside the input or its begin pad, never in the end pad only.
    if (out - 1) * stride >= size + begin:
        out -= 1
    return out


# Padding may grow an input by this factor; beyond it (and MAX_PADDED elements) the attributes
# are taken as absurd rather than allocating gigabytes of padding.
PAD_GROWTH = 16
MAX_PADDED = 1 << 27


def check_padded_size(ctx: OpContext, images: int, in_spatial: Sequence[int],
                      padded: Sequence[int], what: str = "padded input") -> None:
    """Reject pads/strides/dilations that would make a buffer absurdly larger than the input."""
    big, small = prod(padded), prod(in_spatial)
    ctx.check(big <= PAD_GROWTH * small or images * big <= MAX_PADDED,
              f"the {what} would have spatial shape {list(padded)}, far larger than "
              f"{list(in_spatial)}: pads, strides or dilations are absurdly large")


def resolve_window(ctx: OpContext, x_shape: Sequence[int], kernel: Sequence[int],
                   ceil_mode: bool = False) -> Window:
    """Validate strides/dilations/pads/auto_pad against ``kernel`` and compute the output shape
    for an input of shape ``x_shape`` (N, C, spatial...)."""
    in_spatial = tuple(x_shape[2:])
    nd = len(kernel)
    strides = int_list(ctx, "strides", nd, 1, 1)
    dilations = int_list(ctx, "dilations", nd, 1, 1)
    pads = resolve_pads(ctx, in_spatial, kernel, strides, dilations)
    out = tuple(output_size(ctx, i, in_spatial[i], pads[i], pads[nd + i],
                            (kernel[i] - 1) * dilations[i] + 1, strides[i], ceil_mode)
                for i in range(nd))
    win = Window(tuple(kernel), strides, dilations, pads, out)
    padded = [max(size + win.begin(i) + win.end(i), need)
              for i, (size, need) in enumerate(zip(in_spatial, win.needed_input()))]
    check_padded_size(ctx, x_shape[0] * x_shape[1], in_spatial, padded)
    return win


def pad_spatial(x: np.ndarray, win: Window, value=0, extra_end: bool = False) -> np.ndarray:
    """``x`` with the window's pads applied (and, with ``extra_end``, enough extra end padding for
    ceil_mode windows that run past the end pad)."""
    need = win.needed_input()
    widths = [(0, 0), (0, 0)]
    for i in range(win.nd):
        end = win.end(i)
        if extra_end:
            end = max(end, need[i] - x.shape[2 + i] - win.begin(i))
        widths.append((win.begin(i), end))
    if not any(b or e for b, e in widths):
        return x
    return np.pad(x, widths, mode="constant", constant_values=value)


def acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulation type of the references: float64 for floats (more accurate than any backend),
    the input type otherwise."""
    return np.dtype(np.float64) if np.issubdtype(dtype, np.floating) else np.dtype(dtype)


# Above this many multiply-adds a float32 conv reference runs its matmuls in float32: float64
# doubles the memory traffic of the gathered columns and halves BLAS throughput, which makes
# whole networks (VGG-19: 20 G multiply-adds) several times slower to check.
F64_MACS = 1 << 27


def matmul_dtype(dtype: np.dtype, macs: int) -> np.dtype:
    """Type the conv-like references compute in: float64 where cheap, else at least float32."""
    if dtype == np.float64 or macs <= F64_MACS:
        return acc_dtype(dtype)
    return np.dtype(np.float32)
