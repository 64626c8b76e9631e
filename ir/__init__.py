"""cnncc.ir: the mechanism of the compiler (types, graphs, the op table, the interpreter).

Installed as ``cnncc.ir``; import it under that name, never as a top-level ``ir``.
"""
from .dtypes import DType
from .errors import CompileError, InputError
from .types import TensorType
from .graph import Graph, Node
from .ops import OP_TABLE, OpDef, Attr, get_op, infer_node
from .interpreter import run_graph

__all__ = [
    "DType", "CompileError", "InputError", "TensorType", "Graph", "Node",
    "OP_TABLE", "OpDef", "Attr", "get_op", "infer_node", "run_graph",
]
