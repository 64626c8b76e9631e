"""The op table: for each op, its attribute schema, its shape/type inference and a numpy reference.

An op is defined once, as data:

    register(OpDef("Relu", infer=same_as_input(0), reference=lambda ctx, x: np.maximum(x, 0)))

``infer(ctx) -> list[TensorType]`` sees the input types, the values of constant inputs and the
attributes with defaults filled; it raises ``ctx.fail(...)`` (a CompileError naming the node) on
anything inconsistent: that is where attributes and shapes are validated.
``reference(ctx, *inputs) -> array | list[array]`` is the oracle every backend is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from cnncc.ir.dtypes import DType
from cnncc.ir.errors import CompileError
from cnncc.ir.node import Node
from cnncc.ir.types import TensorType

REQUIRED = object()
ATTR_KINDS = ("int", "float", "str", "ints", "floats", "strs", "tensor", "graph")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED

    def __post_init__(self):
        assert self.kind in ATTR_KINDS, self.kind


@dataclass
class OpDef:
    name: str
    infer: Callable[["OpContext"], list[TensorType]]
    reference: Callable[..., Any]
    attrs: dict[str, Attr] = field(default_factory=dict)
    inputs: tuple[int, int] = (1, 1)       # min, max count (max -1: unbounded)
    outputs: tuple[int, int] = (1, 1)
    doc: str = ""
    domain: str = ""        # the ONNX domain of ops outside the default one (com.microsoft)


OP_TABLE: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OP_TABLE:
        raise ValueError(f"op {opdef.name} registered twice")
    OP_TABLE[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return OP_TABLE[name]
    except KeyError:
        raise CompileError(f"unknown op '{name}'") from None


class OpContext:
    """What inference and the reference see of one node: attributes, input types and constants."""

    def __init__(self, node: Node, opdef: OpDef, types: Sequence[TensorType | None],
                 consts: Sequence[np.ndarray | None]):
        self.node = node
        self.op = opdef
        self.types = list(types)
        self.consts = list(consts)
        self.attrs = resolve_attrs(opdef, node)
        self.num_outputs = len(node.outputs)

    def __getitem__(self, key: str) -> Any:
        return self.attrs[key]

    def fail(self, message: str) -> NoReturn:
        raise CompileError(f"{self.node.op}: {message}", self.node.name or None)

    def has(self, i: int) -> bool:
        """Whether optional input i is present."""
        return i < len(self.types) and self.types[i] is not None

    def type(self, i: int) -> TensorType:
        if not self.has(i):
            self.fail(f"input {i} is required")
        return self.types[i]

    def const(self, i: int, what: str = "") -> np.ndarray:
        """The value of input i, which must be a compile-time constant (static shapes need it)."""
        if not self.has(i):
            self.fail(f"input {i} ({what or 'value'}) is required")
        if i >= len(self.consts) or self.consts[i] is None:
            self.fail(f"input {i} ({what or 'value'}) must be a constant: data-dependent shapes "
                      "are not supported")
        return self.consts[i]

    def const_or_none(self, i: int) -> np.ndarray | None:
        return self.consts[i] if self.has(i) and i < len(self.consts) else None

    def check(self, cond: bool, message: str) -> None:
        if not cond:
            self.fail(message)


def resolve_attrs(opdef: OpDef, node: Node) -> dict[str, Any]:
    """The node's attributes, checked against the schema, with defaults filled in."""
    out: dict[str, Any] = {}
    for key, value in node.attrs.items():
        spec = opdef.attrs.get(key)
        if spec is None:
            raise CompileError(f"{node.op}: unknown attribute '{key}'", node.name or None)
        out[key] = _coerce(node, key, spec.kind, value)
    for key, spec in opdef.attrs.items():
        if key not in out:
            if spec.default is REQUIRED:
                raise CompileError(f"{node.op}: missing required attribute '{key}'",
                                   node.name or None)
            out[key] = spec.default
    return out


