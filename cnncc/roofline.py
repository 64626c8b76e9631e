"""The roofline of a compiled program: per kernel, FLOPs, compulsory bytes and the roof they set.

A "kernel" here is what `cnncc bench --per-layer` times as one row: the kernels of one node of
the lowered graph (a fused node's epilogue included: fuse_epilogue).

- FLOPs: cnncc.analysis.node_flops of those nodes (a multiply-add is 2).
- Bytes: the compulsory traffic of one call: every input, weight and output counted once (values
  made and used only inside the group, scratch and halos are not counted). Re-reads of data that
  does not fit in cache are not counted either: achieved bytes/s can only be higher.
- Intensity = FLOPs / bytes; attainable GFLOP/s = min(FMA peak, bandwidth x intensity).
- Which bandwidth: the kernel is timed alone and repeatedly (cnncc's ``profile``), so its data is
  warm and stays where it fits: a working set (= its bytes) within the L2s of the threads gets
  the L2 roof, one within the last-level cache the LLC roof, a larger one the DRAM roof. Each
  roof is the faster of the read and read+write rates (cnncc/bandwidth.py).
- % of roof = achieved / attainable GFLOP/s; for a kernel without FLOPs (layout changes, copies)
  it is achieved bytes/s over the bandwidth, which is what the same ratio tends to as the
  intensity goes to 0 on the memory roof.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .analysis import node_flops
from .bandwidth import Bandwidth, StreamRates
from .ir import Graph, Node


@dataclass
class KernelGroup:
    """The nodes one timed row covers (the node owning the kernels first) and its kernels."""
    nodes: list[Node]
    kernels: list[str]

    @property
    def covers(self) -> list[str]:
        """The imported graph's nodes whose work the group does (see ``Node.origin``)."""
        return list(dict.fromkeys(s for n in self.nodes for s in n.origin))


def kernel_groups(program: Any) -> list[KernelGroup]:
    """The groups of a lowered program (cnncc.lower.program.Program), in program order."""
    ctx = program.ctx
    groups: dict[int, KernelGroup] = {}
    for kernel, idx in ctx.kernels:
        groups.setdefault(idx, KernelGroup([ctx.graph.nodes[idx]], [])).kernels.append(kernel.name)
    return list(groups.values())


def group_flops(graph: Graph, nodes: Iterable[Node]) -> int:
    return sum(node_flops(graph, n) for n in nodes)


def group_bytes(graph: Graph, nodes: list[Node]) -> int:
    """Compulsory bytes of one call of ``nodes``: the values they read from outside the group
    and the values they make that are read outside it (or are graph outputs), each once."""
    inside = {id(n) for n in nodes}
    made = {o for n in nodes for o in n.outputs if o}
    users = graph.users()
    outputs = set(graph.outputs)
    values = dict.fromkeys(i for n in nodes for i in n.inputs if i and i not in made)
    for v in made:
        if v in outputs or any(id(u) not in inside for u in users.get(v, [])) \
                or not users.get(v):
            values[v] = None
    return sum(graph.types[v].nbytes for v in values if v in graph.types)


def roof_for(bandwidth: Bandwidth, working_set: int) -> StreamRates:
    """The bandwidth that bounds a kernel with ``working_set`` bytes (see the module text)."""
    if working_set <= bandwidth.threads * bandwidth.l2_bytes:
        return bandwidth.l2
    return bandwidth.llc if working_set <= bandwidth.llc_bytes else bandwidth.dram


def attainable_gflops(peak_gflops: float, bandwidth_gbs: float, intensity: float) -> float:
    """The roofline: min(compute roof, memory roof at ``intensity`` FLOP/byte)."""
    return min(peak_gflops, bandwidth_gbs * intensity)


def layer_rows(program: Any, timings: Iterable[tuple[str, float]],
               peak_gflops: float | None = None,
               bandwidth: Bandwidth | None = None) -> list[dict]:
    """One row per kernel group of ``program`` that ``timings`` ((kernel name, seconds), as
    ``profile`` returns them) covers: time, FLOPs, bytes, GFLOP/s, GB/s and, given the peak
    and the bandwidth, the roofline columns."""
    graph = program.ctx.graph
    seconds = dict(timings)
    rows = []
    for group in kernel_groups(program):
        if not any(k in seconds for k in group.kernels):
            continue
        node = group.nodes[0]
        s = sum(seconds.get(k, 0.0) for k in group.kernels)
        flops, nbytes = group_flops(graph, group.nodes), group_bytes(graph, group.nodes)
        row = {"node": node.name, "op": node.op, "kernels": len(group.kernels), "ms": s * 1e3,
               "flops": flops, "bytes": nbytes,
               "intensity": flops / nbytes if nbytes else 0.0,
               "gflops": flops / s / 1e9 if s > 0 else 0.0,
               "gbs": nbytes / s / 1e9 if s > 0 else 0.0,
               "covers": group.covers}
        if peak_gflops:
            row["peak_pct"] = 100 * row["gflops"] / peak_gflops
        if peak_gflops and bandwidth is not None:
            roof = roof_for(bandwidth, nbytes)
            row["roof"] = roof.level
            row["roof_gbs"] = roof.roof_gbs
            row["attainable_gflops"] = attainable_gflops(peak_gflops, roof.roof_gbs,
                                                         row["intensity"])
            row["roof_pct"] = (100 * row["gflops"] / row["attainable_gflops"] if flops
                               else 100 * row["gbs"] / roof.roof_gbs)
        rows.append(row)
    return rows


def format_layers(rows: list[dict], title: str) -> list[str]:
    """The per-layer table of `cnncc bench --per-layer`, slowest first."""
    total = sum(row["ms"] for row in rows) or 1.0
    roofs = any("roof" in row for row in rows)
    in_order = any("peak_pct_in_order" in r for r in rows)
    lines = [title,
             f"{'node':<32} {'op':<16} {'ms':>8} {'%':>5} {'GFLOP/s':>8}"
             + (f" {'% peak':>7}" if any("peak_pct" in r for r in rows) else "")
             + (f" {'in order':>8}" if in_order else "")
             + (f" {'MB':>7} {'FLOP/B':>7} {'roof':>4} {'attain':>7} {'% roof':>7}"
                if roofs else "")]
    for row in sorted(rows, key=lambda row: -row["ms"]):
        line = (f"{row['node'][:32]:<32} {row['op'][:16]:<16} {row['ms']:>8.3f} "
                f"{100 * row['ms'] / total:>5.1f} {row['gflops']:>8.1f}")
        if "peak_pct" in row:
            line += f" {row['peak_pct']:>7.1f}"
        if in_order:
            line += f" {row.get('peak_pct_in_order', float('nan')):>8.1f}"
        if "roof" in row:
            line += (f" {row['bytes'] / 1e6:>7.2f} {row['intensity']:>7.2f} {row['roof']:>4} "
                     f"{row['attainable_gflops']:>7.1f} {row['roof_pct']:>7.1f}")
        lines.append(line)
    return lines
