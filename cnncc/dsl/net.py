"""Nets: a Python function over symbolic tensors, traced once into a verified Graph.

    @dsl.net(input_shape=(1, 3, 32, 32), seed=0)
    def tiny(x: dsl.Tensor) -> dsl.Tensor:
        return dsl.global_avg_pool(dsl.relu(dsl.conv2d(x, 16, 3, padding=1)))

    net = tiny()                       # a Net (tiny(seed=1) for other random weights)
    net.to_graph(); net.to_onnx("tiny.onnx"); cnncc.compile(net)

The function's first parameters are the inputs (one per shape in ``input_shape``, named after
the parameters); further keyword arguments given when building are passed through. It returns
one Tensor, a tuple/list of Tensors, or a dict {output name: Tensor}.
"""
from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Union

import numpy as np

from cnncc.ir import CompileError, Graph, TensorType
from cnncc.receptive_field import format_summary

from .tensor import Builder, Tensor, tracing

Shape = Sequence[int]
InputShapes = Union[Shape, Sequence[Shape], Mapping[str, Shape]]
_KEEP = object()      # "use the seed given to @dsl.net" (None is a valid seed: fresh entropy)


class Net:
    """A built network: its graph, and ways to compile, export and inspect it."""

    def __init__(self, graph: Graph, seed: int | None = None):
        self._graph = graph.verify()
        self.seed = seed

    @property
    def name(self) -> str:
        return self._graph.name

    # ---- signature ------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self._graph.inputs)

    @property
    def input_types(self) -> list[TensorType]:
        return [self._graph.types[n] for n in self._graph.inputs]

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.input_types]

    @property
    def output_names(self) -> list[str]:
        return list(self._graph.outputs)

    @property
    def output_types(self) -> list[TensorType]:
        return [self._graph.types[n] for n in self._graph.outputs]

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.output_types]

    @property
    def num_params(self) -> int:
        """Number of weight elements (all constants of the graph)."""
        return int(sum(v.size for v in self._graph.params.values()))

    # ---- conversions ----------------------------------------------------------------------------
    def to_graph(self) -> Graph:
        """A verified copy of the net's graph (callers may transform it freely)."""
        return self._graph.copy()

    def to_onnx(self, path: str | os.PathLike | None = None) -> Any:
        """The net as an onnx.ModelProto; also saved to ``path`` when one is given."""
        from cnncc.export_onnx import save_onnx, to_onnx
        if path is None:
            return to_onnx(self._graph)
        return save_onnx(self._graph, path)

    def quantize(self, data: Any = None, path: str | os.PathLike | None = None,
                 **options: Any) -> Any:
        """Static int8 quantization calibrated on ``data`` (an (N, ...) array, a folder of
        images, an .npy/.npz file; None: seeded random inputs): the QDQ onnx.ModelProto (also
        saved to ``path``), which ``cnncc.compile`` runs with int8 kernels. Options as
        ``cnncc.quantize`` (per_channel, method, threads, samples, verbose)."""
        from cnncc.quantize import quantize
        return quantize(self, path, calibration=data, **options)[0]

    def compile(self, target: str | None = None, **options: Any) -> Any:
        """``cnncc.compile(self, target, **options)``: a callable CompiledModel."""
        from cnncc.driver import compile as compile_
        return compile_(self, target=target, **options)

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """Per layer: output shape, parameters, MFLOPs and the receptive field (size, jump,
        start per spatial axis, in input pixels; cnncc/receptive_field.py). Printed with
        ``print_fn`` (None: only returned)."""
        text = format_summary(self._graph)
        if print_fn is not None:
            print_fn(text)
        return text

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Random inputs of the right shapes and dtypes (standard normal for floats)."""
        rng = np.random.default_rng(seed)
        out = []
        for t in self.input_types:
            if t.dtype.is_float:
                out.append(rng.standard_normal(t.shape).astype(t.dtype.np))
            else:
                out.append(rng.integers(0, 10, size=t.shape).astype(t.dtype.np))
        return out

    def __str__(self) -> str:
        return str(self._graph)

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {t}" for n, t in zip(self.input_names, self.input_types))
        outs = ", ".join(f"{n}: {t}" for n, t in zip(self.output_names, self.output_types))
        return (f"<Net {self.name} ({ins}) -> ({outs}), {len(self._graph.nodes)} nodes, "
                f"{self.num_params} weights>")


def _input_specs(fn: Callable, input_shape: InputShapes) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) for each input, names from the function's leading parameters."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(input_shape, Mapping):
        specs = [(str(k), v) for k, v in input_shape.items()]
        names = [p.name for p in params[:len(specs)]]
        if [n for n, _ in specs] != names:
            raise CompileError(f"input_shape names {[n for n, _ in specs]} do not match the "
                               f"function's first parameters {names}")
    else:
        shapes = list(input_shape)
        if not any(isinstance(d, (Sequence, np.ndarray)) for d in shapes):
            shapes = [shapes]           # one shape, not a list of shapes
        if len(shapes) > len(params):
            raise CompileError(f"{len(shapes)} input shapes but {fn.__name__}() takes "
                               f"{len(params)} positional parameter(s)")
        specs = [(p.name, s) for p, s in zip(params, shapes)]
    out = []
    for name, shape in specs:
        if isinstance(shape, (int, np.integer)) or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
            raise CompileError(f"input '{name}': shape must be a sequence of ints, got {shape!r}")
        out.append((name, tuple(int(d) for d in shape)))
    if not out:
        raise CompileError(f"{fn.__name__}: a net needs at least one input shape")
    return out


def _outputs(result: Any, fn_name: str) -> list[tuple[str, Tensor]]:
    if isinstance(result, Tensor):
        return [("output", result)]
    if isinstance(result, Mapping):
        items = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, (tuple, list)):
        items = [(f"output{i}", v) for i, v in enumerate(result)]
    else:
        raise CompileError(f"{fn_name}() must return a dsl.Tensor, a tuple/list of them or a "
                           f"dict name -> Tensor, got {type(result).__name__}")
    if not items:
        raise CompileError(f"{fn_name}() returned no outputs")
    for name, v in items:
        if not isinstance(v, Tensor):
            raise CompileError(f"{fn_name}(): output '{name}' is a {type(v).__name__}, not a "
                               "dsl.Tensor")
    return items


def build(fn: Callable[..., Any], input_shape: InputShapes, name: str | None = None,
          seed: int | None = 0, dtype: Any = np.float32, **kwargs: Any) -> Net:
    """Trace ``fn`` on symbolic inputs of ``input_shape`` and return the Net.

    ``seed`` seeds the random weights (None: fresh entropy); ``dtype`` is the inputs' element
    type; ``kwargs`` go to ``fn`` (e.g. num_classes).
    """
    specs = _input_specs(fn, input_shape)
    builder = Builder(name or fn.__name__, seed)
    with tracing(builder):
        inputs = [builder.input(n, s, dtype) for n, s in specs]
        result = fn(*inputs, **kwargs)
        outputs = _outputs(result, fn.__name__)
    graph = builder.graph
    produced = {o for n in graph.nodes for o in n.outputs}
    renamed: dict[str, str] = {}            # node outputs already given an output name
    for out_name, t in outputs:
        if t.builder is not builder:
            raise CompileError(f"{fn.__name__}(): output '{out_name}' belongs to another net")
        value = renamed.get(t.name, t.name)
        if value not in produced or value in renamed.values():
            # An input, a constant or an already-named output: give it its own Identity node.
            value = builder.node("Identity", [Tensor(builder, value)],
                                 name=builder.unique(out_name))[0].name
        if value != out_name:
            renamed[value] = builder.rename_value(value, out_name)
            renamed[t.name] = renamed[value]
            value = renamed[value]
        else:
            renamed[value] = value
        graph.outputs.append(value)
    return Net(graph, seed)


class NetDef:
    """What ``@dsl.net`` makes of a function: call it to build a Net (optionally overriding
    seed, input_shape, name, dtype, and passing extra keyword arguments to the function)."""

    def __init__(self, fn: Callable[..., Any], input_shape: InputShapes | None, name: str | None,
                 seed: int | None, dtype: Any):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.input_shape = input_shape
        self.name = name or fn.__name__
        self.seed = seed
        self.dtype = dtype

    def __call__(self, *, seed: Any = _KEEP, input_shape: InputShapes | None = None,
                 name: str | None = None, dtype: Any = None, **kwargs: Any) -> Net:
        shape = input_shape if input_shape is not None else self.input_shape
        if shape is None:
            raise CompileError(f"net '{self.name}': no input_shape (give it to @dsl.net or here)")
        return build(self.fn, shape, name=name or self.name,
                     seed=self.seed if seed is _KEEP else seed,
                     dtype=dtype or self.dtype, **kwargs)

    def __repr__(self) -> str:
        return f"<dsl.net {self.name} input_shape={self.input_shape}>"


def net(fn: Callable[..., Any] | None = None, *, input_shape: InputShapes | None = None,
        name: str | None = None, seed: int | None = 0,
        dtype: Any = np.float32) -> Any:
    """Decorator turning a function over dsl.Tensors into a NetDef (call it to get a Net).

    Usable bare (``@dsl.net``, then give input_shape when calling) or with arguments.
    """
    def wrap(f: Callable[..., Any]) -> NetDef:
        return NetDef(f, input_shape, name, seed, dtype)
    return wrap(fn) if fn is not None else wrap