def _coerce(node: Node, key: str, kind: str, value: Any) -> Any:
    def bad() -> NoReturn:
        raise CompileError(f"{node.op}: attribute '{key}' should be {kind}, got {value!r:.80}",
                           node.name or None)

    try:
        if kind == "int":
            if isinstance(value, (bool, int, np.integer)):
                return int(value)
            bad()
        if kind == "float":
            if isinstance(value, (int, float, np.integer, np.floating)):
                return float(value)
            bad()
        if kind == "str":
            if isinstance(value, bytes):
                return value.decode()
            if isinstance(value, str):
                return value
            bad()
        if kind in ("ints", "floats", "strs"):
            if not isinstance(value, (list, tuple, np.ndarray)):
                bad()
            elem = {"ints": "int", "floats": "float", "strs": "str"}[kind]
            return [_coerce(node, key, elem, v) for v in value]
        if kind == "tensor":
            if isinstance(value, np.ndarray):
                return value
            bad()
        return value
    except (TypeError, ValueError, OverflowError):
        bad()


def infer_node(node: Node, types: dict[str, TensorType],
               params: dict[str, np.ndarray]) -> list[TensorType]:
    """Infer the output types of ``node`` given the types (and constant values) of its inputs."""
    opdef = get_op(node.op)
    lo, hi = opdef.inputs
    n_in = len(node.inputs)
    while n_in and not node.inputs[n_in - 1]:      # trailing omitted optionals do not count
        n_in -= 1
    if n_in < lo or (hi >= 0 and n_in > hi):
        raise CompileError(f"{node.op}: takes {lo}..{'n' if hi < 0 else hi} inputs, got {n_in}",
                           node.name or None)
    lo, hi = opdef.outputs
    if not lo <= len(node.outputs) <= (hi if hi >= 0 else 1 << 30):
        raise CompileError(f"{node.op}: has {lo}..{'n' if hi < 0 else hi} outputs, "
                           f"got {len(node.outputs)}", node.name or None)
    in_types, consts = [], []
    for i in node.inputs:
        if not i:
            in_types.append(None)
            consts.append(None)
            continue
        if i not in types:
            raise CompileError(f"{node.op}: input '{i}' has no type (undefined value)",
                               node.name or None)
        in_types.append(types[i])
        consts.append(params.get(i))
    ctx = OpContext(node, opdef, in_types, consts)
    try:
        out = opdef.infer(ctx)
    except CompileError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError) as e:
        # A malformed attribute or shape that the rule did not anticipate still gets a named error.
        raise CompileError(f"{node.op}: invalid attributes or input shapes ({e})",
                           node.name or None) from None
    if len(out) < len(node.outputs):
        raise CompileError(f"{node.op}: inference gave {len(out)} outputs for "
                           f"{len(node.outputs)}", node.name or None)
    return list(out[: len(node.outputs)])


def run_reference(node: Node, inputs: list[np.ndarray | None],
                  types: Sequence[TensorType | None] | None = None) -> list[np.ndarray]:
    """Evaluate ``node`` on concrete inputs with its numpy reference."""
    opdef = get_op(node.op)
    if types is None:
        types = [None if x is None else TensorType(DType.from_numpy(x.dtype), x.shape)
                 for x in inputs]
    ctx = OpContext(node, opdef, types, inputs)
    out = opdef.reference(ctx, *inputs)
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o) for o in out]


# ---- inference helpers shared by the op files ----------------------------------------------------

def same_as_input(i: int = 0) -> Callable[[OpContext], list[TensorType]]:
    def infer(ctx: OpContext) -> list[TensorType]:
        return [ctx.type(i)] * max(1, ctx.num_outputs)
    return infer


def broadcast_shapes(ctx: OpContext, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """Numpy-style (multidirectional) broadcasting, with a named error when shapes clash."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            ctx.fail("shapes " + ", ".join(str(list(s)) for s in shapes) + " do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_axis(ctx: OpContext, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        ctx.fail(f"{what} {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis
