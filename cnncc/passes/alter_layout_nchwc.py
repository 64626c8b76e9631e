"""alter_layout_nchwc: 2-D convs and what follows them run on blocked NCHW{c}c activations.

c is the target's vector width in float32 lanes (16 with AVX-512, 8 with AVX2), so the c channels of
a pixel are one vector register (ir/ops/layout.py defines the layout and its ops). With Xb the
blocked form of a value X (Xb = ToNCHWc(X), X = FromNCHWc(Xb)):

    Conv | FusedConv(X, W, B, Z)   ==>  ConvNCHWc(Xb, W, B, Zb)     group 1, depthwise or groups
                                                                   tiling the blocks (group_span),
                                                                   2-D, W and B constants
    Conv(X_rgb, W, B), X_rgb NCHW  ==>  ConvNCHWc(X_rgb, W, B; in_layout=NCHW)   (<= 4 in channels,
                                                                   the stem reads NCHW directly)
    act(Xb)                        ==>  act on the 5-D Xb           (act finite on finite input)
    op(Xb, Yb)                     ==>  op on the 5-D arrays        (Add Sub Mul Max Min; N and C
                                                                   equal, H and W broadcast)
    op(Xb, s)                      ==>  op(Xb, s)                   (s a one-element constant)
    op(Xb, K)                      ==>  op(Xb, Kb)                  (K a constant [C, 1, 1] or
                                                                   [1, C, 1, 1]: a standalone
                                                                   BatchNorm's scale and shift;
                                                                   Kb [1, Cb, 1, 1, c], 0-padded)
    MaxPool | AveragePool(Xb)      ==>  PoolNCHWc(Xb; kind)         (2-D, one output)
    GlobalAveragePool(Xb)          ==>  ReduceMean(Xb, axes=[2, 3])  (Max: ReduceMax)
    Concat(Xb..., axis=1)          ==>  Concat(Xb..., axis=1)       (every C a multiple of c;
                                                                   else a ChannelGather of all)
    ChannelGather(X...)            ==>  ChannelGather(Xb...; block=c, in_channels)  (2-D; some
                                                                   X blocked already)
    Resize(Xb, scales | sizes)     ==>  Resize(Xb; axes=[2, 3])     (linear / cubic; N and C
                                                                   kept: the lanes are the
                                                                   innermost, vector, axis)

Any other consumer of X (and a graph output X) reads FromNCHWc(Xb), made once, right before its
first such consumer; a conv reading a value that exists only in NCHW gets ToNCHWc(X), made once.
So transforms appear only at the edges of blocked regions and a To/From pair never follows its
opposite. The convs' weights are packed into the blocked layout once, at lowering (compile
time). Padding channels (C not a multiple of c) are carried as zero-weight lanes. The pass runs
for CPU targets (llvm, and reference for `cnncc verify`); GPU targets keep NCHW.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from cnncc.ir import CompileError, DType, Graph, Node
from cnncc.ir.ops import OP_TABLE, infer_node
from cnncc.ir.ops.activation_exprs import UNARY_LOWERING
from cnncc.ir.ops.layout import group_span, to_blocked
from cnncc.ir.ops.registry import resolve_attrs

# Unary ops that map finite inputs to finite outputs: padding lanes stay finite, so a zero
# weight of the next conv keeps them harmless (0 * inf would be NaN).
# Unary ops that keep finite padding lanes finite (their op-table Lowering says so).
FINITE_UNARY = tuple(op for op, low in UNARY_LOWERING.items() if low.finite) + ("Identity", "Clip")
BINARY = ("Add", "Sub", "Mul", "Max", "Min")
POOLS = ("MaxPool", "AveragePool")
GLOBAL_POOLS = {"GlobalAveragePool": "ReduceMean", "GlobalMaxPool": "ReduceMax"}
STEM_MAX_CHANNELS = 4
GPU_TARGETS = ("cuda", "cuda-emu")


class BlockedRewriter(ABC):
    """One pass over the nodes putting values in NCHW{block}c: ``rewrite(node)`` emits a node's
    blocked form and returns True, or returns False to keep the node (its inputs are then made
    NCHW again, once, right before it). The float and the 8-bit layout passes share it."""

    def __init__(self, graph: Graph, block: int):
        self.g = graph
        self.block = block
        self.nodes: list[Node] = []
        self.types = dict(graph.types)
        self.params = dict(graph.params)
        self.blocked: dict[str, str] = {}     # NCHW value -> its blocked twin
        self.available: set[str] = set(graph.inputs) | set(graph.params)
        self.names = {n.name for n in graph.nodes}
        self.values = set(graph.types) | set(graph.params) | set(graph.inputs)

    # ---- naming and emission ----------------------------------------------------------------
    def fresh(self, base: str, used: set[str]) -> str:
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    def emit(self, op: str, inputs: list[str], attrs: dict, name: str,
             outputs: list[str], sources: tuple[str, ...] = ()) -> list[str]:
        node = Node(op, inputs, outputs, attrs, name, sources)
        for out, t in zip(outputs, infer_node(node, self.types, self.params)):
            self.types[out] = t
        self.nodes.append(node)
        self.available.update(outputs)
        return outputs

    def param(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base, self.values)
        self.params[name] = value
        self.types[name] = _type_of(value)
        return name

    # ---- the two transforms ----------------------------------------------------------------
    def to_blocked(self, v: str, source: str = "") -> str:
        """v's blocked twin: ToNCHWc(source, else v), made once."""
        if v not in self.blocked:
            out = self.fresh(f"{v}_nchwc", self.values)
            name = self.fresh(f"{v}_to_nchwc", self.names)
            self.emit("ToNCHWc", [source or v], {"block": self.block}, name, [out])
            self.blocked[v] = out
        return self.blocked[v]

    def need_nchw(self, v: str) -> None:
        """Make the NCHW value ``v`` exist (from its blocked twin) before the next node."""
        if not v or v in self.available:
            return
        src = self.blocked[v]
        name = self.fresh(f"{v}_from_nchwc", self.names)
        self.emit("FromNCHWc", [src], {"channels": self.g.types[v].shape[1]}, name, [v])

    def blocked_out(self, node: Node) -> str:
        out = node.outputs[0]
        self.blocked[out] = self.fresh(f"{out}_nchwc", self.values)
        return self.blocked[out]

    # ---- rules -----------------------------------------------------------------------------
    def run(self) -> Graph:
        for node in self.g.nodes:
            if not self.rewrite(node):
                for v in node.inputs:
                    self.need_nchw(v)
                self.nodes.append(node)
                self.available.update(o for o in node.outputs if o)
        for v in self.g.outputs:
            self.need_nchw(v)
        live = set(self.g.inputs) | set(self.params) | \
            {o for n in self.nodes for o in n.outputs if o}
        types = {k: t for k, t in self.types.items() if k in live}
        return Graph(self.g.name, self.nodes, list(self.g.inputs), list(self.g.outputs),
                     self.params, types)

    @abstractmethod
    def rewrite(self, node: Node) -> bool:
        """Emit ``node``'s blocked form and return True, or return False to keep it (each
        layout pass: _Rewriter here, the 8-bit one in alter_layout_int8)."""


