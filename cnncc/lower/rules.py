"""Which lowering rule handles which op (CPU, and the GPU schedules that replace some of them)."""
from __future__ import annotations

from cnncc.ir import Graph, Node
from cnncc.ir.ops.fused import ACTIVATION_EPILOGUES, anchor_node

from .context import LowerCtx, unsupported
from .conv import epilogue_activation, lower_conv, lower_fused_conv
from .channel_norm import lower_channel_layer_norm
from .conv_dwpw import lower_dwpw
from .conv_transpose import lower_conv_transpose
from .conv_nchwc import lower_conv_nchwc
from .channel_gather import lower_channel_gather
from .layout_nchwc import lower_from_nchwc, lower_pool_nchwc, lower_to_nchwc
from .norm import lower_instance_norm, lower_layer_norm, lower_lrn
from .elementwise import BINARY_OPS, UNARY_OPS, lower_elementwise
from .gpu_conv import lower_conv_gpu, lower_fused_conv_gpu
from .gpu_conv_int8 import GPU_QCONV_RULES
from .gpu_gemm import lower_gemm_gpu, lower_matmul_gpu
from .gather import INDEX_MAP_OPS, lower_index_map
from .reduce import REDUCE_OPS, lower_arg, lower_reduce
from .promote import lower_promoted, needs_promotion
from .quant import QUANT_RULES
from .conv_int8 import INT8_CONV_RULES
from .gemm_int8 import INT_GEMM_RULES
from .pool_int8 import QUANT_POOL_RULES
from .resize import lower_resize
from .scatter import lower_scatter_elements
from .topk import lower_topk
from .deform_conv import lower_deform_conv
from .catalogue import lower_maxout, lower_unshared_conv
from .norm_axes import lower_lp_norm, lower_mvn
from .typed_elementwise import TYPED_OPS, lower_typed
from .nn import lower_gemm, lower_matmul, lower_pool, lower_global_pool, lower_softmax
from .tensor import lower_concat, lower_pad, lower_slice, lower_transpose

# Ops whose output is the input's memory reinterpreted (no kernel, no copy).
ALIAS_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")

RULES = {
    "Conv": lower_conv,
    "DwPwConvNCHWc": lower_dwpw,
    "FusedConv": lower_fused_conv,
    "ConvTranspose": lower_conv_transpose,
    "ConvNCHWc": lower_conv_nchwc,
    "PoolNCHWc": lower_pool_nchwc,
    "ToNCHWc": lower_to_nchwc,
    "FromNCHWc": lower_from_nchwc,
    "InstanceNormalization": lower_instance_norm,
    "LayerNormalization": lower_layer_norm,
    "ChannelLayerNorm": lower_channel_layer_norm,
    "LRN": lower_lrn,
    "Gemm": lower_gemm,
    "MatMul": lower_matmul,
    "MaxPool": lower_pool,
    "AveragePool": lower_pool,
    "LpPool": lower_pool,
    "GlobalLpPool": lower_global_pool,
    "GlobalAveragePool": lower_global_pool,
    "GlobalMaxPool": lower_global_pool,
    "Softmax": lower_softmax,
    "Concat": lower_concat,
    "ChannelGather": lower_channel_gather,
    "Transpose": lower_transpose,
    "Pad": lower_pad,
    "Slice": lower_slice,
    "BatchNormalization": lower_elementwise,
    "Clip": lower_elementwise,
}
for _op in UNARY_OPS + tuple(BINARY_OPS):
    RULES[_op] = lower_elementwise
for _op in TYPED_OPS:
    RULES[_op] = lower_typed
for _op in INDEX_MAP_OPS:
    RULES[_op] = lower_index_map
RULES["Resize"] = lower_resize
for _op in REDUCE_OPS:
    RULES[_op] = lower_reduce
RULES["LogSoftmax"] = lower_softmax
RULES["ScatterElements"] = lower_scatter_elements
RULES["TopK"] = lower_topk
RULES.update(QUANT_RULES)
RULES.update(INT8_CONV_RULES)
RULES.update(INT_GEMM_RULES)
RULES.update(QUANT_POOL_RULES)
RULES["DeformConv"] = lower_deform_conv
RULES["LocallyConnected2d"] = RULES["TiledConv2d"] = lower_unshared_conv
RULES["Maxout"] = lower_maxout
RULES["LpNormalization"] = lower_lp_norm
RULES["MeanVarianceNormalization"] = lower_mvn
for _op in ("ArgMax", "ArgMin", "Hardmax"):
    RULES[_op] = lower_arg


def lower_activation_epilogue(ctx: LowerCtx, node: Node) -> None:
    """FusedConvTranspose / FusedGemm (fuse_epilogue): the anchor's own rule (CPU or GPU) with
    the activation applied in its epilogue, before the single store."""
    lower_node(ctx, anchor_node(node), act=epilogue_activation(ctx, node), out=node.outputs[0])


for _op in ACTIVATION_EPILOGUES:
    RULES[_op] = lower_activation_epilogue

# GPU schedules that replace a rule above when lowering for CUDA (ctx.gpu); the other ops run
# their generic lowering with the parallel loops bound to the grid (gpu_schedule.py).
GPU_RULES: dict = {
    "Conv": lower_conv_gpu,
    "FusedConv": lower_fused_conv_gpu,
    "Gemm": lower_gemm_gpu,
    "MatMul": lower_matmul_gpu,
}
GPU_RULES.update(GPU_QCONV_RULES)

# Ops evaluated at compile time when every input is a constant (shape arithmetic of exporters).
CONST_OPS = ("Shape", "Size", "Constant", "ConstantOfShape", "Range", "Cast", "CastLike",
             "Concat", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Slice", "Mul", "Add", "Sub",
             "Div", "Equal", "Where", "Expand", "Identity")


def lower_node(ctx: LowerCtx, node: Node, act=None, out: str | None = None) -> None:
    rule = (GPU_RULES.get(node.op) if ctx.gpu else None) or RULES.get(node.op)
    if rule is lower_elementwise and node.op in BINARY_OPS and _is_int(ctx.graph, node):
        rule = lower_typed
    if rule is None:
        raise unsupported(node)
    if needs_promotion(ctx, node):
        return lower_promoted(ctx, node, lower_node)
    if act is not None:
        rule(ctx, node, act=act, out=out)
    else:
        rule(ctx, node)


def _is_int(g: Graph, node: Node) -> bool:
    return all(g.types[i].dtype.is_int for i in node.inputs if i)
