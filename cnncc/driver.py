"""The whole pipeline, top to bottom: source -> Graph -> (passes) -> target -> CompiledModel."""
from __future__ import annotations

import os
from typing import Any

from .backends import BACKENDS
from .ir import CompileError, Graph
from .passes import PassContext, run_pipeline
from .runtime import CompiledModel

DEFAULT_TARGET = "llvm" if "llvm" in BACKENDS else "reference"


def load_graph(source: Any, input_shapes: dict[str, Any] | None = None) -> Graph:
    """Turn any accepted source into a verified Graph.

    ``source``: a path to an .onnx file, its bytes, an onnx.ModelProto, a Graph, or a cnncc.dsl
    net. ``input_shapes`` fixes symbolic input dims of ONNX models ({input name: shape}).
    """
    import onnx

    if isinstance(source, Graph):
        return source.verify()
    if isinstance(source, (str, os.PathLike, bytes, onnx.ModelProto)):
        from .frontend.onnx import import_model
        src = os.fspath(source) if isinstance(source, os.PathLike) else source
        return import_model(src, input_shapes=input_shapes)
    to_graph = getattr(source, "to_graph", None)
    if callable(to_graph):
        return to_graph().verify()
    raise CompileError(f"cannot compile a {type(source).__name__}: expected an ONNX path or "
                       "bytes, an onnx.ModelProto, a cnncc Graph or a cnncc.dsl net")


def compile(source: Any, target: str | None = None, opt_level: int = 3,
            threads: int | None = None, input_shapes: dict[str, Any] | None = None,
            **options: Any) -> CompiledModel:
    """Compile ``source`` for ``target`` and return a callable CompiledModel.

    ``opt_level`` 0 runs no graph optimization (every op its own kernel), 3 runs all passes;
    ``threads`` is the native thread count (default: all cores); ``input_shapes`` fixes
    symbolic ONNX input dims. Other options go to the target (e.g. ``skip_passes=[...]``).
    """
    target = target or DEFAULT_TARGET
    if target not in BACKENDS:
        raise CompileError(f"unknown target '{target}' (available: {', '.join(BACKENDS)})")
    if opt_level not in (0, 1, 2, 3):
        raise CompileError(f"opt_level must be 0..3, got {opt_level}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise CompileError(f"threads must be a positive integer, got {threads!r}")
    skip = frozenset(options.pop("skip_passes", ()))
    graph = load_graph(source, input_shapes)
    if BACKENDS[target].native:
        # The reference target is the oracle: it runs the graph exactly as imported.
        graph = run_pipeline(graph, PassContext(opt_level=opt_level, target=target, skip=skip))
    options = dict(options, opt_level=opt_level, threads=threads)
    return BACKENDS[target].build(graph, options)
