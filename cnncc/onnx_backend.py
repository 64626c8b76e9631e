"""cnncc as an ONNX backend (``onnx.backend.base.Backend``): what ONNX's backend test-suite drives.

    rep = CnnccBackend.prepare(model, device="CPU", target="reference")
    outputs = rep.run([x, ...])

Binding runtime inputs as constants
-----------------------------------
cnncc compiles static shapes: values that determine a shape (a Reshape's shape, Slice bounds, Pad
widths, Resize scales, TopK's k, ...) must be constants at compile time, and every input needs a
concrete shape. ONNX test models often feed such values as ordinary graph inputs. With
``bind_inputs=True`` (the default here; never in ``cnncc.compile``) a model that does not compile
as it is gets compiled at its first ``run``, specialized to the values given there:

  1. symbolic input dims take the shapes of that call;
  2. while compilation fails because a node input must be a constant, the graph inputs that value
     is computed from are turned into initializers holding the values of that call (only those:
     data inputs stay inputs, so the target still computes on them).

Any other compile error is raised as is. A specialized rep recompiles when a subsequent call
brings other input shapes or other values for the bound inputs, so results are always those of
the values actually passed.
With ``bind_inputs=False`` the compile error of ``prepare`` is raised at once.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .backends import BACKENDS
from .driver import compile as cnncc_compile
from .frontend.onnx import import_model
from .ir import CompileError, InputError
from .runtime import CompiledModel

_DEVICE_TARGETS = {"CPU": ("reference", "llvm", "cuda-emu"), "CUDA": ("cuda",)}


class CnnccBackendRep(BackendRep):
    """A prepared model; ``run(inputs)`` returns the outputs in graph order."""

    def __init__(self, model: onnx.ModelProto, target: str, bind_inputs: bool = True,
                 **options: Any):
        self.model = model
        self.target = target
        self.options = options
        self.bind_inputs = bind_inputs
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.output_names = [vo.name for vo in model.graph.output]
        self.compiled: CompiledModel | None = None
        self.error: CompileError | None = None
        self._bound: dict[str, np.ndarray] = {}
        self._key: tuple | None = None
        try:
            self.compiled = cnncc_compile(model, target=target, **options)
        except CompileError as e:
            if not bind_inputs:
                raise
            self.error = e          # resolved at the first run, from the values given there

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        arrays = self._as_list(inputs)
        if self.compiled is None or self._key is not None or not self._fits(arrays):
            self._specialize(arrays)
        assert self.compiled is not None
        feeds = {n: a for n, a in zip(self.input_names, arrays) if n not in self._bound}
        result = self.compiled.run(feeds)
        return namedtupledict("Outputs", self.output_names)(
            *[result[n] for n in self.output_names])

    def _fits(self, arrays: list[np.ndarray]) -> bool:
        """Whether the model compiled at prepare() has these shapes (a symbolic batch dim is
        compiled as 1: other batches get the variant of their shapes, as other symbolic dims)."""
        shapes = dict(zip(self.compiled.input_names, self.compiled.input_shapes))
        return all(a.shape == shapes.get(n, a.shape) for n, a in zip(self.input_names, arrays))

    def _as_list(self, inputs: Any) -> list[np.ndarray]:
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise InputError(f"missing input(s) {missing}")
            inputs = [inputs[n] for n in self.input_names]
        elif isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = [np.asarray(a) for a in inputs]
        if len(inputs) != len(self.input_names):
            raise InputError(f"model takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        return inputs

    def specialize(self, inputs: Any) -> None:
        """Compile now the variant that ``run(inputs)`` would compile on demand (a model whose
        shape-defining inputs are only known from the values)."""
        arrays = self._as_list(inputs)
        if self.compiled is None or self._key is not None:
            self._specialize(arrays)

    def _specialize(self, arrays: list[np.ndarray]) -> None:
        """Compile the variant specialized to these inputs (see the module docstring)."""
        given = dict(zip(self.input_names, arrays))
        if self._key is not None and self._key == _key(given, self._bound):
            return
        bound: set[str] = set()
        while True:
            try:
                model = _bind(self.model, {n: given[n] for n in bound})
                shapes = {n: a.shape for n, a in given.items() if n not in bound}
                graph = import_model(model, input_shapes=shapes)
                self.compiled = cnncc_compile(graph, target=self.target, **self.options)
            except CompileError as e:
                more = _inputs_needed_constant(self.model, e, set(given)) - bound
                if not more:
                    raise
                bound |= more
                continue
            self._bound = {n: given[n] for n in bound}
            self._key = _key(given, self._bound)
            return


def _key(given: dict[str, np.ndarray], bound: dict[str, np.ndarray]) -> tuple:
    """What a specialization depends on: every input's shape, the bound inputs' values."""
    return tuple((n, a.dtype.str, a.shape, a.tobytes() if n in bound else b"")
                 for n, a in given.items())


_CONST_ERROR = re.compile(r"input (\d+) \(.*?\) must be a constant")


def _inputs_needed_constant(model: onnx.ModelProto, error: CompileError,
                            inputs: set[str]) -> set[str]:
    """The graph inputs that the value a 'must be a constant' error is about is computed from."""
    match = _CONST_ERROR.search(str(error))
    if match is None or error.node is None:
        return set()
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output if o}
    # Unnamed ONNX nodes are named "<op>_<index>" by the importer.
    by_name = {(n.name or f"{n.op_type.lower()}_{i}"): n for i, n in enumerate(nodes)}
    node = by_name.get(error.node)
    index = int(match.group(1))
    if node is None or index >= len(node.input) or not node.input[index]:
        return set()
    found, stack, seen = set(), [node.input[index]], set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        if value in inputs:
            found.add(value)
        elif value in producer:
            stack.extend(i for i in producer[value].input if i)
    return found


def _bind(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the given graph inputs turned into initializers."""
    if not values:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name, value in values.items():
        out.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return out


class CnnccBackend(Backend):
    """The ONNX backend interface over ``cnncc.compile``."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", target: str = "reference",
                bind_inputs: bool = True, **kwargs: Any) -> CnnccBackendRep:
        """Compile ``model`` (a ModelProto or a path) for ``target``."""
        if not cls.supports_device(device):
            raise CompileError(f"device '{device}' is not supported by cnncc")
        if not isinstance(model, onnx.ModelProto):
            from .frontend.load import load_model_proto
            model, _ = load_model_proto(model)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("rtol", "atol")}
        return CnnccBackendRep(model, target, bind_inputs=bind_inputs, **kwargs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node on ``inputs`` (positional, matching ``node.input``)."""
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        target = kwargs.pop("target", "reference")
        arrays = [np.asarray(a) for a in inputs]
        present = [n for n in node.input if n]
        if len(present) != len(arrays):
            raise InputError(f"node takes {len(present)} input(s), got {len(arrays)}")
        graph_inputs = [onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(present, arrays)]
        graph_outputs = [onnx.helper.make_value_info(o, onnx.TypeProto()) for o in node.output
                         if o]
        model = onnx.helper.make_model(
            onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs),
            opset_imports=[onnx.helper.make_opsetid("", opset)])
        rep = cls.prepare(model, device, target=target, **kwargs)
        return rep.run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        kind = device.split(":")[0].upper()
        return any(t in BACKENDS for t in _DEVICE_TARGETS.get(kind, ()))


prepare = CnnccBackend.prepare
run_model = CnnccBackend.run_model
run_node = CnnccBackend.run_node
supports_device = CnnccBackend.supports_device
