"""Receptive fields: for every value of a graph, which input pixels its units see.

Per spatial axis a field is (size r, jump j, start s), in the coordinates of the graph input it
derives from (pixel centres 0, 1, 2, ...): unit k of the value sees the input interval centred on
s + k * j, r pixels wide; j is the distance between neighbouring units in input pixels (the
effective stride). The input itself is (1, 1, 0). A window of k taps, stride t, dilation d and
begin pad p (conv, pool, deformable conv: its nominal grid, locally connected, tiled) maps
(r, j, s) to (r + (k_eff - 1) j, j t, s + ((k_eff - 1) / 2 - p) j) with k_eff = d (k - 1) + 1
(Dumoulin & Visin's arithmetic; Araujo et al., "Computing receptive fields of CNNs", 2019). A
transposed conv runs it backwards: j / t, r + (k_eff - 1) j / t, s + (p - (k_eff - 1) / 2) j / t.
Global pools, reductions over space and dense layers see the whole field of their input. Values
joined by Add/Mul/Concat get the union of their inputs' fields for unit 0. Pointwise ops
(activations, batch/layer/instance/group norms: their statistics are not counted, as usual)
keep the field; reshapes carry it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

from .analysis import layer_stats, parameter_count
from .ir import CompileError, Graph, Node, OP_TABLE
from .ir.ops.fused import ACTIVATION_EPILOGUES
from .ir.ops.registry import OpContext
from .ir.ops.spatial import resolve_window

# Ops whose output units see a window of their first input's units.
WINDOW_OPS = {"Conv": 2, "FusedConv": 2, "DeformConv": 2, "LocallyConnected2d": 4,
              "TiledConv2d": 4, "MaxPool": None, "AveragePool": None, "LpPool": None}
GLOBAL_OPS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Gemm", "MatMul")
PASS_THROUGH_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
                    "Transpose", "Slice")


@dataclass(frozen=True)
class Field:
    """The receptive field of a value's units, per spatial axis of ``shape``."""
    shape: tuple[int, ...]       # the value's spatial shape the field is laid out on
    size: tuple[float, ...]
    jump: tuple[float, ...]
    start: tuple[float, ...]

    def covering(self) -> "Field":
        """One unit seeing every unit of this field (a global pool or a dense layer)."""
        n = self.shape
        return Field(tuple(1 for _ in n),
                     tuple(r + (k - 1) * j for r, j, k in zip(self.size, self.jump, n)),
                     tuple(j * k for j, k in zip(self.jump, n)),
                     tuple(s + (k - 1) / 2 * j for s, j, k in zip(self.start, self.jump, n)))


def _ctx(graph: Graph, node: Node) -> OpContext:
    types = [graph.types[i] if i else None for i in node.inputs]
    return OpContext(node, OP_TABLE[node.op], types, [None] * len(types))


def _window(graph: Graph, node: Node, f: Field) -> Field:
    x = graph.types[node.inputs[0]].shape
    wdims = WINDOW_OPS[node.op]
    ctx = _ctx(graph, node)
    kernel = graph.types[node.inputs[1]].shape[wdims:] if wdims else ctx["kernel_shape"]
    win = resolve_window(ctx, x, kernel, bool(ctx.attrs.get("ceil_mode", 0)))
    spans = win.span
    out = graph.types[node.outputs[0]].shape[2:]
    return Field(out,
                 tuple(r + (k - 1) * j for r, j, k in zip(f.size, f.jump, spans)),
                 tuple(j * t for j, t in zip(f.jump, win.strides)),
                 tuple(s + ((k - 1) / 2 - win.begin(a)) * j
                       for a, (s, j, k) in enumerate(zip(f.start, f.jump, spans))))


def _transposed(graph: Graph, node: Node, f: Field) -> Field:
    ctx = _ctx(graph, node)
    k = graph.types[node.inputs[1]].shape[2:]
    nd = len(k)
    strides = ctx["strides"] or [1] * nd
    dil = ctx["dilations"] or [1] * nd
    pads = ctx["pads"] or [0] * (2 * nd)
    spans = [d * (kk - 1) + 1 for kk, d in zip(k, dil)]
    jumps = tuple(j / t for j, t in zip(f.jump, strides))
    return Field(graph.types[node.outputs[0]].shape[2:],
                 tuple(r + (sp - 1) * j for r, sp, j in zip(f.size, spans, jumps)),
                 jumps,
                 tuple(s + (p - (sp - 1) / 2) * j
                       for s, p, sp, j in zip(f.start, pads[:nd], spans, jumps)))


def _union(fields: list[Field], out_shape: tuple[int, ...]) -> Field:
    """The fields of unit 0 of several inputs joined; the jump of an input laid out like the
    output (a broadcast input of spatial size 1 contributes its one unit)."""
    main = next((f for f in fields if f.shape == out_shape), fields[0])
    lo = [min(f.start[a] - (f.size[a] - 1) / 2 for f in fields) for a in range(len(main.size))]
    hi = [max(f.start[a] + (f.size[a] - 1) / 2 for f in fields) for a in range(len(main.size))]
    return Field(out_shape, tuple(h - l_ + 1 for l_, h in zip(lo, hi)), main.jump,
                 tuple((l_ + h) / 2 for l_, h in zip(lo, hi)))


