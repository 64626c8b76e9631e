"""Model zoo: classic CNNs written in the DSL, with seeded-random weights.

ImageNet nets (1x3x224x224 -> 1000 logits) follow torchvision's architectures layer for layer
(VGG-11 with or without BN, ResNet-18/50 v1.5, MobileNetV2; MobileNetV1 after the paper, with the
BN + ReLU6 blocks common implementations use). Small nets (32x32 inputs) are for fast tests and
examples. Every function takes ``seed`` (weights), ``batch`` and ``num_classes``; most also take
``input_size``. ``ZOO`` maps names to the functions.
"""
from __future__ import annotations

from typing import Callable

from cnncc.ir import CompileError

from . import functional as F
from . import layers as L
from .net import Net, build
from .tensor import Tensor, scope
from .zoo_convnext import convnext_tiny
from .zoo_mobile import MOBILE_ZOO, make_divisible
from .zoo_blocks import (BLOCK_NETS, densenet121, googlenet, regnet_y_400mf,  # noqa: F401
                         resnext50_32x4d, shufflenet_v2_x1_0, squeezenet1_1)
from .zoo_classic import alexnet, all_conv, tiny_c3d


def _conv_bn(x: Tensor, out: int, k: int, stride: int = 1, groups: int = 1,
             act: Callable[[Tensor], Tensor] | None = F.relu, name: str = "conv") -> Tensor:
    """conv (no bias, 'same'-style k // 2 padding) + BN (+ activation): the CNN workhorse."""
    with scope(name):
        y = L.conv2d(x, out, k, stride=stride, padding=k // 2, groups=groups, bias=False,
                     name="conv")
        y = L.batch_norm(y, name="bn")
        return act(y) if act is not None else y


def _classifier(x: Tensor, num_classes: int, name: str = "fc") -> Tensor:
    return L.dense(F.flatten(F.global_avg_pool(x)), num_classes, name=name)


# ---- LeNet-5 -------------------------------------------------------------------------------------

def _lenet5(x: Tensor, num_classes: int) -> Tensor:
    y = F.max_pool2d(F.relu(L.conv2d(x, 6, 5, name="conv1")), 2)
    y = F.max_pool2d(F.relu(L.conv2d(y, 16, 5, name="conv2")), 2)
    y = F.relu(L.dense(F.flatten(y), 120, name="fc1"))
    y = F.relu(L.dense(y, 84, name="fc2"))
    return L.dense(y, num_classes, name="fc3")


def lenet5(seed: int = 0, batch: int = 1, num_classes: int = 10) -> Net:
    """LeNet-5 on 1x32x32 images (ReLU + max-pool variant, as in the PyTorch tutorial)."""
    return build(_lenet5, (batch, 1, 32, 32), "lenet5", seed, num_classes=num_classes)


# ---- VGG -----------------------------------------------------------------------------------------

