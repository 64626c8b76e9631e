"""ConvNeXt-Tiny in the DSL, after torchvision's ``convnext_tiny`` layer for layer (28,589,128
parameters), written as PyTorch's exporter writes it: LayerNorm over channels as
Transpose(0, 2, 3, 1) -> LayerNormalization(axis -1) -> Transpose(0, 3, 1, 2), the block's Linear
layers as MatMul + Add on the channels-last tensor, GELU as 0.5 x (1 + erf(x / sqrt 2)) in
Div / Erf / Add / Mul / Mul, the layer scale as a Mul by a [C, 1, 1] parameter.

Seeded-random weights; the layer scales are drawn in [0.1, 0.3] (torchvision initialises them to
1e-6, which would leave every block's branch out of the numbers the tests compare).
"""
from __future__ import annotations

import math

from . import functional as F
from . import layers as L
from .net import Net, build
from .tensor import Tensor, scope
from .weights import he_normal, small_normal, uniform

_DIMS = (96, 192, 384, 768)
_DEPTHS = (3, 3, 9, 3)
_EPS = 1e-6


def _layer_norm_last(x: Tensor, name: str) -> Tensor:
    """nn.LayerNorm over the last axis (ONNX LayerNormalization, axis -1)."""
    b, c = x.builder, x.shape[-1]
    node = b.unique(name)
    scale = b.param(node + ".weight", uniform(b, (c,), 0.5, 1.5, x.dtype), scoped=False)
    bias = b.param(node + ".bias", small_normal(b, (c,), x.dtype), scoped=False)
    return b.node("LayerNormalization", [x, scale, bias], {"axis": -1, "epsilon": _EPS},
                  name=node)[0]


def _layer_norm_2d(x: Tensor, name: str) -> Tensor:
    """torchvision's LayerNorm2d: channels-last, LayerNorm, channels-first."""
    y = F.transpose(x, (0, 2, 3, 1))
    return F.transpose(_layer_norm_last(y, name), (0, 3, 1, 2))


def _linear_last(x: Tensor, out: int, name: str) -> Tensor:
    """nn.Linear on the last axis of an N-d tensor: MatMul(x, W^T) + b, as exported."""
    b, n_in = x.builder, x.shape[-1]
    node = b.unique(name)
    w = b.param(node + ".weight", he_normal(b, (n_in, out), n_in, x.dtype), scoped=False)
    bias = b.param(node + ".bias", small_normal(b, (out,), x.dtype), scoped=False)
    return F.matmul(x, w) + bias


def _gelu_erf(x: Tensor) -> Tensor:
    """nn.GELU() as torch.onnx writes it below opset 20."""
    e = F.activation("Erf", x / math.sqrt(2.0))
    return (x * (e + 1.0)) * 0.5


def _block(x: Tensor, dim: int) -> Tensor:
    y = L.conv2d(x, dim, 7, padding=3, groups=dim, name="dwconv")
    y = F.transpose(y, (0, 2, 3, 1))
    y = _layer_norm_last(y, "norm")
    y = _gelu_erf(_linear_last(y, 4 * dim, "pwconv1"))
    y = _linear_last(y, dim, "pwconv2")
    y = F.transpose(y, (0, 3, 1, 2))
    b = x.builder
    gamma = b.param(b.unique("layer") + ".scale",
                    uniform(b, (dim, 1, 1), 0.1, 0.3, x.dtype), scoped=False)
    return y * gamma + x


def _convnext_tiny(x: Tensor, num_classes: int) -> Tensor:
    with scope("features.0"):
        x = _layer_norm_2d(L.conv2d(x, _DIMS[0], 4, stride=4, name="conv"), "norm")
    for s, (dim, depth) in enumerate(zip(_DIMS, _DEPTHS)):
        for j in range(depth):
            with scope(f"features.{2 * s + 1}.{j}"):
                x = _block(x, dim)
        if s + 1 < len(_DIMS):
            with scope(f"features.{2 * s + 2}"):
                x = _layer_norm_2d(x, "norm")
                x = L.conv2d(x, _DIMS[s + 1], 2, stride=2, name="conv")
    x = _layer_norm_2d(F.global_avg_pool(x), "classifier.0")
    return L.dense(F.flatten(x), num_classes, name="classifier.2")


def convnext_tiny(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                  input_size: int = 224) -> Net:
    """ConvNeXt-Tiny (torchvision ``convnext_tiny``): 7x7 depthwise convs, LayerNorm over
    channels, inverted-bottleneck Linear layers with GELU, layer scale."""
    return build(_convnext_tiny, (batch, 3, input_size, input_size), "convnext_tiny", seed,
                 num_classes=num_classes)


__all__ = ["convnext_tiny"]
