"""Symbolic tensors and the builder that records them into a Graph while a net is traced.

A ``Tensor`` names one value of the graph under construction. Every DSL operation appends a node
with ``Graph.add_node``, which runs the op table's shape inference at once: a mistake in a net
definition raises ``CompileError`` from the line that made it, and the message says where.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from typing import Any, Iterator, Sequence, Union

import numpy as np

from cnncc.ir import CompileError, DType, Graph, TensorType

# The builder of the net being traced: lets `constant()` and scopes work without a tensor at hand.
_CURRENT: contextvars.ContextVar["Builder | None"] = contextvars.ContextVar("cnncc_dsl_builder",
                                                                           default=None)
_DSL_DIR = os.path.dirname(os.path.abspath(__file__))
# Frames in these files are DSL machinery; error locations point past them, at the net definition.
_INTERNAL = {os.path.join(_DSL_DIR, f) for f in
             ("tensor.py", "layers.py", "functional.py", "net.py", "weights.py",
              "layers_catalogue.py")}


class Builder:
    """Tracing state of one net: the graph being built, the weight RNG and the name scopes."""

    def __init__(self, name: str, seed: int | None):
        self.graph = Graph(name)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._scopes: list[str] = []

    # ---- names ----------------------------------------------------------------------------------
    def scoped(self, base: str) -> str:
        """``base`` prefixed with the open scopes, e.g. ``layer1.0.conv1``."""
        return ".".join(self._scopes + [base])

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scopes.append(str(name))
        try:
            yield
        finally:
            self._scopes.pop()

    # ---- values ---------------------------------------------------------------------------------
    def input(self, name: str, shape: Sequence[int], dtype: Any) -> "Tensor":
        try:
            ttype = TensorType(DType.from_numpy(dtype), tuple(int(d) for d in shape))
        except (TypeError, ValueError) as e:
            raise CompileError(f"input '{name}': bad shape {tuple(shape)!r} or dtype ({e})") \
                from None
        if any(d == 0 for d in ttype.shape):
            raise CompileError(f"input '{name}': zero-sized dimension in shape {ttype.shape}")
        return Tensor(self, self.graph.add_input(self.graph.fresh_name(name), ttype))

    def unique(self, base: str) -> str:
        """A fresh node name for ``base`` in the current scope (weights are named after it)."""
        return self.graph.fresh_name(self.scoped(base))

    def param(self, name: str, value: np.ndarray, scoped: bool = True) -> "Tensor":
        """Add a constant (weight, shape, scalar); ``name`` is prefixed with the open scopes
        unless ``scoped`` is False (it already is, e.g. ``unique("conv") + ".weight"``)."""
        return Tensor(self, self.graph.add_param(self.scoped(name) if scoped else name,
                                                 np.asarray(value)))

    def node(self, op: str, inputs: Sequence["Tensor | None"], attrs: dict | None = None,
             name: str | None = None, outputs: int = 1) -> list["Tensor"]:
        """Append an ``op`` node (shape inference runs now) and return its outputs as Tensors.

        ``name`` is the node's full name (from ``unique``); by default the op name in scope."""
        names = []
        for t in inputs:
            if t is None:
                names.append("")
                continue
            if t.builder is not self:
                raise CompileError(f"{op}: tensor '{t.name}' belongs to another net "
                                   f"('{t.builder.graph.name}')" + user_location())
            names.append(t.name)
        try:
            outs = self.graph.add_node(op, names, attrs, name=name or self.scoped(op.lower()),
                                       outputs=outputs)
        except CompileError as e:
            raise _located(e) from None
        return [Tensor(self, o) for o in outs]

    def rename_value(self, old: str, new: str) -> str:
        """Rename a node output (used to give graph outputs their public names)."""
        new = self.graph.fresh_name(new)
        for n in self.graph.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
            n.outputs = [new if o == old else o for o in n.outputs]
        self.graph.types[new] = self.graph.types.pop(old)
        return new


def current_builder() -> Builder:
    """The builder of the net being traced; CompileError outside of tracing."""
    b = _CURRENT.get()
    if b is None:
        raise CompileError("no net is being built: DSL operations run inside a function traced "
                           "by @dsl.net or dsl.build")
    return b


