"""cnncc.dsl: write a CNN as ordinary Python functions over symbolic tensors.

    from cnncc import dsl

    @dsl.net(input_shape=(1, 3, 32, 32), name="tiny", seed=0)
    def tiny(x: dsl.Tensor) -> dsl.Tensor:
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 16, 3, padding=1)))
        y = y + dsl.conv2d(x, 16, 1)                 # skip connection: operators build Add
        return dsl.dense(dsl.flatten(dsl.global_avg_pool(y)), 10)

    net = tiny()                  # a Net: net.to_graph(), net.to_onnx(path), cnncc.compile(net)

Every operation appends an ONNX-form node to the net's graph and runs shape inference at once, so a
mistake raises CompileError at the line that made it. Weights are seeded-random (He-normal convs
and dense layers, random but sane BatchNorm statistics) unless given as numpy arrays.
Ready-made networks: ``cnncc.dsl.zoo``.
"""
from .tensor import Tensor, constant, scope
from .net import Net, NetDef, build, net
from .layers import (batch_norm, conv2d, conv_transpose2d, dense, depthwise_conv2d, linear,
                     pads_of)
from .functional import (activation, add, avg_pool2d, clip, concat, div, dropout, flatten, gelu,
                         global_avg_pool, global_max_pool, hard_sigmoid, hard_swish, identity,
                         leaky_relu, matmul, max_pool2d, maximum, minimum, mul, pad, reduce_mean,
                         mish, relu, relu6, reshape, resize, sigmoid, silu, softmax, softplus,
                         split, sub, tanh,
                         transpose, upsample)
from .layers_catalogue import (avg_pool1d, avg_pool3d, conv1d, conv3d, deform_conv2d, group_norm,
                               instance_norm, layer_norm, locally_connected2d, lp_pool2d,
                               max_pool1d, max_pool3d, maxout, separable_conv2d, tiled_conv2d)
from . import zoo

__all__ = [
    "Tensor", "Net", "NetDef", "net", "build", "constant", "scope", "zoo",
    "conv2d", "depthwise_conv2d", "conv_transpose2d", "dense", "linear", "batch_norm", "pads_of",
    "relu", "relu6", "clip", "leaky_relu", "hard_sigmoid", "hard_swish", "sigmoid", "tanh",
    "silu", "gelu", "softplus", "mish", "activation", "softmax", "identity", "dropout",
    "max_pool2d", "avg_pool2d", "global_avg_pool", "global_max_pool", "reduce_mean",
    "flatten", "reshape", "transpose", "concat", "split", "pad", "resize", "upsample",
    "add", "sub", "mul", "div", "matmul", "maximum", "minimum",
    "conv1d", "conv3d", "max_pool1d", "max_pool3d", "avg_pool1d", "avg_pool3d", "lp_pool2d",
    "deform_conv2d", "separable_conv2d", "locally_connected2d", "tiled_conv2d", "maxout",
    "layer_norm", "instance_norm", "group_norm",
]