_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def _vgg(x: Tensor, num_classes: int, batch_norm: bool) -> Tensor:
    i = 0
    for v in _VGG11:
        if v == "M":
            x = F.max_pool2d(x, 2, name=f"features.{i}")
            i += 1
            continue
        x = L.conv2d(x, v, 3, padding=1, name=f"features.{i}")
        i += 1
        if batch_norm:
            x = L.batch_norm(x, name=f"features.{i}")
            i += 1
        x = F.relu(x)
        i += 1
    size = x.shape[2]
    if x.shape[2] != x.shape[3] or size % 7:
        # torchvision's AdaptiveAvgPool2d((7, 7)) is a plain pooling only for multiples of 7.
        raise CompileError(f"vgg: feature map {x.shape[2]}x{x.shape[3]} is not a multiple of "
                           "7x7 (use an input size that is a multiple of 224)")
    if size != 7:
        x = F.avg_pool2d(x, size // 7, name="avgpool")
    x = F.flatten(x)
    x = F.dropout(F.relu(L.dense(x, 4096, name="classifier.0")))
    x = F.dropout(F.relu(L.dense(x, 4096, name="classifier.3")))
    return L.dense(x, num_classes, name="classifier.6")


def vgg11(seed: int = 0, batch: int = 1, num_classes: int = 1000, input_size: int = 224,
          batch_norm: bool = False) -> Net:
    """VGG-11 (torchvision ``vgg11``; ``batch_norm=True`` gives ``vgg11_bn``). 133M weights."""
    return build(_vgg, (batch, 3, input_size, input_size), "vgg11_bn" if batch_norm else "vgg11",
                 seed, num_classes=num_classes, batch_norm=batch_norm)


def vgg11_bn(seed: int = 0, batch: int = 1, num_classes: int = 1000,
             input_size: int = 224) -> Net:
    return vgg11(seed, batch, num_classes, input_size, batch_norm=True)


# ---- ResNet --------------------------------------------------------------------------------------

def _basic_block(x: Tensor, planes: int, stride: int) -> Tensor:
    y = _conv_bn(x, planes, 3, stride, name="conv1")
    y = _conv_bn(y, planes, 3, act=None, name="conv2")
    if stride != 1 or x.shape[1] != planes:
        x = _conv_bn(x, planes, 1, stride, act=None, name="downsample")
    return F.relu(y + x)


def _bottleneck(x: Tensor, planes: int, stride: int) -> Tensor:
    # ResNet v1.5 (torchvision): the stride sits on the 3x3 conv, not the first 1x1.
    y = _conv_bn(x, planes, 1, name="conv1")
    y = _conv_bn(y, planes, 3, stride, name="conv2")
    y = _conv_bn(y, planes * 4, 1, act=None, name="conv3")
    if stride != 1 or x.shape[1] != planes * 4:
        x = _conv_bn(x, planes * 4, 1, stride, act=None, name="downsample")
    return F.relu(y + x)


def _resnet(x: Tensor, block: Callable, layers: list[int], widths: list[int], stem: str,
            num_classes: int) -> Tensor:
    if stem == "imagenet":
        x = _conv_bn(x, widths[0], 7, 2, name="stem")
        x = F.max_pool2d(x, 3, 2, padding=1, name="maxpool")
    else:       # CIFAR-style stem for 32x32 inputs
        x = _conv_bn(x, widths[0], 3, name="stem")
    for i, (n, width) in enumerate(zip(layers, widths)):
        for j in range(n):
            with scope(f"layer{i + 1}.{j}"):
                x = block(x, width, 2 if j == 0 and i > 0 else 1)
    return _classifier(x, num_classes)


def resnet18(seed: int = 0, batch: int = 1, num_classes: int = 1000,
             input_size: int = 224) -> Net:
    """ResNet-18 (torchvision ``resnet18``): BasicBlocks [2, 2, 2, 2]."""
    return build(_resnet, (batch, 3, input_size, input_size), "resnet18", seed,
                 block=_basic_block, layers=[2, 2, 2, 2], widths=[64, 128, 256, 512],
                 stem="imagenet", num_classes=num_classes)


def resnet50(seed: int = 0, batch: int = 1, num_classes: int = 1000,
             input_size: int = 224) -> Net:
    """ResNet-50 v1.5 (torchvision ``resnet50``): Bottlenecks [3, 4, 6, 3]."""
    return build(_resnet, (batch, 3, input_size, input_size), "resnet50", seed,
                 block=_bottleneck, layers=[3, 4, 6, 3], widths=[64, 128, 256, 512],
                 stem="imagenet", num_classes=num_classes)


def tiny_resnet(seed: int = 0, batch: int = 1, num_classes: int = 10,
                input_size: int = 32) -> Net:
    """A small ResNet for 32x32 inputs: 3x3 stem, BasicBlocks [1, 1, 1] of 16/32/64 channels."""
    return build(_resnet, (batch, 3, input_size, input_size), "tiny_resnet", seed,
                 block=_basic_block, layers=[1, 1, 1], widths=[16, 32, 64], stem="cifar",
                 num_classes=num_classes)


# ---- MobileNets ----------------------------------------------------------------------------------

_MOBILENET_V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                 (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _mobilenet_v1(x: Tensor, num_classes: int, width: float) -> Tensor:
    x = _conv_bn(x, make_divisible(32 * width), 3, 2, act=F.relu6, name="stem")
    for i, (out, stride) in enumerate(_MOBILENET_V1):
        with scope(f"features.{i}"):
            x = _conv_bn(x, x.shape[1], 3, stride, groups=x.shape[1], act=F.relu6, name="dw")
            x = _conv_bn(x, make_divisible(out * width), 1, act=F.relu6, name="pw")
    return _classifier(x, num_classes)


def mobilenet_v1(seed: int = 0, batch: int = 1, num_classes: int = 1000, input_size: int = 224,
                 width: float = 1.0) -> Net:
    """MobileNetV1: 13 depthwise-separable blocks (3x3 dw + 1x1 pw, each BN + ReLU6)."""
    return build(_mobilenet_v1, (batch, 3, input_size, input_size), "mobilenet_v1", seed,
                 num_classes=num_classes, width=width)


# (expansion t, channels c, repeats n, first stride s), as in torchvision / the paper.
_MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1)]


def _inverted_residual(x: Tensor, out: int, stride: int, expand: int) -> Tensor:
    c_in = x.shape[1]
    y = x
    hidden = int(round(c_in * expand))
    if expand != 1:
        y = _conv_bn(y, hidden, 1, act=F.relu6, name="expand")
    y = _conv_bn(y, hidden, 3, stride, groups=hidden, act=F.relu6, name="dw")
    y = _conv_bn(y, out, 1, act=None, name="project")
    return y + x if stride == 1 and c_in == out else y