@contextlib.contextmanager
def tracing(builder: Builder) -> Iterator[Builder]:
    token = _CURRENT.set(builder)
    try:
        yield builder
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Prefix the names of nodes and weights created inside with ``name.`` (nests)."""
    with current_builder().scope(name):
        yield


def user_location() -> str:
    """`` (at file:line)`` of the innermost caller outside cnncc.dsl: the net definition line."""
    frame = sys._getframe(1)
    while frame is not None:
        if os.path.abspath(frame.f_code.co_filename) not in _INTERNAL:
            return f" (at {frame.f_code.co_filename}:{frame.f_lineno})"
        frame = frame.f_back
    return ""


def _located(err: CompileError) -> CompileError:
    """The same error with the user's source line appended."""
    located = CompileError(str(err) + user_location())
    located.node = err.node
    return located


Operand = Union["Tensor", float, int, np.ndarray]


class Tensor:
    """A symbolic tensor: a value of the net being built, with a static shape and dtype.

    Arithmetic operators build broadcasting ONNX ops: ``+ - * /`` -> Add/Sub/Mul/Div, ``@`` ->
    MatMul, unary ``-`` -> Neg. Python numbers and numpy arrays become constants of this dtype.
    """

    __slots__ = ("builder", "name")
    # numpy must not treat a Tensor as a scalar object (``array * t`` would build an object array
    # of Tensors): it defers to our reflected operators instead.
    __array_ufunc__ = None

    def __init__(self, builder: Builder, name: str):
        self.builder = builder
        self.name = name

    @property
    def type(self) -> TensorType:
        return self.builder.graph.types[self.name]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> np.dtype:
        return self.type.dtype.np

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}: {self.type})"

    def __bool__(self) -> bool:
        raise CompileError("a symbolic dsl.Tensor has no truth value (its data is not known "
                           "while the net is built)")

    # ---- operators ------------------------------------------------------------------------------
    def __add__(self, other: Operand) -> "Tensor":
        return binary("Add", self, other)

    def __radd__(self, other: Operand) -> "Tensor":
        return binary("Add", other, self)

    def __sub__(self, other: Operand) -> "Tensor":
        return binary("Sub", self, other)

    def __rsub__(self, other: Operand) -> "Tensor":
        return binary("Sub", other, self)

    def __mul__(self, other: Operand) -> "Tensor":
        return binary("Mul", self, other)

    def __rmul__(self, other: Operand) -> "Tensor":
        return binary("Mul", other, self)

    def __truediv__(self, other: Operand) -> "Tensor":
        return binary("Div", self, other)

    def __rtruediv__(self, other: Operand) -> "Tensor":
        return binary("Div", other, self)

    def __matmul__(self, other: Operand) -> "Tensor":
        return binary("MatMul", self, other)

    def __rmatmul__(self, other: Operand) -> "Tensor":
        return binary("MatMul", other, self)

    def __neg__(self) -> "Tensor":
        return self.builder.node("Neg", [self])[0]


def as_tensor(value: Operand, like: Tensor, base: str = "const") -> Tensor:
    """``value`` itself if it is a Tensor, else a constant of ``like``'s dtype."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (bool, int, float, np.number, np.ndarray, list, tuple)):
        arr = np.asarray(value)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == bool):
            raise CompileError(f"cannot use {value!r:.60} as a tensor constant")
        return like.builder.param(base, arr.astype(like.dtype))
    raise CompileError(f"expected a dsl.Tensor or a number/array, got {type(value).__name__}"
                       + user_location())


def binary(op: str, a: Operand, b: Operand) -> Tensor:
    """A broadcasting binary op; one side may be a constant (it takes the other side's dtype)."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise CompileError(f"{op}: at least one operand must be a dsl.Tensor" + user_location())
    like = a if isinstance(a, Tensor) else b
    ta, tb = as_tensor(a, like), as_tensor(b, like)
    return like.builder.node(op, [ta, tb])[0]


def constant(value: Any, name: str = "const", dtype: Any = None) -> Tensor:
    """A constant tensor (stored as a graph parameter) in the net being traced."""
    arr = np.asarray(value, dtype=dtype)
    if arr.dtype == np.float64 and dtype is None:
        arr = arr.astype(np.float32)    # Python floats default to the primary dtype, float32
    try:
        DType.from_numpy(arr.dtype)
    except TypeError as e:
        raise CompileError(f"constant '{name}': {e}") from None
    return current_builder().param(name, arr)
