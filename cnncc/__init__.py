"""cnncc: a compiler for convolutional neural networks.

    import cnncc
    model = cnncc.compile("model.onnx")            # or a ModelProto, a Graph, a cnncc.dsl net
    y = model(x)
"""
__version__ = "0.1.0"

from .ir import CompileError, InputError, Graph          # noqa: E402
from .driver import compile, load_graph                    # noqa: E402
from .runtime import CompiledModel                         # noqa: E402

__all__ = ["compile", "load_graph", "CompileError", "InputError", "Graph", "CompiledModel",
           "__version__"]
