"""What a lowering rule sees and produces: buffers bound to storage, and the kernels it emits.

Storage kinds: ("value", name) a graph value (input, output or arena intermediate, resolved by the
program builder through aliases), ("const", index) a packed constant in the weight blob,
("temp", id) per-node scratch in the arena (live only while the node's kernels run).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cnncc.ir import CompileError, DType, Graph, Node, OP_TABLE
from cnncc.ir.aligned import GrowingBlob
from cnncc.ir.loop import Buffer, Kernel
from cnncc.ir.ops.registry import OpContext
from cnncc.ir.target import Target


class LowerCtx:
    """Per-program lowering state: storage bindings, constants, temps, kernels in order."""

    def __init__(self, graph: Graph, target: Target | None, gpu: bool = False):
        """``target``: the CPU compiled for (None with ``gpu``: GPU schedules, no CPU vectors
        or threads)."""
        self.graph = graph
        self.target = target
        self.lanes = target.lanes if target is not None else 1
        self.threads = target.threads if target is not None else 1
        # Vector registers that CPU register tiles are sized for. GPU kernels reuse some CPU
        # compute definitions (a direct conv's tile of pixels) with 1 lane: 16, as for AVX2.
        self.vector_registers = target.vector_registers if target is not None else 16
        self.gpu = gpu                  # GPU schedules (gpu_schedule.py, gpu_conv.py ...)
        # The packed constants: placed in the weight blob as they are made, copied in by
        # ``write_consts`` (peak memory: ir/aligned.GrowingBlob); the reservation covers the
        # parameters twice over (packing pads channels), else it grows.
        self.blob = GrowingBlob(2 * sum(np.asarray(a).nbytes for a in graph.params.values())
                                + (64 << 20))
        self.const_offsets: list[int] = []
        self._unwritten: list[tuple[int, np.ndarray]] = []
        self.binding: dict[int, tuple] = {}        # id(Buffer) -> storage
        self.kernels: list[tuple[Kernel, int]] = []  # (kernel, index of the node it belongs to)
        self.temps: dict[int, tuple[int, int]] = {}  # temp id -> (nbytes, node index)
        self.node_index = 0
        # Blocked values stored inside a zero ring (halo.py): value -> (rows, columns).
        self.halo: dict[str, tuple[int, int]] = {}
        # Tuning (cnncc/tune.py): schedules chosen for workload keys (from the tuning log or a
        # tuner's round); the keys and candidate schedules of this program's tunable kernels;
        # which node has which key; the nodes that got a tuned schedule.
        self.schedules: dict[str, Any] = {}
        self.workloads: dict[str, list] = {}
        self.workload_of: dict[str, str] = {}
        self.tuned: set[str] = set()
        self._names: set[str] = set()

    # ---- buffers --------------------------------------------------------------------------------
    def value(self, name: str, shape: tuple | None = None, bname: str | None = None) -> Buffer:
        """A buffer over graph value ``name`` (optionally viewed with another shape)."""
        t = self.graph.types[name]
        if name in self.halo:     # a dense view would read the ring: halo.blocked knows it
            raise CompileError(f"internal error: {name} has a halo; view it with halo.blocked")
        shape = t.shape if shape is None else tuple(shape)
        if int(np.prod(shape)) != t.size:
            raise CompileError(f"internal error: view {shape} of {name} {t.shape}")
        buf = Buffer(bname or "v", t.dtype, shape)
        if name in self.graph.params:
            self.binding[id(buf)] = ("const", self.add_const(self.graph.params[name]))
        else:
            self.binding[id(buf)] = ("value", name)
        return buf

    def const(self, array: np.ndarray, bname: str = "w") -> Buffer:
        array = np.ascontiguousarray(array)
        buf = Buffer(bname, DType.from_numpy(array.dtype), array.shape)
        self.binding[id(buf)] = ("const", self.add_const(array))
        return buf

    def add_const(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        self.const_offsets.append(self.blob.reserve(array.nbytes))
        self._unwritten.append((self.const_offsets[-1], array))
        return len(self.const_offsets) - 1

    def write_consts(self) -> None:
        """Copy the constants added since the last call into the blob, dropping them."""
        while self._unwritten:
            offset, array = self._unwritten.pop()
            self.blob.write(offset, array)
            del array

    def temp(self, dtype: DType, shape: tuple, bname: str = "tmp") -> Buffer:
        buf = Buffer(bname, dtype, shape)
        tid = len(self.temps)
        self.temps[tid] = (buf.size * dtype.itemsize, self.node_index)
        self.binding[id(buf)] = ("temp", tid)
        return buf

    # ---- kernels --------------------------------------------------------------------------------
    def emit(self, kernel: Kernel) -> Kernel:
        base = "".join(c if c.isalnum() else "_" for c in kernel.name)[:48] or "k"
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        seen = set()
        for b in kernel.params:
            if id(b) not in self.binding:
                raise CompileError(f"internal error: kernel {name} param {b.name} has no storage")
            if b.name in seen:
                raise CompileError(f"internal error: kernel {name} has two params {b.name}")
            seen.add(b.name)
        k = Kernel(name, kernel.params, kernel.body)
        self.kernels.append((k, self.node_index))
        return k


def op_context(graph: Graph, node: Node) -> OpContext:
    """The op-table context of ``node`` (attributes with defaults, input types and constants)."""
    types = [graph.types[i] if i else None for i in node.inputs]
    consts = [graph.params.get(i) if i else None for i in node.inputs]
    return OpContext(node, OP_TABLE[node.op], types, consts)


def unsupported(node: Node, why: str = "") -> CompileError:
    extra = f" ({why})" if why else ""
    return CompileError(f"op {node.op} not supported on the native targets{extra}", node.name)


def const_input(graph: Graph, node: Node, i: int, what: str) -> Any:
    name = node.inputs[i] if i < len(node.inputs) else ""
    if not name:
        return None
    if name not in graph.params:
        raise unsupported(node, f"{what} must be a compile-time constant")
    return graph.params[name]
