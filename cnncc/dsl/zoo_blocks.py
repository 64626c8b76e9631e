"""Zoo nets built from concat, split, shuffle, grouped-conv and squeeze-excitation blocks.

Each follows torchvision's architecture layer for layer (parameter counts equal torchvision's)
and writes the op patterns PyTorch's ONNX exporter writes: ``torch.cat`` as Concat, ``chunk`` as
Split, ``channel_shuffle`` as Reshape -> Transpose -> Reshape, ``x.mean([2, 3])`` as ReduceMean,
adaptive average pooling to 1x1 as GlobalAveragePool. Every function takes ``seed``, ``batch``,
``num_classes`` and ``input_size`` (small sizes keep tests fast; the architecture is the same).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cnncc.ir import CompileError

from . import functional as F
from . import layers as L
from .net import Net, build
from .tensor import Tensor, scope


def _cba(x: Tensor, out: int, k: int, stride: int = 1, groups: int = 1, eps: float = 1e-5,
         act: Callable[[Tensor], Tensor] | None = F.relu, name: str = "conv") -> Tensor:
    """conv (no bias, k // 2 padding) + BatchNorm (+ activation)."""
    with scope(name):
        y = L.conv2d(x, out, k, stride=stride, padding=k // 2, groups=groups, bias=False,
                     name="conv")
        y = L.batch_norm(y, eps=eps, name="bn")
        return act(y) if act is not None else y


def _fc(x: Tensor, num_classes: int, name: str = "fc") -> Tensor:
    return L.dense(F.flatten(F.global_avg_pool(x)), num_classes, name=name)


def _check_size(name: str, input_size: int, minimum: int) -> None:
    if not isinstance(input_size, int) or input_size < minimum:
        raise CompileError(f"{name}: input_size must be an integer >= {minimum}, got "
                           f"{input_size!r}")


# ---- DenseNet-121 --------------------------------------------------------------------------------

def _densenet(x: Tensor, num_classes: int, growth: int, blocks: tuple, init: int,
              bn_size: int) -> Tensor:
    x = _cba(x, init, 7, 2, name="features.conv0")
    x = F.max_pool2d(x, 3, 2, padding=1, name="features.pool0")
    for b, n in enumerate(blocks):
        feats = [x]
        for i in range(n):
            with scope(f"features.denseblock{b + 1}.denselayer{i + 1}"):
                y = F.concat(feats) if len(feats) > 1 else feats[0]
                y = F.relu(L.batch_norm(y, name="norm1"))
                y = L.conv2d(y, bn_size * growth, 1, bias=False, name="conv1")
                y = F.relu(L.batch_norm(y, name="norm2"))
                feats.append(L.conv2d(y, growth, 3, padding=1, bias=False, name="conv2"))
        x = F.concat(feats)
        if b + 1 < len(blocks):
            with scope(f"features.transition{b + 1}"):
                x = F.relu(L.batch_norm(x, name="norm"))
                x = L.conv2d(x, x.shape[1] // 2, 1, bias=False, name="conv")
                x = F.avg_pool2d(x, 2, 2)
    x = F.relu(L.batch_norm(x, name="features.norm5"))
    return _fc(x, num_classes, "classifier")


def densenet121(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                input_size: int = 224) -> Net:
    """DenseNet-121 (torchvision ``densenet121``): BN-ReLU-conv dense layers, a Concat each."""
    _check_size("densenet121", input_size, 32)
    return build(_densenet, (batch, 3, input_size, input_size), "densenet121", seed,
                 num_classes=num_classes, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4)


# ---- ResNeXt-50 32x4d ----------------------------------------------------------------------------

def _resnext_block(x: Tensor, planes: int, stride: int, groups: int, base_width: int) -> Tensor:
    width = planes * base_width // 64 * groups
    y = _cba(x, width, 1, name="conv1")
    y = _cba(y, width, 3, stride, groups=groups, name="conv2")
    y = _cba(y, planes * 4, 1, act=None, name="conv3")
    if stride != 1 or x.shape[1] != planes * 4:
        x = _cba(x, planes * 4, 1, stride, act=None, name="downsample")
    return F.relu(y + x)


def _resnext(x: Tensor, num_classes: int, layers: tuple, groups: int, base_width: int) -> Tensor:
    x = _cba(x, 64, 7, 2, name="stem")
    x = F.max_pool2d(x, 3, 2, padding=1, name="maxpool")
    for i, n in enumerate(layers):
        for j in range(n):
            with scope(f"layer{i + 1}.{j}"):
                x = _resnext_block(x, 64 << i, 2 if j == 0 and i > 0 else 1, groups, base_width)
    return _fc(x, num_classes)


def resnext50_32x4d(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                    input_size: int = 224) -> Net:
    """ResNeXt-50 32x4d (torchvision ``resnext50_32x4d``): bottlenecks with 32-group 3x3 convs."""
    _check_size("resnext50_32x4d", input_size, 32)
    return build(_resnext, (batch, 3, input_size, input_size), "resnext50_32x4d", seed,
                 num_classes=num_classes, layers=(3, 4, 6, 3), groups=32, base_width=4)


# ---- RegNetY-400MF -------------------------------------------------------------------------------

def regnet_stages(depth: int, w_0: float, w_a: float, w_m: float,
                  group_width: int) -> list[tuple[int, int, int]]:
    """(width, depth, group width) per stage from RegNet's quantized linear rule, computed as
    torchvision's ``BlockParams.from_init_params`` does (float32, round half to even)."""
    cont = np.arange(depth, dtype=np.float32) * np.float32(w_a) + np.float32(w_0)
    cap = np.round(np.log(cont / np.float32(w_0)) / np.float32(np.log(w_m)))
    widths = (np.round(np.float32(w_0) * np.power(np.float32(w_m), cap) / 8) * 8).astype(int)
    stages: list[list[int]] = []
    for w in widths.tolist():
        if stages and stages[-1][0] == w:
            stages[-1][1] += 1
        else:
            stages.append([w, 1])
    out = []
    for w, d in stages:
        g = min(group_width, w)
        out.append((int(round(w / g) * g), d, g))
    return out


def _squeeze_excite(x: Tensor, squeeze: int) -> Tensor:
    with scope("se"):
        s = F.global_avg_pool(x)
        s = F.relu(L.conv2d(s, squeeze, 1, name="fc1"))
        s = F.sigmoid(L.conv2d(s, x.shape[1], 1, name="fc2"))
        return s * x


def _regnet_block(x: Tensor, width: int, stride: int, group_width: int, se_ratio: float) -> Tensor:
    y = _cba(x, width, 1, name="f.a")
    y = _cba(y, width, 3, stride, groups=width // group_width, name="f.b")
    y = _squeeze_excite(y, int(round(se_ratio * x.shape[1])))
    y = _cba(y, width, 1, act=None, name="f.c")
    if stride != 1 or x.shape[1] != width:
        x = _cba(x, width, 1, stride, act=None, name="proj")
    return F.relu(x + y)


def _regnet(x: Tensor, num_classes: int, stages: list, se_ratio: float) -> Tensor:
    x = _cba(x, 32, 3, 2, name="stem")
    for i, (width, depth, group_width) in enumerate(stages):
        for j in range(depth):
            with scope(f"trunk_output.block{i + 1}.block{i + 1}-{j}"):
                x = _regnet_block(x, width, 2 if j == 0 else 1, group_width, se_ratio)
    return _fc(x, num_classes)


def regnet_y_400mf(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                   input_size: int = 224) -> Net:
    """RegNetY-400MF (torchvision ``regnet_y_400mf``): group-width-8 bottlenecks with
    squeeze-excitation (GlobalAveragePool -> 1x1 -> ReLU -> 1x1 -> Sigmoid -> Mul)."""
    _check_size("regnet_y_400mf", input_size, 32)
    stages = regnet_stages(16, 48, 27.89, 2.09, 8)
    return build(_regnet, (batch, 3, input_size, input_size), "regnet_y_400mf", seed,
                 num_classes=num_classes, stages=stages, se_ratio=0.25)


# ---- ShuffleNetV2 x1.0 ---------------------------------------------------------------------------

def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """torchvision's channel shuffle as its exporter writes it: Reshape -> Transpose ->
    Reshape."""
    n, c, h, w = x.shape
    y = F.reshape(x, [n, groups, c // groups, h, w])
    y = F.transpose(y, [0, 2, 1, 3, 4])
    return F.reshape(y, [n, c, h, w])


def _shuffle_unit(x: Tensor, out: int, stride: int) -> Tensor:
    half = out // 2
    if stride == 1:
        x1, x2 = F.split(x, [x.shape[1] // 2] * 2)
    else:
        with scope("branch1"):
            x1 = _cba(x, x.shape[1], 3, stride, groups=x.shape[1], act=None, name="dw")
            x1 = _cba(x1, half, 1, name="pw")
        x2 = x
    with scope("branch2"):
        y = _cba(x2, half, 1, name="pw1")
        y = _cba(y, half, 3, stride, groups=half, act=None, name="dw")
        y = _cba(y, half, 1, name="pw2")
    return channel_shuffle(F.concat([x1, y]), 2)


def _shufflenet(x: Tensor, num_classes: int, repeats: tuple, channels: tuple) -> Tensor:
    x = _cba(x, channels[0], 3, 2, name="conv1")
    x = F.max_pool2d(x, 3, 2, padding=1, name="maxpool")
    for i, (n, out) in enumerate(zip(repeats, channels[1:])):
        for j in range(n):
            with scope(f"stage{i + 2}.{j}"):
                x = _shuffle_unit(x, out, 2 if j == 0 else 1)
    x = _cba(x, channels[-1], 1, name="conv5")
    return L.dense(F.reduce_mean(x, [2, 3], keepdims=False), num_classes, name="fc")


def shufflenet_v2_x1_0(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                       input_size: int = 224) -> Net:
    """ShuffleNetV2 x1.0 (torchvision ``shufflenet_v2_x1_0``): channel split, two branches,
    Concat and channel shuffle."""
    _check_size("shufflenet_v2_x1_0", input_size, 32)
    return build(_shufflenet, (batch, 3, input_size, input_size), "shufflenet_v2_x1_0", seed,
                 num_classes=num_classes, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024))


# ---- GoogLeNet -----------------------------------------------------------------------------------

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5" (a 3x3 in torchvision), pool projection)
_INCEPTION = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
              "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
              "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
              "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
              "5b": (384, 192, 384, 48, 128, 128)}


def _basic(x: Tensor, out: int, k: int, stride: int = 1, name: str = "conv") -> Tensor:
    return _cba(x, out, k, stride, eps=1e-3, name=name)


def _inception(x: Tensor, c1: int, r3: int, c3: int, r5: int, c5: int, proj: int) -> Tensor:
    b1 = _basic(x, c1, 1, name="branch1")
    b2 = _basic(_basic(x, r3, 1, name="branch2.0"), c3, 3, name="branch2.1")
    b3 = _basic(_basic(x, r5, 1, name="branch3.0"), c5, 3, name="branch3.1")
    b4 = _basic(F.max_pool2d(x, 3, 1, padding=1, ceil_mode=True), proj, 1, name="branch4.1")
    return F.concat([b1, b2, b3, b4])


def _googlenet(x: Tensor, num_classes: int) -> Tensor:
    x = _basic(x, 64, 7, 2, name="conv1")
    x = F.max_pool2d(x, 3, 2, ceil_mode=True, name="maxpool1")
    x = _basic(x, 64, 1, name="conv2")
    x = _basic(x, 192, 3, name="conv3")
    x = F.max_pool2d(x, 3, 2, ceil_mode=True, name="maxpool2")
    for key, spec in _INCEPTION.items():
        if key in ("4a", "5a"):
            pool = "maxpool3" if key == "4a" else "maxpool4"
            x = F.max_pool2d(x, 3 if key == "4a" else 2, 2, ceil_mode=True, name=pool)
        with scope(f"inception{key}"):
            x = _inception(x, *spec)
    x = F.dropout(F.flatten(F.global_avg_pool(x)), 0.2)
    return L.dense(x, num_classes, name="fc")


def googlenet(seed: int = 0, batch: int = 1, num_classes: int = 1000,
              input_size: int = 224) -> Net:
    """GoogLeNet (torchvision ``googlenet``, inference: no auxiliary classifiers, no input
    transform): nine Inception modules, each a Concat of four branches."""
    _check_size("googlenet", input_size, 32)
    return build(_googlenet, (batch, 3, input_size, input_size), "googlenet", seed,
                 num_classes=num_classes)


# ---- SqueezeNet 1.1 ------------------------------------------------------------------------------

_FIRE = [(16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256),
         (64, 256)]


def _squeezenet(x: Tensor, num_classes: int) -> Tensor:
    x = F.relu(L.conv2d(x, 64, 3, stride=2, name="features.0"))
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    for i, spec in enumerate(_FIRE):
        if spec == "M":
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            continue
        squeeze, expand = spec
        with scope(f"features.fire{i}"):
            s = F.relu(L.conv2d(x, squeeze, 1, name="squeeze"))
            e1 = F.relu(L.conv2d(s, expand, 1, name="expand1x1"))
            e3 = F.relu(L.conv2d(s, expand, 3, padding=1, name="expand3x3"))
            x = F.concat([e1, e3])
    x = F.dropout(x, 0.5)
    x = F.relu(L.conv2d(x, num_classes, 1, name="classifier.1"))
    return F.flatten(F.global_avg_pool(x))


def squeezenet1_1(seed: int = 0, batch: int = 1, num_classes: int = 1000,
                  input_size: int = 224) -> Net:
    """SqueezeNet 1.1 (torchvision ``squeezenet1_1``): Fire modules (squeeze 1x1, then a Concat
    of 1x1 and 3x3 expands); the classifier is a 1x1 conv, ReLU and global average pool."""
    _check_size("squeezenet1_1", input_size, 32)
    return build(_squeezenet, (batch, 3, input_size, input_size), "squeezenet1_1", seed,
                 num_classes=num_classes)


BLOCK_NETS: dict[str, Callable[..., Net]] = {
    "densenet121": densenet121,
    "resnext50_32x4d": resnext50_32x4d,
    "regnet_y_400mf": regnet_y_400mf,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "googlenet": googlenet,
    "squeezenet1_1": squeezenet1_1,
}

__all__ = ["BLOCK_NETS", "channel_shuffle", "regnet_stages", *BLOCK_NETS]
