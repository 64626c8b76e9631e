"""Model-level checks on the ONNX proto, run before any tensor is decoded or any node converted.

Order matters for the user: first the opset, then ONE error listing every unsupported op, then the
structure (duplicate names, dangling inputs, cycles), then the ONNX checker.
"""
from __future__ import annotations

import networkx as nx
import onnx

from cnncc.ir import OP_TABLE, CompileError, TensorType
from cnncc.ir.ops.catalogue import is_cnncc_op

from .opset import RENAMED_OPS

MIN_OPSET = 7
DEFAULT_DOMAINS = ("", "ai.onnx")
# Ops the frontend turns into parameters itself (not through the op table).
FRONTEND_OPS = {"Constant"}


def newest_opset() -> int:
    return onnx.defs.onnx_opset_version()


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports, checked to be in range."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise CompileError("the model imports no opset of the default ONNX domain "
                           "(opset_import has no entry for '' / 'ai.onnx')")
    if len(set(versions)) > 1:
        raise CompileError(f"the model imports the default ONNX domain twice, with versions "
                           f"{sorted(set(versions))}")
    version = versions[0]
    top = newest_opset()
    if not MIN_OPSET <= version <= top:
        raise CompileError(f"opset {version} is not supported: cnncc imports ONNX opsets "
                           f"{MIN_OPSET}..{top}")
    return version


def is_supported_op(op_type: str, domain: str) -> bool:
    if is_cnncc_op(domain, op_type):
        return True
    if domain not in DEFAULT_DOMAINS:       # an op of another domain the table defines
        return op_type in OP_TABLE and OP_TABLE[op_type].domain == domain
    if op_type in FRONTEND_OPS:
        return True
    opdef = OP_TABLE.get(RENAMED_OPS.get(op_type, op_type))
    return opdef is not None and opdef.domain == ""


def check_ops(model: onnx.ModelProto, opset: int | None) -> None:
    """Raise ONE CompileError listing every unsupported op type with its node names."""
    missing: dict[str, list[str]] = {}
    for idx, node in enumerate(model.graph.node):
        if not is_supported_op(node.op_type, node.domain):
            key = node.op_type if node.domain in DEFAULT_DOMAINS \
                else f"{node.domain}.{node.op_type}"
            missing.setdefault(key, []).append(node.name or f"#{idx}")
    if missing:
        parts = []
        for op, names in sorted(missing.items()):
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} nodes)" if len(names) > 8 else "")
            parts.append(f"{op} (nodes: {shown})")
        where = f"opset {opset}" if opset is not None else "no default-domain opset"
        raise CompileError(f"unsupported op(s) in this model ({where}): " + "; ".join(parts))


def node_label(node: onnx.NodeProto, idx: int) -> str:
    return node.name or f"{node.op_type}#{idx}"


def check_text(model: onnx.ModelProto) -> None:
    """Every name and op type must be text: protobuf hands back bytes for invalid UTF-8."""
    graph = model.graph
    fields = [o.domain for o in model.opset_import]
    fields += [v.name for v in list(graph.input) + list(graph.output)]
    fields += [t.name for t in graph.initializer]
    for node in graph.node:
        fields += [node.name, node.op_type, node.domain, *node.input, *node.output]
        fields += [a.name for a in node.attribute]
    for text in fields:
        if not isinstance(text, str):
            raise CompileError(f"the model contains a name that is not valid UTF-8 text: "
                               f"{bytes(text)[:40]!r}")


