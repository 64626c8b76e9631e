"""Mobile nets of the zoo with squeeze-excitation blocks: EfficientNet-B0, MobileNetV3 Large and
Small, after torchvision's architectures layer for layer (parameter counts equal torchvision's).

``to_onnx`` writes what PyTorch's exporter writes for them: SiLU as Mul(x, Sigmoid(x)),
Hardswish as HardSwish, Hardsigmoid as HardSigmoid(alpha=1/6), the squeeze-excitation block as
GlobalAveragePool -> Conv 1x1 -> act -> Conv 1x1 -> Sigmoid / HardSigmoid -> Mul(x, scale).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import functional as F
from . import layers as L
from .net import Net, build
from .tensor import Tensor, scope

Act = Callable[[Tensor], Tensor]
_RESIDUAL_GAMMA = 0.25


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never below 90% of v."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def _conv_bn(x: Tensor, out: int, k: int, stride: int = 1, groups: int = 1,
             act: Act | None = None, eps: float = 1e-5, name: str = "conv",
             gamma: float | None = None) -> Tensor:
    """conv + BN (+ act); ``gamma``: the BN scale, else random (a residual branch's last BN
    with a small scale keeps the seeded-random net's activations from growing block by block,
    as zero-initialised residual BNs do in training recipes)."""
    with scope(name):
        y = L.conv2d(x, out, k, stride=stride, padding=k // 2, groups=groups, bias=False,
                     name="conv")
        scale = None if gamma is None else np.full(out, gamma, np.float32)
        y = L.batch_norm(y, eps=eps, scale=scale, name="bn")
        return act(y) if act is not None else y


def _squeeze_excitation(x: Tensor, squeeze: int, act: Act, gate: Act) -> Tensor:
    with scope("se"):
        s = F.global_avg_pool(x)
        s = act(L.conv2d(s, squeeze, 1, name="fc1"))
        s = gate(L.conv2d(s, x.shape[1], 1, name="fc2"))
        return x * s


# ---- EfficientNet-B0 -----------------------------------------------------------------------------

# (expansion, kernel, stride, out channels, repeats), torchvision's efficientnet_b0.
_EFFICIENTNET_B0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def _mbconv(x: Tensor, expand: int, k: int, stride: int, out: int) -> Tensor:
    c_in = x.shape[1]
    hidden = make_divisible(c_in * expand)
    y = x
    if hidden != c_in:
        y = _conv_bn(y, hidden, 1, act=F.silu, name="expand")
    y = _conv_bn(y, hidden, k, stride, groups=hidden, act=F.silu, name="dw")
    y = _squeeze_excitation(y, max(1, c_in // 4), F.silu, F.sigmoid)
    residual = stride == 1 and c_in == out
    y = _conv_bn(y, out, 1, name="project", gamma=_RESIDUAL_GAMMA if residual else None)
    return y + x if residual else y


def _efficientnet_b0(x: Tensor, num_classes: int) -> Tensor:
    x = _conv_bn(x, 32, 3, 2, act=F.silu, name="stem")
    i = 1
    for expand, k, stride, out, repeats in _EFFICIENTNET_B0:
        for j in range(repeats):
            with scope(f"features.{i}"):
                x = _mbconv(x, expand, k, stride if j == 0 else 1, out)
            i += 1
    x = _conv_bn(x, 1280, 1, act=F.silu, name="head")
    x = F.dropout(F.flatten(F.global_avg_pool(x)), 0.2)
    return L.dense(x, num_classes, name="classifier")


def efficientnet_b0(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                    input_size: int = 224) -> Net:
    """EfficientNet-B0 (torchvision ``efficientnet_b0``): MBConv blocks with SiLU and
    squeeze-excitation."""
    return build(_efficientnet_b0, (batch, 3, input_size, input_size), "efficientnet_b0", seed,
                 num_classes=num_classes)


# ---- MobileNetV3 ---------------------------------------------------------------------------------

# (kernel, expanded, out, squeeze-excitation, hard-swish (else ReLU), stride), torchvision's.
_V3_LARGE = [(3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2),
             (3, 72, 24, False, False, 1), (5, 72, 40, True, False, 2),
             (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
             (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1),
             (3, 184, 80, False, True, 1), (3, 184, 80, False, True, 1),
             (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
             (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1),
             (5, 960, 160, True, True, 1)]
_V3_SMALL = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
             (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
             (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
             (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
             (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1),
             (5, 576, 96, True, True, 1)]
_V3_EPS = 1e-3


def _v3_block(x: Tensor, k: int, hidden: int, out: int, se: bool, hs: bool,
              stride: int) -> Tensor:
    act = F.hard_swish if hs else F.relu
    c_in = x.shape[1]
    y = x
    if hidden != c_in:
        y = _conv_bn(y, hidden, 1, act=act, eps=_V3_EPS, name="expand")
    y = _conv_bn(y, hidden, k, stride, groups=hidden, act=act, eps=_V3_EPS, name="dw")
    if se:
        y = _squeeze_excitation(y, make_divisible(hidden // 4), F.relu, F.hard_sigmoid)
    residual = stride == 1 and c_in == out
    y = _conv_bn(y, out, 1, eps=_V3_EPS, name="project", gamma=_RESIDUAL_GAMMA if residual
                 else None)
    return y + x if residual else y


def _mobilenet_v3(x: Tensor, num_classes: int, settings: list, last: int) -> Tensor:
    x = _conv_bn(x, 16, 3, 2, act=F.hard_swish, eps=_V3_EPS, name="stem")
    for i, cfg in enumerate(settings, 1):
        with scope(f"features.{i}"):
            x = _v3_block(x, *cfg)
    x = _conv_bn(x, 6 * x.shape[1], 1, act=F.hard_swish, eps=_V3_EPS, name="head")
    x = F.flatten(F.global_avg_pool(x))
    x = F.dropout(F.hard_swish(L.dense(x, last, name="classifier.0")), 0.2)
    return L.dense(x, num_classes, name="classifier.3")


def mobilenet_v3_large(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                       input_size: int = 224) -> Net:
    """MobileNetV3-Large (torchvision ``mobilenet_v3_large``): ReLU / hard-swish inverted
    residuals, squeeze-excitation with a hard-sigmoid gate."""
    return build(_mobilenet_v3, (batch, 3, input_size, input_size), "mobilenet_v3_large", seed,
                 num_classes=num_classes, settings=_V3_LARGE, last=1280)


def mobilenet_v3_small(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                       input_size: int = 224) -> Net:
    """MobileNetV3-Small (torchvision ``mobilenet_v3_small``)."""
    return build(_mobilenet_v3, (batch, 3, input_size, input_size), "mobilenet_v3_small", seed,
                 num_classes=num_classes, settings=_V3_SMALL, last=1024)


MOBILE_ZOO: dict[str, Callable[..., Net]] = {
    "efficientnet_b0": efficientnet_b0,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}
