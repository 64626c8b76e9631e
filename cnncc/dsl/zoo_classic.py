"""Classic nets of the zoo beyond zoo.py: AlexNet, the All-Convolutional Net and a small 3-D
(video-style) net. Each function takes ``seed``, ``batch`` and ``num_classes`` like zoo.py's.
"""
from __future__ import annotations

from cnncc.ir import CompileError

from . import functional as F
from . import layers as L
from . import layers_catalogue as C
from .net import Net, build
from .tensor import Tensor, scope


def _alexnet(x: Tensor, num_classes: int, size: int) -> Tensor:
    y = F.max_pool2d(F.relu(L.conv2d(x, 64, 11, stride=4, padding=2, name="features.0")), 3, 2)
    y = F.max_pool2d(F.relu(L.conv2d(y, 192, 5, padding=2, name="features.3")), 3, 2)
    y = F.relu(L.conv2d(y, 384, 3, padding=1, name="features.6"))
    y = F.relu(L.conv2d(y, 256, 3, padding=1, name="features.8"))
    y = F.relu(L.conv2d(y, 256, 3, padding=1, name="features.10"))
    y = F.max_pool2d(y, 3, 2)
    # torchvision's AdaptiveAvgPool2d((6, 6)): an average over k x k on a 6k x 6k map, each
    # pixel repeated 6 / s times on an s x s map with s dividing 6.
    if size > 6:
        y = F.avg_pool2d(y, size // 6)
    elif size < 6:
        y = F.upsample(y, 6 // size)
    y = F.dropout(F.flatten(y))
    y = F.dropout(F.relu(L.dense(y, 4096, name="classifier.1")))
    y = F.relu(L.dense(y, 4096, name="classifier.4"))
    return L.dense(y, num_classes, name="classifier.6")


def alexnet(seed: int = 0, batch: int = 1, num_classes: int = 1000,
            input_size: int = 224) -> Net:
    """AlexNet as torchvision's (Krizhevsky et al. 2012, one-GPU variant): 1x3x224x224 -> 1000,
    61.1M parameters. ``input_size`` must give a last feature map of 6k x 6k or of a divisor
    of 6 (224: 6x6; 64: 1x1)."""
    size = input_size
    for k, s, p in ((11, 4, 2), (3, 2, 0), (3, 2, 0), (3, 2, 0)):
        size = (size + 2 * p - k) // s + 1 if size + 2 * p >= k else 0
    if size < 1 or (size % 6 and 6 % size):
        raise CompileError(f"alexnet: input_size {input_size} gives a {size}x{size} last feature "
                           "map; it must be a multiple or a divisor of 6 (224 gives 6)")
    return build(_alexnet, (batch, 3, input_size, input_size), "alexnet", seed,
                  num_classes=num_classes, size=size)


def _all_conv(x: Tensor, num_classes: int, width: int) -> Tensor:
    w1, w2 = width, 2 * width
    for i, (c, k, s, p) in enumerate([(w1, 3, 1, 1), (w1, 3, 1, 1), (w1, 3, 2, 1),
                                      (w2, 3, 1, 1), (w2, 3, 1, 1), (w2, 3, 2, 1),
                                      (w2, 3, 1, 0), (w2, 1, 1, 0), (num_classes, 1, 1, 0)]):
        with scope(f"conv{i + 1}"):
            x = F.relu(L.conv2d(x, c, k, stride=s, padding=p, name="conv"))
    return F.flatten(F.global_avg_pool(x))


def all_conv(seed: int = 0, batch: int = 1, num_classes: int = 10, input_size: int = 32,
             width: int = 96) -> Net:
    """All-CNN-C (Springenberg et al., "Striving for simplicity: the all convolutional net",
    2015): strided 3x3 convs instead of max pools, 1x1 convs and a global average instead of
    dense layers. 1x3x32x32 -> 10, 1.37M parameters at width 96."""
    if input_size < 12:
        raise CompileError(f"all_conv: input_size must be >= 12, got {input_size}")
    return build(_all_conv, (batch, 3, input_size, input_size), "all_conv", seed,
                 num_classes=num_classes, width=width)


def _tiny_c3d(x: Tensor, num_classes: int) -> Tensor:
    y = C.max_pool3d(F.relu(C.conv3d(x, 8, 3, padding=1, name="conv1")), (1, 2, 2))
    y = C.max_pool3d(F.relu(C.conv3d(y, 16, 3, padding=1, name="conv2")), 2)
    y = F.relu(C.conv3d(y, 32, 3, padding=1, name="conv3"))
    y = C.avg_pool3d(y, 2)
    return L.dense(F.flatten(F.global_avg_pool(y)), num_classes, name="fc")


def tiny_c3d(seed: int = 0, batch: int = 1, num_classes: int = 10, frames: int = 8,
             input_size: int = 32) -> Net:
    """A small C3D-style video net (Tran et al. 2015): 3x3x3 convs and 3-D max/avg pools over
    (frames, H, W); 1x3x8x32x32 clips -> 10 classes. For tests."""
    if frames < 4 or frames % 4 or input_size < 8 or input_size % 8:
        raise CompileError(f"tiny_c3d: frames must be a multiple of 4 and input_size of 8, got "
                           f"{frames} and {input_size}")
    return build(_tiny_c3d, (batch, 3, frames, input_size, input_size), "tiny_c3d", seed,
                 num_classes=num_classes)


__all__ = ["alexnet", "all_conv", "tiny_c3d"]
