"""The op set. Each module registers its ops into OP_TABLE on import."""
from .registry import (OP_TABLE, REQUIRED, Attr, OpContext, OpDef, broadcast_shapes, get_op,
                       infer_node, normalize_axis, register, run_reference, same_as_input)
from . import elementwise, activation, linalg, conv, pool, norm, shape, reduce  # noqa: F401  (registers)

__all__ = ["OP_TABLE", "REQUIRED", "Attr", "OpContext", "OpDef", "broadcast_shapes", "get_op",
           "infer_node", "normalize_axis", "register", "run_reference", "same_as_input"]
