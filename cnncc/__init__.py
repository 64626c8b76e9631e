"""cnncc: a compiler for convolutional neural networks.

    import cnncc
    model = cnncc.compile("model.onnx")            # or a ModelProto, a Graph, a cnncc.dsl net
    y = model(x)
    cnncc.export("model.onnx", "out")              # out/model.so, model.h, model.json
    model = cnncc.load("out")                      # the exported library, callable again
"""
__version__ = "0.1.0"

from .ir import CompileError, InputError, Graph          # noqa: E402
from .ir.target import Target                             # noqa: E402
from .driver import compile, export, host_target, load, load_graph   # noqa: E402
from .runtime import CompiledModel                         # noqa: E402
from .quantize import quantize                            # noqa: E402

__all__ = ["compile", "export", "load", "load_graph", "host_target", "Target", "CompileError",
           "InputError", "Graph", "CompiledModel", "quantize", "__version__"]