class _Rewriter(BlockedRewriter):
    """The float layout: convs, pools, elementwise ops, concat, gather, resize."""

    def rewrite(self, node: Node) -> bool:
        op = node.op
        if op in ("Conv", "FusedConv"):
            return self.conv(node)
        if not node.inputs or not node.inputs[0] or len(node.outputs) != 1:
            return False
        if op == "Resize":          # its sizes are int64
            return self.f32(node.inputs[0], node.outputs[0]) and self.resize(node)
        if not self.f32(*node.inputs, node.outputs[0]):
            return False
        if op in FINITE_UNARY:
            return self.unary(node)
        if op in BINARY or (op == "Div" and self.scalar_const(node.inputs[1])):
            return self.binary(node)
        if op in POOLS and node.inputs[0] in self.blocked and self.rank(node.inputs[0]) == 4:
            attrs = {k: v for k, v in node.attrs.items() if k != "storage_order"}
            attrs["kind"] = op
            self.emit("PoolNCHWc", [self.blocked[node.inputs[0]]], attrs, node.name,
                      [self.blocked_out(node)], node.origin)
            return True
        if op in GLOBAL_POOLS and node.inputs[0] in self.blocked \
                and self.rank(node.inputs[0]) == 4:
            axes = self.param(f"{node.name}_axes", np.array([2, 3], np.int64))
            self.emit(GLOBAL_POOLS[op], [self.blocked[node.inputs[0]], axes], {"keepdims": 1},
                      node.name, [self.blocked_out(node)], node.origin)
            return True
        if op == "Concat":
            return self.concat(node)
        if op == "ChannelLayerNorm" and node.inputs[0] in self.blocked and \
                not node.attrs.get("block"):
            attrs = {**node.attrs, "block": self.block, "channels": self.g.types[node.inputs[0]].shape[1]}
            self.emit(op, [self.blocked[node.inputs[0]]] + node.inputs[1:], attrs, node.name,
                      [self.blocked_out(node)], node.origin)
            return True
        if op == "ChannelGather":
            return self.gather(node)
        return False

    def f32(self, *values: str) -> bool:
        return all(self.types[v].dtype is DType.float32 for v in values if v)

    def rank(self, v: str) -> int:
        return self.g.types[v].rank

    def scalar_const(self, v: str) -> bool:
        return v in self.params and self.params[v].size == 1

    def conv(self, node: Node) -> bool:
        g = self.g
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else ""
        z = node.inputs[3] if len(node.inputs) > 3 else ""
        if w not in g.params or g.params[w].ndim != 4 or (b and b not in g.params):
            return False
        if not self.f32(x, w, b, z, node.outputs[0]) or g.types[x].rank != 4:
            return False
        attrs = resolve_attrs(OP_TABLE[node.op], node)
        oc, icg = g.params[w].shape[:2]
        group = attrs["group"]
        ic = icg * group
        if not (group == 1 or (icg == 1 and group == oc == ic)
                or group_span(ic, oc, group, self.block) is not None):
            return False
        new_attrs = dict(node.attrs)
        new_attrs["block"] = self.block
        if x in self.blocked or group > 1 or ic > STEM_MAX_CHANNELS:
            xin = self.to_blocked(x)
            new_attrs["in_layout"] = "NCHWc"
        else:
            self.need_nchw(x)
            xin, new_attrs["in_layout"] = x, "NCHW"
        inputs = [xin, w, b] + ([self.to_blocked(z)] if z else [])
        while inputs and not inputs[-1]:
            inputs.pop()
        self.emit("ConvNCHWc", inputs, new_attrs, node.name, [self.blocked_out(node)], node.origin)
        return True

    def unary(self, node: Node) -> bool:
        x = node.inputs[0]
        if x not in self.blocked or not all(self.scalar_const(v) for v in node.inputs[1:] if v):
            return False
        self.emit(node.op, [self.blocked[x]] + node.inputs[1:], dict(node.attrs), node.name,
                  [self.blocked_out(node)], node.origin)
        return True

    def binary(self, node: Node) -> bool:
        if len(node.inputs) != 2:
            return False
        a, b = node.inputs
        out = self.g.types[node.outputs[0]].shape
        ins = []
        for v in (a, b):
            if v in self.blocked:
                shape = self.g.types[v].shape
                # N and C must match the output's: only H and W may broadcast.
                if len(shape) != 4 or len(out) != 4 or shape[:2] != out[:2]:
                    return False
                ins.append(self.blocked[v])
            elif self.scalar_const(v):
                ins.append(self.param(f"{node.name}_scalar", self.params[v].reshape(())))
            elif self.channel_const(v, out):
                ins.append(self.param(f"{node.name}_blocked", self.blocked_const(v)))
            else:
                return False
        if all(v not in self.blocked for v in (a, b)):
            return False
        self.emit(node.op, ins, dict(node.attrs), node.name, [self.blocked_out(node)], node.origin)
        return True

    def channel_const(self, v: str, out: tuple) -> bool:
        """A constant holding one value per channel of the 4-D output ``out``."""
        if v not in self.params or len(out) != 4:
            return False
        shape = self.params[v].shape
        return shape in ((out[1], 1, 1), (1, out[1], 1, 1)) and out[1] > 1

    def blocked_const(self, v: str) -> np.ndarray:
        value = self.params[v].reshape(1, -1, 1, 1)
        return to_blocked(value, self.block)

    def concat(self, node: Node) -> bool:
        ins = [v for v in node.inputs if v]
        if not ins or any(v not in self.blocked or self.rank(v) != 4 for v in ins):
            return False
        axis = node.attrs.get("axis", 1)
        if axis not in (1, -3):
            return False
        if any(self.g.types[v].shape[1] % self.block for v in ins):
            total = sum(self.g.types[v].shape[1] for v in ins)
            return self.gather(Node("ChannelGather", ins, node.outputs,
                                    {"sources": list(range(total))}, node.name, node.origin))
        self.emit("Concat", [self.blocked[v] for v in ins], {"axis": 1}, node.name,
                  [self.blocked_out(node)], node.origin)
        return True


    def gather(self, node: Node) -> bool:
        ins = node.inputs
        if node.attrs.get("block") or not any(v in self.blocked for v in ins) \
                or any(self.rank(v) != 4 for v in ins):
            return False
        attrs = {"sources": list(node.attrs["sources"]), "block": self.block,
                 "in_channels": [self.g.types[v].shape[1] for v in ins]}
        self.emit("ChannelGather", [self.to_blocked(v) for v in ins], attrs, node.name,
                  [self.blocked_out(node)], node.origin)
        return True


    def resize(self, node: Node) -> bool:
        x, attrs = node.inputs[0], node.attrs
        ins = list(node.inputs) + [""] * (4 - len(node.inputs))
        if x not in self.blocked or self.rank(x) != 4 or len(node.inputs) > 4 \
                or attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize" \
                or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch" \
                or attrs.get("mode", "nearest") == "nearest":
            # nearest: NCHW's index-map gather measured 14x faster than on blocked arrays
            return False
        k = 2 if ins[2] else 3            # scales, else sizes
        if not ins[k] or ins[k] not in self.params:
            return False
        vals = np.asarray(self.params[ins[k]]).reshape(-1)
        axes = attrs.get("axes")
        if axes is None:
            kept = self.g.types[x].shape[:2] if k == 3 else (1.0, 1.0)
            if vals.size != 4 or list(vals[:2]) != list(kept):
                return False
            vals = vals[2:]
        elif [a % 4 for a in axes] != [2, 3]:
            return False
        new = ["", "", ""]
        new[k - 1] = self.param(f"{node.name}_{'scales' if k == 2 else 'sizes'}", vals.copy())
        while not new[-1]:
            new.pop()
        self.emit("Resize", [self.blocked[x]] + new, {**attrs, "axes": [2, 3]}, node.name,
                  [self.blocked_out(node)], node.origin)
        return True


def _type_of(value: np.ndarray):
    from cnncc.ir.types import TensorType
    return TensorType(DType.from_numpy(value.dtype), value.shape)


def alter_layout_nchwc(graph: Graph, ctx=None) -> Graph:
    target = getattr(ctx, "target", "llvm")
    if target in GPU_TARGETS:
        return graph
    machine = getattr(ctx, "machine", None)
    if machine is None:
        raise CompileError("internal error: alter_layout_nchwc needs the CPU Target "
                           "(PassContext.machine) to choose the channel block")
    block = machine.lanes
    if not any(n.op in ("Conv", "FusedConv") for n in graph.nodes):
        return graph
    return _Rewriter(graph, block).run()
