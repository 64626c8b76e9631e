"""The op set. Each module registers its ops into OP_TABLE on import."""
from .registry import (OP_TABLE, REQUIRED, Attr, OpContext, OpDef, broadcast_shapes, get_op,
                       infer_node, normalize_axis, register, run_reference, same_as_input)
# Importing a module registers its ops.
from . import elementwise, activation, linalg, reduce, shape, tensor, pad, creation  # noqa: F401
from . import resize, scatter  # noqa: F401
from . import conv, conv_transpose, deform_conv, pool, norm  # noqa: F401
from . import fused, layout  # noqa: F401
from . import dwpw, channel_norm, channel_gather, quant, quant_gemm  # noqa: F401
from . import quant_pool, quant_blocked  # noqa: F401
from . import catalogue  # noqa: F401

__all__ = ["OP_TABLE", "REQUIRED", "Attr", "OpContext", "OpDef", "broadcast_shapes", "get_op",
           "infer_node", "normalize_axis", "register", "run_reference", "same_as_input"]