def receptive_fields(graph: Graph) -> dict[str, Field]:
    """The field of every value derived from a graph input (by value name), in the pixels of
    the input it derives from (the first one, for values joining several)."""
    fields = {}
    for x in graph.inputs:
        spatial = graph.types[x].shape[2:]
        fields[x] = Field(spatial, (1,) * len(spatial), (1,) * len(spatial),
                          (0.0,) * len(spatial))
    for node in graph.nodes:
        ins = [fields[i] for i in node.inputs if i in fields]
        if not ins or not node.outputs or node.outputs[0] not in graph.types:
            continue
        out_shape = graph.types[node.outputs[0]].shape[2:]
        first = fields.get(node.inputs[0])
        op = ACTIVATION_EPILOGUES.get(node.op, node.op)     # a fused anchor sees as its anchor
        if op in WINDOW_OPS and first is not None:
            f = _window(graph, node, first)
        elif op == "ConvTranspose" and first is not None:
            f = _transposed(graph, node, first)
        elif op in GLOBAL_OPS:
            f = ins[0].covering()
        elif node.op.startswith("Reduce") and len(out_shape) == len(ins[0].shape) \
                and all(o == 1 for o in out_shape) and out_shape != ins[0].shape:
            f = ins[0].covering()
        elif node.op == "Resize" and len(out_shape) == len(ins[0].shape):
            f = Field(out_shape, ins[0].size,
                      tuple(j * i / o for j, i, o in zip(ins[0].jump, ins[0].shape, out_shape)),
                      ins[0].start)
        elif node.op == "Pad" and len(out_shape) == len(ins[0].shape) \
                and node.inputs[1] in graph.params:
            pads = graph.params[node.inputs[1]].tolist()
            rank = len(pads) // 2
            begin = pads[rank - len(out_shape):rank]
            f = Field(out_shape, ins[0].size, ins[0].jump,
                      tuple(s - b * j for s, b, j in zip(ins[0].start, begin, ins[0].jump)))
        elif node.op in PASS_THROUGH_OPS or len(ins) == 1:
            f = ins[0] if len(out_shape) != len(ins[0].shape) else \
                Field(out_shape, ins[0].size, ins[0].jump, ins[0].start)
        else:
            same = [g for g in ins if len(g.shape) == len(out_shape)]
            f = _union(same, out_shape) if same else ins[0]
        for o in node.outputs:
            if o:
                fields[o] = f
    return fields


def _axes(values: tuple[float, ...]) -> str:
    return "x".join(f"{v:g}" for v in values)


def summary_rows(graph: Graph) -> list[dict]:
    """Per node: name, op, output shape, params, MFLOPs and the receptive field of its output
    (size, jump, start per spatial axis; None where the node does not derive from the input)."""
    fields = receptive_fields(graph)
    rows = []
    for node, st in zip(graph.nodes, layer_stats(graph)):
        f = fields.get(node.outputs[0]) if node.outputs else None
        rows.append({"node": st.node, "op": st.op, "output_shape": st.output_shape,
                     "params": st.params, "mflops": st.flops / 1e6,
                     "rf_size": f.size if f else None, "rf_jump": f.jump if f else None,
                     "rf_start": f.start if f else None})
    return rows


def format_summary(graph: Graph) -> str:
    """The per-layer table of ``net.summary()`` and ``cnncc info --receptive-field``."""
    try:
        rows = summary_rows(graph)
    except CompileError as e:
        raise CompileError(f"receptive fields of '{graph.name}': {e}") from None
    width = max([len(r["node"]) for r in rows] + [5])
    head = (f"{'layer':<{width}}  {'op':<18} {'output':<18} {'params':>10} {'MFLOPs':>9}  "
            f"{'RF size':<11} {'jump':<9} {'start':<11}")
    lines = [f"model {graph.name}: receptive fields in input pixels (per spatial axis)", head,
             "-" * len(head)]
    for r in rows:
        rf = [_axes(r[k]) if r[k] is not None else "-" for k in ("rf_size", "rf_jump",
                                                                  "rf_start")]
        lines.append(f"{r['node']:<{width}}  {r['op']:<18} "
                     f"{'x'.join(map(str, r['output_shape'])):<18} {r['params']:>10,} "
                     f"{r['mflops']:>9.2f}  {rf[0]:<11} {rf[1]:<9} {rf[2]:<11}")
    total = sum(r["mflops"] for r in rows)
    lines.append(f"parameters: {parameter_count(graph):,}   total: {total / 1e3:.3f} GFLOP")
    return "\n".join(lines)


__all__ = ["Field", "receptive_fields", "summary_rows", "format_summary"]
