"""Graph passes and the one explicit pipeline that runs them.

Every pass is a function ``Graph -> Graph`` (taking the PassContext too) that returns a new graph;
after each one the graph is verified and, on request, dumped (CNNCC_DUMP=passes or =PASS_NAME).
opt_level 0 runs only fold_dequantized: every op stays its own kernel, in NCHW (the "unfused"
baseline); 1 runs the clean-ups and fusions, 2 adds the NCHWc layout, 3 (the default) everything.
The arena is planned at lowering (it needs kernel lifetimes, so it is not Graph -> Graph):
cnncc/lower/memory_plan.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cnncc.debug import dump, dump_enabled
from cnncc.ir import Graph
from cnncc.ir.target import Target
from .canonicalize import canonicalize
from .eliminate_dead_code import eliminate_dead_code
from .fold_batch_norm import fold_batch_norm
from .fold_constants import fold_constants
from .fold_channel_shuffle import fold_channel_shuffle
from .fuse_epilogue import fuse_epilogue
from .recognize_activations import recognize_activations
from .lift_channels_last import lift_channels_last
from .recognize_layer_norm import recognize_layer_norm
from .fuse_quantized import fuse_quantized
from .fuse_quantized_ops import fuse_quantized_ops
from .fold_dequantized import fold_dequantized
from .alter_layout_nchwc import alter_layout_nchwc
from .alter_layout_int8 import alter_layout_int8
from .depthwise_separable import depthwise_separable
from .fuse_channel_scale import fuse_channel_scale
from .fuse_prologue import fuse_prologue
from .inline_channel_gather import inline_channel_gather


@dataclass
class PassContext:
    opt_level: int = 3
    target: str = "llvm"
    skip: frozenset[str] = field(default_factory=frozenset)
    machine: Target | None = None     # the CPU compiled for (None: not a CPU target)
    lowrank_tol: float | None = None    # opt-in approximate depthwise factoring (None: exact only)


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph, PassContext], Graph]
    min_level: int        # the lowest opt_level that runs it


PIPELINE: list[Pass] = [
    Pass("canonicalize", canonicalize, 1),
    Pass("fold_constants", fold_constants, 1),
    # QDQ conv chains -> QConv before anything fuses their float convs; then the quantized
    # constants left are dequantized once (at opt_level 0 too: the importer kept them).
    Pass("fuse_quantized", fuse_quantized, 1),
    # The classifier (DQ -> Gemm/MatMul -> Q) and pools stay 8-bit, before weights are folded.
    Pass("fuse_quantized_ops", fuse_quantized_ops, 1),
    Pass("fold_dequantized", fold_dequantized, 0),
    Pass("fold_batch_norm", fold_batch_norm, 1),
    # Before dead code: the Concats, Reshapes and Transposes it composes away are left dead.
    Pass("fold_channel_shuffle", fold_channel_shuffle, 1),
    Pass("eliminate_dead_code", eliminate_dead_code, 1),
    # Before the epilogue fusion: a recognised SiLU / HardSwish / Gelu is one activation to fuse.
    Pass("recognize_activations", recognize_activations, 1),
    Pass("recognize_layer_norm", recognize_layer_norm, 1),
    # CPU: channels-last stretches (LayerNorm2d, ConvNeXt blocks) on the NCHW map, convs 1x1.
    Pass("lift_channels_last", lift_channels_last, 1),
    # After dead code is gone: a dead user of a conv output would block its fusion.
    Pass("fuse_epilogue", fuse_epilogue, 1),
    # After the epilogues are fused: a FusedConv becomes one blocked conv, residual included.
    Pass("alter_layout_nchwc", alter_layout_nchwc, 2),
    # The quantized convs (which the float pass leaves alone) on blocked 8-bit activations.
    Pass("alter_layout_int8", alter_layout_int8, 2),
    # On blocked convs: a depthwise conv and the 1x1 conv reading it become one kernel.
    Pass("depthwise_separable", depthwise_separable, 3),
    # On blocked convs, after depthwise_separable: a BN + ReLU goes into the conv reading it.
    Pass("fuse_prologue", fuse_prologue, 2),
    # A squeeze-excitation gate goes into the 1x1 conv reading the gated map.
    Pass("fuse_channel_scale", fuse_channel_scale, 2),
    # After every pass that rewrites convs: a gather read only by dense 1x1 convs is read in
    # place by them (no copy).
    Pass("inline_channel_gather", inline_channel_gather, 2),
]
PASS_NAMES = [p.name for p in PIPELINE]


def enabled_passes(ctx: PassContext) -> list[Pass]:
    unknown = set(ctx.skip) - set(PASS_NAMES)
    if unknown:
        from cnncc.ir import CompileError
        raise CompileError(f"unknown pass(es) to skip: {sorted(unknown)} (passes: {PASS_NAMES})")
    return [p for p in PIPELINE if ctx.opt_level >= p.min_level and p.name not in ctx.skip]


def run_pipeline(graph: Graph, ctx: PassContext,
                 after_pass: Callable[[str, Graph], None] | None = None) -> Graph:
    """Run the enabled passes in order; ``after_pass(name, graph)`` sees every intermediate graph."""
    for p in enabled_passes(ctx):
        graph = p.run(graph, ctx).verify()
        if dump_enabled("passes") or dump_enabled(p.name):
            dump(p.name, f"after {p.name}", str(graph))
        if after_pass is not None:
            after_pass(p.name, graph)
    return graph


__all__ = ["PassContext", "Pass", "PIPELINE", "PASS_NAMES", "run_pipeline", "enabled_passes"]
