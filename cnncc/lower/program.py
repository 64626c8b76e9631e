"""Graph -> Program: partition into kernels, lower each, pack the weights, plan the arena.

The arena plan (cnncc/lower/memory_plan.py) places the values and temps that live in the arena
by their lifetimes over kernel positions; CNNCC_DUMP=memory prints it. A Program is what the
driver hands to a code-generating backend: its kernels in order (``ctx.kernels``), the weight
blob (64-byte aligned offsets), the arena size and where every kernel buffer lives
(``storage``); the backend writes the entry that calls the kernels (backends/llvm/entry.py,
backends/cuda/program.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncc.ir import CompileError, DType, Graph, Node
from cnncc.ir.aligned import return_freed_memory
from cnncc.ir.fold import TYPE_ONLY, fold_node
from cnncc.ir.target import Target

from cnncc.debug import dump, dump_enabled

from .concat_inplace import plan_inplace_concats
from .context import LowerCtx, unsupported
from .halo import halo_nbytes, plan_halos
from .memory_plan import Lifetime, MemoryPlan, format_plan, plan_memory
from .rules import ALIAS_OPS, CONST_OPS, lower_node

@dataclass
class Program:
    name: str
    ctx: LowerCtx
    weights: np.ndarray             # uint8 blob, 64-byte aligned offsets
    const_offsets: list[int]
    arena_bytes: int
    storage: dict                   # storage key -> ("input", i) | ("output", j) | ("const", off)
                                    # | ("arena", off)
    memory: MemoryPlan              # the arena plan (peak vs no-reuse bytes: memory.summary())
    fused: bool = True              # concats written in place by their producers (opt_level > 0)


def lower_graph(graph: Graph, target: Target | None, fuse: bool = True,
                gpu: bool = False, schedules: dict | None = None,
                release_params: bool = False) -> Program:
    """Lower every node of ``graph`` for the CPU ``target``, one node at a time (the epilogue
    fusions are the fuse_epilogue pass's fused nodes); ``fuse`` (opt_level > 0) lets producers
    write a concat's slices in place; ``gpu`` (``target`` None) picks the GPU schedules (kernels whose
    parallel loops are the CUDA grid); ``schedules`` maps workload keys to tuned schedules
    (cnncc/tune.py: a kernel whose key is there uses it, the cost model's choice otherwise).
    ``release_params``: ``graph``'s arrays belong to this compile (the driver imported them):
    each is dropped from ``graph.params`` once the last node reading it is lowered (its packed
    copy is in the weights), so the unpacked and packed weights are not all alive at once."""
    g = graph.copy()
    release = _last_uses(g) if release_params else {}
    from .rules import RULES
    known = set(g.params)          # values known at compile time (params + folded outputs)
    missing = []
    for n in g.nodes:
        if n.op in TYPE_ONLY or (n.op in CONST_OPS
                                         and all(i in known for i in n.inputs if i)):
            known.update(o for o in n.outputs if o)
        elif n.op not in RULES and n.op not in ALIAS_OPS:
            missing.append(n)
    if missing:
        listed = ", ".join(f"{n.op} (node '{n.name}')" for n in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        target = "cuda" if gpu else "llvm"
        raise CompileError(f"op {missing[0].op} not supported on target {target}; unsupported: "
                           f"{listed}{more}", missing[0].name)
    ctx = LowerCtx(g, target, gpu)
    ctx.schedules = dict(schedules or {})
    place: dict[str, tuple[str, int]] = {}
    skip: set[int] = set()
    if not gpu:
        ctx.halo = plan_halos(g)
    if fuse:     # opt_level 0, the unfused baseline, copies every concat
        place, skip = plan_inplace_concats(g, ctx.halo, ALIAS_OPS)
    alias: dict[str, str] = {}
    freed = 0
    for idx, node in enumerate(g.nodes):
        for name in release.get(idx - 1, ()):
            freed += np.asarray(g.params.pop(name)).nbytes
            graph.params.pop(name, None)
        # The previous node's packed constants go into the blob now that its unpacked arrays
        # are released (never an array's three copies at once: ir/aligned.GrowingBlob).
        ctx.write_consts()
        if freed >= _TRIM_BYTES:
            return_freed_memory()
            freed = 0
        if idx in skip:
            continue
        ctx.node_index = idx
        if _fold_constant(g, node):
            continue
        if node.op in ALIAS_OPS:
            if node.op == "Dropout":
                _dropout_mask(ctx, node)
            alias[node.outputs[0]] = alias.get(node.inputs[0], node.inputs[0])
            continue
        lower_node(ctx, node)
    for name in g.inputs + list(g.params):
        alias.pop(name, None)
    program = _plan(g, ctx, alias, place)
    program.fused = fuse
    return program


# Bytes of released arrays after which the C heap returns its free pages (lowering goes on
# meanwhile: the blob's new pages may then take the place of the freed ones).
_TRIM_BYTES = 16 << 20


def _last_uses(g: Graph) -> dict[int, list[str]]:
    """{node index: the parameters whose last reader it is}, for parameters read only by nodes
    that lower_node packs (not by alias ops, constant folding or as graph outputs)."""
    last: dict[str, int] = {}
    kept = set(g.outputs)
    for idx, n in enumerate(g.nodes):
        for name in n.inputs:
            if name in g.params:
                last[name] = idx
                if n.op in ALIAS_OPS or n.op in CONST_OPS:
                    kept.add(name)
    by_node: dict[int, list[str]] = {}
    for name, idx in last.items():
        if name not in kept:
            by_node.setdefault(idx, []).append(name)
    return by_node


def _dropout_mask(ctx: LowerCtx, node: Node) -> None:
    """Inference Dropout is the identity; its optional mask output is all true."""
    g = ctx.graph
    tm = node.inputs[2] if len(node.inputs) > 2 else ""
    if tm and (tm not in g.params or bool(np.asarray(g.params[tm]).reshape(-1)[0])):
        raise unsupported(node, "training mode (random masks)")
    if len(node.outputs) > 1 and node.outputs[1]:
        from cnncc.ir.loop import Const, Kernel, Store, loop_nest
        n = g.types[node.outputs[1]].size
        mb = ctx.value(node.outputs[1], (n,), "mask")
        ctx.emit(Kernel(f"{node.name}_mask", [mb], loop_nest(
            [("i", n)], lambda i: Store(mb, (i,), Const(True, DType.bool)))))


def _fold_constant(g: Graph, node: Node) -> bool:
    """Evaluate a node the lowering folds (CONST_OPS with constant inputs, or a Shape/Size of
    a static shape) at compile time (ir/fold.py): its outputs become parameters and no kernel
    is emitted. Any size: the alternative is a kernel computing the same constant."""
    if node.op not in CONST_OPS and node.op not in TYPE_ONLY:
        return False
    values = fold_node(g, node, limit=None)
    if values is None:
        return False
    for out, value in zip(node.outputs, values):
        if out:
            g.params[out] = np.ascontiguousarray(value)
    return True


def _root(alias: dict, name: str) -> str:
    while name in alias:
        name = alias[name]
    return name


def _placed(alias: dict, place: dict, name: str) -> tuple[str, int]:
    """(the value whose memory holds ``name``, byte offset in it): views and in-place concat
    slices (concat_inplace.py) resolved."""
    root = _root(alias, name)
    return place.get(root, (root, 0))


def _plan(g: Graph, ctx: LowerCtx, alias: dict, place: dict) -> Program:
    """Bind every value to input/output/const/arena storage; plan arena offsets by liveness."""
    from .tensor import emit_copy

    key_of: dict[str, tuple] = {}
    for i, name in enumerate(g.inputs):
        key_of[name] = ("input", i)
    claimed: set[str] = set()
    for j, name in enumerate(g.outputs):
        root = _root(alias, name)
        if root in g.inputs or root in g.params or root in claimed or root in key_of:
            # The output must be its own memory: copy into it at the end.
            ctx.node_index = len(g.nodes)
            alias.pop(name, None)
            emit_copy(ctx, f"output_copy_{j}", root, name, output=j)
            continue
        key_of[root] = ("output", j)
        claimed.add(root)
    # Constants: the blob lowering copied them into (context.py).
    ctx.write_consts()
    offsets, blob = ctx.const_offsets, ctx.blob.array()
    # Liveness over kernel positions of arena-resident values and temps.
    live: dict[tuple, Lifetime] = {}
    for pos, (k, _) in enumerate(ctx.kernels):
        for b in k.params:
            kind, ref = ctx.binding[id(b)]
            if kind == "value":
                root = _placed(alias, place, ref)[0]
                if root in key_of:
                    continue
                ref = ("v", root)
                size = halo_nbytes(ctx, root)
            elif kind == "temp":
                size = ctx.temps[ref][0]
                ref = ("t", ref)
            else:
                continue
            iv = live.get(ref)
            live[ref] = Lifetime(pos, pos, size) if iv is None else \
                Lifetime(min(iv.first, pos), max(iv.last, pos), size)
    plan = plan_memory(live)
    arena_off, arena = plan.offsets, plan.arena_bytes
    if dump_enabled("memory"):
        dump("memory", f"arena plan of {g.name}", format_plan(
            plan, {r: r[1] if r[0] == "v" else _temp_name(g, ctx, r[1]) for r in live}))
    storage = {}
    for k, _ in ctx.kernels:
        for b in k.params:
            kind, ref = ctx.binding[id(b)]
            if kind == "const":
                storage[id(b)] = ("const", offsets[ref])
            elif kind == "output":
                storage[id(b)] = ("output", ref)
            elif kind == "temp":
                storage[id(b)] = ("arena", arena_off[("t", ref)])
            else:
                root, sub = _placed(alias, place, ref)
                if root in key_of and not sub:
                    storage[id(b)] = key_of[root]
                elif ("v", root) in arena_off:
                    storage[id(b)] = ("arena", arena_off[("v", root)] + sub)
                else:
                    raise CompileError(f"internal error: value {root} has no storage")
    return Program(g.name, ctx, blob, offsets, arena, storage, plan)


def _temp_name(g: Graph, ctx: LowerCtx, tid: int) -> str:
    idx = ctx.temps[tid][1]
    return f"temp {tid} of " + (g.nodes[idx].name if 0 <= idx < len(g.nodes) else "outputs")