def check_structure(graph: onnx.GraphProto) -> list[int]:
    """Check names and dataflow; return the node indices in a topological order.

    Nodes need not be sorted in the file (they are sorted here); a real cycle, a value defined
    twice, a duplicate name or an input that nothing defines is a CompileError.
    """
    inits = [t.name for t in graph.initializer]
    _no_duplicates(inits, "initializer")
    inputs = [i.name for i in graph.input]
    _no_duplicates(inputs, "graph input")
    _no_duplicates([o.name for o in graph.output], "graph output")
    for name in inputs + inits:
        if not name:
            raise CompileError("a graph input or initializer has an empty name")
    if graph.sparse_initializer:
        raise CompileError("sparse initializers are not supported "
                           f"('{graph.sparse_initializer[0].values.name}')")
    defined: dict[str, int] = {}          # value -> producing node index (-1: input/initializer)
    for name in inputs + inits:
        defined[name] = -1
    names: set[str] = set()
    for idx, node in enumerate(graph.node):
        label = node_label(node, idx)
        if node.name:
            if node.name in names:
                raise CompileError(f"duplicate node name '{node.name}'", node.name)
            names.add(node.name)
        for out in node.output:
            if not out:
                continue
            if out in defined:
                where = ("a graph input or initializer" if defined[out] < 0 else
                         f"node '{node_label(graph.node[defined[out]], defined[out])}'")
                raise CompileError(f"value '{out}' is defined twice (also by {where})", label)
            defined[out] = idx
    dg = nx.DiGraph()
    dg.add_nodes_from(range(len(graph.node)))
    for idx, node in enumerate(graph.node):
        for name in node.input:
            if not name:
                continue
            if name not in defined:
                raise CompileError(f"input '{name}' of node '{node_label(node, idx)}' is never "
                                   "defined (not a graph input, initializer or node output)",
                                   node_label(node, idx))
            if defined[name] >= 0:
                dg.add_edge(defined[name], idx)
    for out in graph.output:
        if out.name not in defined:
            raise CompileError(f"graph output '{out.name}' is never produced")
    try:
        return list(nx.lexicographical_topological_sort(dg))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(dg)
        text = " -> ".join(node_label(graph.node[a], a) for a, _ in cycle)
        raise CompileError(f"the graph has a cycle: {text} -> "
                           f"{node_label(graph.node[cycle[0][0]], cycle[0][0])}") from None


def _no_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CompileError(f"duplicate {what} name '{name}'")
        seen.add(name)


def run_checker(model: onnx.ModelProto, order: list[int],
                output_types: dict[str, TensorType]) -> None:
    """The ONNX checker as an extra line of defence; its complaints become CompileErrors.

    The checker insists on things we do not: nodes in file order (``order`` is the topological
    order we computed) and a declared type and shape on every graph output (``output_types`` are
    the inferred ones). A copy without the weights (``_weightless``) with those filled in is
    checked. Skipped for models with external data (the checker would open the files itself,
    without our confinement rules) and for models too large to serialize.
    """
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return
    try:
        copy = _weightless(model)
        if copy.ByteSize() >= 2**31:
            return
        untyped = [i for i, o in enumerate(model.graph.output)
                   if not o.type.tensor_type.HasField("shape") or not o.type.tensor_type.elem_type]
        if order != sorted(order):
            del copy.graph.node[:]
            copy.graph.node.extend(model.graph.node[i] for i in order)
        for i in untyped:
            out = copy.graph.output[i]
            t = output_types[out.name]
            out.type.CopyFrom(onnx.helper.make_tensor_type_proto(t.dtype.to_onnx(), t.shape))
        for node in copy.graph.node:
            _drop_legacy_attrs(node)
        onnx.checker.check_model(copy)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise CompileError(f"the ONNX checker rejects the model: {first}") from None
    except (RuntimeError, ValueError, TypeError) as e:
        raise CompileError(f"the ONNX checker failed on the model: {e}") from None


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for the checker without the initializers' payloads: each top-level
    initializer becomes a typed graph input (the checker would serialize the whole model and
    parse it again, two more copies of VGG-11's 531 MB; tensor_to_array checks every payload
    against its dims)."""
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip="graph")
    _copy_fields(model.graph, copy.graph, skip="initializer")
    inputs = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in inputs:
            inputs.add(t.name)
            copy.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type,
                                                                       list(t.dims)))
    return copy


def _copy_fields(src, dst, skip: str) -> None:
    """Every set field of message ``src`` but ``skip`` copied into ``dst``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        repeated = getattr(fd, "is_repeated", None)
        if repeated is None:                        # protobuf before 6
            repeated = fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _legacy_attr(node: onnx.NodeProto, attr: onnx.AttributeProto) -> bool:
    """Attributes of opset-1..6 forms that the importer accepts and drops or rewrites."""
    return (attr.name == "consumed_inputs"
            or (node.op_type == "Gemm" and attr.name == "broadcast")
            or (node.op_type in ("BatchNormalization", "Dropout") and attr.name == "is_test")
            or (node.op_type == "Cast" and attr.name == "to"
                and attr.type == onnx.AttributeProto.STRING))


def _drop_legacy_attrs(node: onnx.NodeProto) -> None:
    for i in reversed(range(len(node.attribute))):
        attr = node.attribute[i]
        if not _legacy_attr(node, attr):
            continue
        if attr.name == "to":           # the importer already validated the type name
            value = onnx.TensorProto.DataType.Value(attr.s.decode().upper())
            node.attribute[i].CopyFrom(onnx.helper.make_attribute("to", value))
        else:
            del node.attribute[i]
