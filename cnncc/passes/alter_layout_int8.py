"""alter_layout_int8: quantized convs run on blocked 8-bit activations (NCHW{c}c bytes).

c is the target's vector width in 32-bit lanes (16 with AVX-512, 8 with AVX2): the conv's
accumulators are int32 vectors of c output channels, so its epilogue stores the c bytes of one
pixel at once, and the next conv's dot product reads 4 input channels of a pixel as one 32-bit
word (c / 4 words per pixel) without repacking (ir/ops/quant_blocked.py defines the op):

    QConv(X, ..., R?, ...)   ==>  QConvNCHWc(Xb, ..., Rb?, ...; block=c)      X 8-bit, 2-D;
                                  group 1 with weights the dot products take (dot4_fits),
                                  or depthwise
    QConv(X, ...)            ==>  QConvNCHWc(X, ...; block=c, in_layout=NCHW)  (<= 4 input
                                  channels: a stem reading the quantized image)
    Q(MaxPool(DQ(X)))        ==>  PoolNCHWc(Xb; kind=MaxPool)    (the same per-tensor scale and
                                  zero point at both ends: max commutes with the monotone
                                  (de)quantization and Q(DQ(v)) = v, so the pool of the bytes
                                  is exact)
    MaxPool(X)               ==>  PoolNCHWc(Xb; kind=MaxPool)    (X 8-bit and blocked: the 8-bit
                                  pool fuse_quantized_ops made of such a chain)

Any other consumer of X (and a graph output X) reads FromNCHWc(Xb), made once, right before its
first such consumer; a QConv reading a value that exists only in NCHW gets ToNCHWc(X), made
once. So between quantized convs nothing is converted: the layout changes only at the edges of
a region.

Inside a region every 8-bit activation is uint8: an int8 one (onnxruntime's default QDQ) is
held as x + 128 with its zero point + 128 (ShiftBytes, ir/ops/quant_blocked.py). That is exact:
the convs' sums of (x - zero point), their requantization (the output zero point + 128 added
after rounding, the saturation range moved with it), the residual's (r - zero point), ReLU (max
with the zero point) and the max pool (the max of shifted bytes is the shifted max) all give the
same values + 128. So every kernel inside takes the plain u8 x s8 dot products, with no shift
per loaded word; ShiftBytes runs only where int8 bytes enter a region (before its ToNCHWc) and
leave it (after its FromNCHWc). A stem reading the int8 image in NCHW shifts it in the copy it
packs anyway. Runs after alter_layout_nchwc (which leaves QConv and 8-bit values alone), for CPU
targets (llvm, and reference for `cnncc verify`); GPU targets keep NCHW.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Graph, Node
from cnncc.ir.ops import OP_TABLE
from cnncc.ir.ops.quant_blocked import (dot4_fits, shifted_zero_point, toggled_zero_point,
                                        weights_minus_zero_point)
from cnncc.ir.ops.registry import resolve_attrs

from .alter_layout_nchwc import GPU_TARGETS, STEM_MAX_CHANNELS, BlockedRewriter


def _blockable(g: Graph, node: Node) -> str | None:
    """The input layout a QConv keeps when blocked ("NCHWc", or "NCHW" for a stem), or None
    when it stays an NCHW QConv."""
    if node.op != "QConv" or any(i and i not in g.params for i in node.inputs[1:9]) \
            or any(i and i not in g.params for i in node.inputs[10:]):
        return None
    x, wq = node.inputs[0], g.params[node.inputs[3]]
    xt = g.types[x]
    if xt.rank != 4 or wq.ndim != 4:
        return None
    group = resolve_attrs(OP_TABLE["QConv"], node)["group"]
    oc, icg = wq.shape[:2]
    ic = icg * group
    if icg == 1 and group == oc == ic:
        return "NCHWc"
    if group != 1:
        return None
    x_zp = int(g.params[node.inputs[2]].reshape(-1)[0])
    wz = weights_minus_zero_point(wq, g.params[node.inputs[5]])
    bias = g.params[node.inputs[8]].astype(np.int64) if len(node.inputs) > 8 and node.inputs[8] \
        else np.zeros(oc, np.int64)
    if not dot4_fits(wz, icg, oc, bias, shifted_zero_point(xt.dtype, x_zp)):
        return None
    return "NCHW" if ic <= STEM_MAX_CHANNELS else "NCHWc"


def _same_quantization(g: Graph, dq: Node, q: Node) -> bool:
    """DQ and Q with the same constant per-tensor scale and zero point (values and type)."""
    def params(n: Node):
        zp = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else ""
        if n.inputs[1] not in g.params or (zp and zp not in g.params):
            return None
        scale = g.params[n.inputs[1]]
        return (scale.reshape(-1), g.params[zp].reshape(-1) if zp else None)
    a, b = params(dq), params(q)
    if a is None or b is None or a[0].size != 1 or not np.array_equal(a[0], b[0]):
        return False
    if a[1] is None or b[1] is None:     # a missing zero point is uint8 0
        za = a[1] if a[1] is not None else np.zeros(1, np.uint8)
        zb = b[1] if b[1] is not None else np.zeros(1, np.uint8)
    else:
        za, zb = a[1], b[1]
    return za.dtype == zb.dtype == g.types[dq.inputs[0]].dtype.np and np.array_equal(za, zb)


class _Rewriter(BlockedRewriter):
    def __init__(self, graph: Graph, block: int):
        super().__init__(graph, block)
        self.pools = self.byte_pools()
        self.taken: set[int] = set()        # chains whose x was blocked when their DQ came

    def byte_pools(self) -> dict[int, tuple[Node, Node, Node]]:
        """id of each node of a Q(MaxPool(DQ(x))) chain that may pool bytes -> the chain."""
        g, users, prod = self.g, self.g.users(), self.g.producers()
        chains = {}
        for pool in g.nodes:
            if pool.op != "MaxPool" or len([o for o in pool.outputs if o]) != 1 \
                    or g.types[pool.outputs[0]].rank != 4:
                continue
            dq, use = prod.get(pool.inputs[0]), users.get(pool.outputs[0], [])
            q = use[0] if len(use) == 1 else None
            if dq is None or q is None or dq.op != "DequantizeLinear" or q.op != "QuantizeLinear" \
                    or len(users.get(dq.outputs[0], [])) != 1 \
                    or {dq.outputs[0], pool.outputs[0]} & set(g.outputs) \
                    or not _same_quantization(g, dq, q):
                continue
            for n in (dq, pool, q):
                chains[id(n)] = (dq, pool, q)
        return chains

    def pool_bytes(self, x: str, pool: Node, last: Node, sources: tuple[str, ...]) -> None:
        """PoolNCHWc on the blocked bytes of ``x`` for MaxPool ``pool``, giving ``last``'s
        output."""
        attrs = {k: v for k, v in pool.attrs.items() if k != "storage_order"}
        self.emit("PoolNCHWc", [self.blocked[x]], dict(attrs, kind="MaxPool"), pool.name,
                  [self.blocked_out(last)], sources)

    def to_blocked(self, v: str, source: str = "") -> str:
        """The blocked twin of ``v``; an int8 ``v`` enters as uint8 (ShiftBytes first)."""
        if v not in self.blocked and not source and self.g.types[v].dtype is DType.int8:
            source = self.fresh(f"{v}_u8", self.values)
            self.emit("ShiftBytes", [v], {}, self.fresh(f"{v}_to_u8", self.names), [source])
        return super().to_blocked(v, source)

    def need_nchw(self, v: str) -> None:
        """As BlockedRewriter's; a value held shifted (uint8 for int8) leaves through
        ShiftBytes after its FromNCHWc."""
        if not v or v in self.available or self.types[self.blocked[v]].dtype is \
                self.g.types[v].dtype:
            return super().need_nchw(v)
        u = self.fresh(f"{v}_u8", self.values)
        self.emit("FromNCHWc", [self.blocked[v]], {"channels": self.g.types[v].shape[1]},
                  self.fresh(f"{v}_from_nchwc", self.names), [u])
        self.emit("ShiftBytes", [u], {}, self.fresh(f"{v}_to_s8", self.names), [v])

    def move_zero_points(self, node: Node, ins: list[str]) -> None:
        """Zero points follow their values: those of the input (0) and the residual (9) when
        held shifted, and the int8 ones of the output and of the conv's own output before a
        residual add (7, 13), since the output is held as uint8 too."""
        def held_shifted(i: int) -> bool:
            return len(ins) > i and bool(ins[i]) and \
                self.types[ins[i]].dtype is not self.g.types[node.inputs[i]].dtype
        for i, moved in ((2, held_shifted(0)), (7, True), (11, held_shifted(9)), (13, True)):
            if moved and i < len(ins) and ins[i] and self.params[ins[i]].dtype == np.int8:
                ins[i] = self.param(f"{ins[i]}_u8", toggled_zero_point(self.params[ins[i]]))

    def rewrite(self, node: Node) -> bool:
        chain = self.pools.get(id(node))
        if chain is not None and (id(chain[0]) in self.taken or (
                node is chain[0] and node.inputs[0] in self.blocked)):
            self.taken.add(id(chain[0]))
            if node is chain[2]:
                dq, pool, q = chain
                self.pool_bytes(dq.inputs[0], pool, q, tuple(s for n in chain for s in n.origin))
            return True
        x = node.inputs[0] if node.inputs else ""
        if node.op == "MaxPool" and x in self.blocked and len(node.outputs) == 1 \
                and self.g.types[x].dtype in (DType.uint8, DType.int8) and self.g.types[x].rank == 4:
            # The 8-bit pool fuse_quantized_ops made of such a chain.
            self.pool_bytes(x, node, node, node.origin)
            return True
        layout = _blockable(self.g, node)
        if layout is None:
            return False
        ins = list(node.inputs)
        if layout == "NCHW":
            self.need_nchw(ins[0])
        else:
            ins[0] = self.to_blocked(ins[0])
        if len(ins) > 9 and ins[9]:
            ins[9] = self.to_blocked(ins[9])
        self.move_zero_points(node, ins)
        attrs = dict(node.attrs, block=self.block, in_layout=layout)
        self.emit("QConvNCHWc", ins, attrs, node.name, [self.blocked_out(node)], node.origin)
        return True


def alter_layout_int8(graph: Graph, ctx=None) -> Graph:
    machine = getattr(ctx, "machine", None)
    if getattr(ctx, "target", "llvm") in GPU_TARGETS or machine is None \
            or not any(_blockable(graph, n) for n in graph.nodes):
        return graph
    return _Rewriter(graph, machine.lanes).run()