def _mobilenet_v2(x: Tensor, num_classes: int, width: float, settings: list, stem_stride: int,
                  last: int) -> Tensor:
    x = _conv_bn(x, make_divisible(32 * width), 3, stem_stride, act=F.relu6, name="stem")
    i = 1
    for t, c, n, s in settings:
        for j in range(n):
            with scope(f"features.{i}"):
                x = _inverted_residual(x, make_divisible(c * width), s if j == 0 else 1, t)
            i += 1
    x = _conv_bn(x, make_divisible(last * max(1.0, width)), 1, act=F.relu6, name="head")
    x = F.dropout(F.flatten(F.global_avg_pool(x)), 0.2)
    return L.dense(x, num_classes, name="classifier")


def mobilenet_v2(seed: int = 0, batch: int = 1, num_classes: int = 1000, input_size: int = 224,
                 width: float = 1.0) -> Net:
    """MobileNetV2 (torchvision ``mobilenet_v2``): inverted residuals, ReLU6, linear bottlenecks."""
    return build(_mobilenet_v2, (batch, 3, input_size, input_size), "mobilenet_v2", seed,
                 num_classes=num_classes, width=width, settings=_MOBILENET_V2, stem_stride=2,
                 last=1280)


def tiny_mobilenet(seed: int = 0, batch: int = 1, num_classes: int = 10,
                   input_size: int = 32) -> Net:
    """A small MobileNetV2 for 32x32 inputs (stride-1 stem, 4 inverted-residual stages)."""
    settings = [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 1, 2)]
    return build(_mobilenet_v2, (batch, 3, input_size, input_size), "tiny_mobilenet", seed,
                 num_classes=num_classes, width=1.0, settings=settings, stem_stride=1, last=128)


# ---- small nets for tests and examples -----------------------------------------------------------

def _tiny_cnn(x: Tensor, num_classes: int) -> Tensor:
    y = F.relu(L.batch_norm(L.conv2d(x, 8, 3, padding=1, name="conv1"), name="bn1"))
    y = F.max_pool2d(y, 2)
    y = F.relu(L.batch_norm(L.conv2d(y, 16, 3, padding=1, name="conv2"), name="bn2"))
    y = F.avg_pool2d(y, 2)
    return L.dense(F.flatten(y), num_classes, name="fc")


def tiny_cnn(seed: int = 0, batch: int = 1, num_classes: int = 10) -> Net:
    """conv-BN-ReLU-maxpool, conv-BN-ReLU-avgpool, dense on 3x16x16: the smallest useful CNN."""
    return build(_tiny_cnn, (batch, 3, 16, 16), "tiny_cnn", seed, num_classes=num_classes)


def _tiny_unet(x: Tensor, out_channels: int) -> Tensor:
    e1 = _conv_bn(x, 8, 3, name="enc1")
    e2 = _conv_bn(F.max_pool2d(e1, 2), 16, 3, name="enc2")
    mid = _conv_bn(F.max_pool2d(e2, 2), 32, 3, act=F.leaky_relu, name="mid")
    up2 = L.conv_transpose2d(mid, 16, 2, stride=2, name="up2")
    d2 = _conv_bn(F.concat([up2, e2]), 16, 3, act=F.silu, name="dec2")
    up1 = F.upsample(d2, 2)
    d1 = _conv_bn(F.concat([up1, e1]), 8, 3, act=F.hard_swish, name="dec1")
    return F.sigmoid(L.conv2d(d1, out_channels, 1, name="head"))


def tiny_unet(seed: int = 0, batch: int = 1, out_channels: int = 2, input_size: int = 32) -> Net:
    """A small U-Net (1x3x32x32 -> 1x2x32x32): skip concats, ConvTranspose and Resize upsampling."""
    if input_size % 4:
        raise CompileError(f"tiny_unet: input_size must be a multiple of 4, got {input_size}")
    return build(_tiny_unet, (batch, 3, input_size, input_size), "tiny_unet", seed,
                 out_channels=out_channels)


ZOO: dict[str, Callable[..., Net]] = {
    "lenet5": lenet5,
    "vgg11": vgg11,
    "vgg11_bn": vgg11_bn,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "tiny_cnn": tiny_cnn,
    "tiny_resnet": tiny_resnet,
    "tiny_mobilenet": tiny_mobilenet,
    "tiny_unet": tiny_unet,
    **MOBILE_ZOO,
    "convnext_tiny": convnext_tiny,
    **BLOCK_NETS,
    "alexnet": alexnet,             # zoo_classic.py
    "all_conv": all_conv,
    "tiny_c3d": tiny_c3d,
}

__all__ = ["ZOO", *ZOO]
