"""The ONNX frontend: an ONNX model (path, bytes or ModelProto) -> a verified Graph.

    graph = import_model("model.onnx", input_shapes={"x": (1, 3, 224, 224)})

Steps, in order, so that a bad model is refused before anything big is allocated:
  1. parse (garbage bytes -> CompileError), opset check (7..newest), ONE error listing every
     unsupported op, structure (duplicate names, dangling inputs, cycles; nodes get sorted),
     declared input shapes (static, non-negative, sane);
  2. initializers decoded after checking their sizes (external data confined to the model folder);
  3. nodes converted in topological order: old op forms rewritten to the canonical form
     (`opset.py`), types inferred by the op table, and constant nodes folded into parameters;
  4. dead nodes and unused parameters removed, then `Graph.verify()`;
  5. the ONNX checker, as a last line of defence.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from cnncc.ir import CompileError, DType, Graph, Node, TensorType, infer_node

from cnncc.ir.fold import FOLD_LIMIT_BYTES, fold_node
from cnncc.ir.ops.catalogue import is_cnncc_op
from cnncc.passes.eliminate_dead_code import eliminate_dead_code
from .load import load_model_proto
from .opset import convert_node
from .tensors import attribute_value, elem_dtype, tensor_to_array
from .validate import (DEFAULT_DOMAINS, check_ops, check_structure, check_text, default_opset,
                       run_checker)


def import_model(source: Any, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 fold_limit: int = FOLD_LIMIT_BYTES) -> Graph:
    """Import an ONNX model into a verified Graph.

    ``source``: a path, raw bytes or an ``onnx.ModelProto``. ``input_shapes`` gives concrete
    shapes for inputs whose declared shapes are symbolic or missing (and must agree with the
    static dims that are declared). Raises CompileError for anything invalid or unsupported.
    """
    model, model_dir = load_model_proto(source)
    check_text(model)
    if model.functions:
        model = _inline_functions(model)
    try:
        opset = default_opset(model)
    except CompileError as opset_error:
        # A model of foreign-domain ops only: the list of unsupported ops is the better message.
        check_ops(model, None)
        raise opset_error
    check_ops(model, opset)
    order = check_structure(model.graph)
    importer = _Importer(model, model_dir, opset, fold_limit)
    importer.declare_inputs(dict(input_shapes or {}))
    importer.load_initializers()
    for idx in order:
        importer.convert(idx)
    graph = importer.finish()
    # Last: our own checks above name the node and the problem more precisely.
    run_checker(model, order, {o: graph.types[o] for o in graph.outputs})
    return graph


class _Importer:
    """Builds the Graph; implements the `opset.Emitter` interface used by the rewrites."""

    def __init__(self, model: onnx.ModelProto, model_dir: str | None, opset: int,
                 fold_limit: int):
        self.model = model
        self.proto = model.graph
        self.model_dir = model_dir
        self.opset = opset
        self.fold_limit = fold_limit
        self.graph = Graph(name=self.proto.name or "onnx_graph")
        # Every name the model uses, so that invented names never collide with any of them.
        self.taken: set[str] = {i.name for i in self.proto.input}
        self.taken.update(t.name for t in self.proto.initializer)
        for node in self.proto.node:
            self.taken.update(node.output)
            if node.name:
                self.taken.add(node.name)
        self.init_names = {t.name for t in self.proto.initializer}
        self.used = {i for node in self.proto.node for i in node.input if i}
        self.used.update(o.name for o in self.proto.output)

    # ---- inputs and initializers --------------------------------------------------------------

    def declare_inputs(self, shapes: dict[str, Sequence[int]]) -> None:
        runtime = [vi for vi in self.proto.input if vi.name not in self.init_names]
        unknown = sorted(set(shapes) - {vi.name for vi in runtime})
        if unknown:
            raise CompileError(f"input_shapes names {unknown}, which are not runtime inputs of "
                               f"the model (inputs: {[vi.name for vi in runtime]})")
        for vi in runtime:
            self.graph.add_input(vi.name, self._input_type(vi, shapes.get(vi.name)))

    def _input_type(self, vi: onnx.ValueInfoProto, given: Sequence[int] | None) -> TensorType:
        what = f"graph input '{vi.name}'"
        if vi.type.WhichOneof("value") != "tensor_type":
            kind = vi.type.WhichOneof("value") or "unknown"
            raise CompileError(f"{what} has type {kind}; only tensors are supported")
        tt = vi.type.tensor_type
        dtype = elem_dtype(tt.elem_type, what)
        declared: list[int | None] | None = None
        if tt.HasField("shape"):
            declared = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if given is not None:
            try:
                shape = [int(d) for d in given]
            except (TypeError, ValueError):
                raise CompileError(f"input_shapes['{vi.name}'] = {given!r} is not a shape") \
                    from None
            if declared is not None and (len(declared) != len(shape) or any(
                    d is not None and d != s for d, s in zip(declared, shape))):
                raise CompileError(f"input_shapes['{vi.name}'] = {shape} contradicts the "
                                   f"declared shape {_dims_text(tt)}")
        elif declared is None:
            raise CompileError(f"{what} has no declared shape: pass it with "
                               f"input_shapes={{'{vi.name}': (...)}}")
        elif len(declared) >= 2 and declared[0] is None and None not in declared[1:]:
            # A symbolic batch dim alone: compiled for batch 1, the batch is then given at run
            # time (model(x) with x of any leading N, cnncc/ir/batch.py).
            shape = [1] + [int(d) for d in declared[1:]]
        elif any(d is None for d in declared):
            raise CompileError(f"{what} has symbolic or unknown dims {_dims_text(tt)}: pass "
                               f"concrete ones with input_shapes={{'{vi.name}': (...)}}")
        else:
            shape = [int(d) for d in declared]
        if any(d < 0 for d in shape):
            raise CompileError(f"{what} has negative dims {shape}")
        try:
            return TensorType(dtype, tuple(shape))
        except ValueError as e:
            raise CompileError(f"{what}: {e}") from None

    def load_initializers(self) -> None:
        for t in self.proto.initializer:
            if t.name not in self.used:     # never read: not decoded (nor allocated)
                continue
            value = tensor_to_array(t, self.model_dir, f"initializer '{t.name}'")
            self._set_param(t.name, value)

    def _set_param(self, name: str, value: np.ndarray) -> None:
        value = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d 1-d)
        try:
            ttype = TensorType(DType.from_numpy(value.dtype), value.shape)
        except (TypeError, ValueError) as e:
            raise CompileError(f"constant '{name}': {e}") from None
        self.graph.params[name] = value
        self.graph.types[name] = ttype

    # ---- the Emitter interface ------------------------------------------------------------------

    def type(self, value: str) -> TensorType:
        return self.graph.types[value]

    def value(self, value: str) -> np.ndarray | None:
        return self.graph.params.get(value)

    def fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.taken:
            name, i = f"{hint}_{i}", i + 1
        self.taken.add(name)
        return name

    def is_used(self, value: str) -> bool:
        return value in self.used

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self._set_param(name, np.asarray(array))
        return name

    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], outputs: list[str],
             name: str) -> None:
        node = Node(op, list(inputs), list(outputs), dict(attrs), name)
        types = infer_node(node, self.graph.types, self.graph.params)
        for out, ttype in zip(node.outputs, types):
            if out:
                self.graph.types[out] = ttype
        values = fold_node(self.graph, node, self.fold_limit)
        if values is None:
            self.graph.nodes.append(node)
            return
        for out, value in zip(node.outputs, values):
            if out:
                self._set_param(out, value)

    # ---- conversion -----------------------------------------------------------------------------

    def convert(self, idx: int) -> None:
        proto = self.proto.node[idx]
        name = proto.name or self.fresh(f"{proto.op_type.lower()}_{idx}")
        self.taken.add(name)
        attrs = {a.name: attribute_value(a, name, self.model_dir) for a in proto.attribute}
        if len(attrs) != len(proto.attribute):
            raise CompileError(f"{proto.op_type}: an attribute is given twice", name)
        if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
            self._constant(proto, name, attrs)
            return
        if is_cnncc_op(proto.domain, proto.op_type):
            self._cnncc_op(proto, name, attrs)
            return
        if proto.domain not in DEFAULT_DOMAINS:     # com.microsoft ops: one version each
            convert_node(self, proto.op_type, list(proto.input), list(proto.output), attrs,
                         name, 1)
            return
        try:
            since = onnx.defs.get_schema(proto.op_type, self.opset, "").since_version
        except onnx.defs.SchemaError:
            raise CompileError(f"op {proto.op_type} does not exist at opset {self.opset}",
                               name) from None
        convert_node(self, proto.op_type, list(proto.input), list(proto.output), attrs, name,
                     since)

    def _constant(self, proto: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
        if len(attrs) != 1 or len(proto.output) != 1 or proto.input:
            raise CompileError("Constant needs exactly one value attribute, no inputs and one "
                               "output", name)
        (key, value), = attrs.items()
        if key == "value":
            array = value
        elif key == "value_float":
            array = np.array(value, dtype=np.float32)
        elif key == "value_floats":
            array = np.array(value, dtype=np.float32).reshape(len(value))
        elif key == "value_int":
            array = np.array(value, dtype=np.int64)
        elif key == "value_ints":
            array = np.array(value, dtype=np.int64).reshape(len(value))
        else:
            raise CompileError(f"Constant with attribute '{key}' is not supported "
                               "(string and sparse constants cannot be compiled)", name)
        self._set_param(proto.output[0], array)

    def _cnncc_op(self, proto: onnx.NodeProto, name: str, attrs: dict[str, Any]) -> None:
        """A call of a cnncc-domain function: the native op (an all-zero bias, which the
        exporter writes for a layer without one, is dropped)."""
        inputs = list(proto.input)
        if len(inputs) == 3 and inputs[2] in self.graph.params \
                and not np.any(self.graph.params[inputs[2]]):
            inputs = inputs[:2]
        self.emit(proto.op_type, inputs, attrs, list(proto.output), name)

    # ---- finishing ------------------------------------------------------------------------------

    def finish(self) -> Graph:
        g = self.graph
        g.outputs = [o.name for o in self.proto.output]
        for vi in self.proto.output:
            self._check_output_type(vi)
        return eliminate_dead_code(g).verify()

    def _check_output_type(self, vi: onnx.ValueInfoProto) -> None:
        if vi.type.WhichOneof("value") != "tensor_type":
            if vi.type.WhichOneof("value") is None:
                return
            raise CompileError(f"graph output '{vi.name}' is not a tensor")
        tt = vi.type.tensor_type
        got = self.graph.types[vi.name]
        if tt.elem_type and elem_dtype(tt.elem_type, f"graph output '{vi.name}'") != got.dtype:
            raise CompileError(f"graph output '{vi.name}' is declared "
                               f"{onnx.TensorProto.DataType.Name(tt.elem_type)} but computes "
                               f"{got.dtype.value}")
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if len(dims) != got.rank or any(d is not None and d != s
                                            for d, s in zip(dims, got.shape)):
                raise CompileError(f"graph output '{vi.name}' is declared with shape "
                                   f"{_dims_text(tt)} but computes {list(got.shape)}")


def _inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace calls of model-local functions (exporters emit them) by their bodies, except
    cnncc's own ops (onnx_functions.py), which stay calls and become the native ops."""
    import onnx.inliner
    ours = [f for f in model.functions if is_cnncc_op(f.domain, f.name)]
    if ours:            # inline the others only: our calls are left alone without their bodies
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        del copy.functions[:]
        copy.functions.extend(f for f in model.functions if f not in ours)
        model = copy
    try:
        inlined = onnx.inliner.inline_local_functions(model, convert_version=True)
    except Exception as e:  # noqa: BLE001 - the inliner reports malformed functions many ways
        raise CompileError(f"cannot inline the model's local functions: {e}") from None
    inlined.functions.extend(ours)
    check_text(inlined)
    return inlined


def _dims_text(tt: onnx.TypeProto.Tensor) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                           for d in tt.shape.dim) + "]"
