"""Targets: each one turns an optimized Graph into a CompiledModel.

BACKENDS is the explicit list of targets; ``cnncc.compile(..., target=NAME)`` looks names up here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    build: Callable[..., Any]          # (graph, options) -> CompiledModel; imported lazily
    native: bool                       # generates code (runs the optimization pipeline)


def _build_reference(graph, options):
    from .reference import build
    return build(graph, options)


def _build_llvm(graph, options):
    from .llvm.model import build
    return build(graph, options)


BACKENDS: dict[str, Target] = {
    "reference": Target("reference", "numpy interpreter (the oracle)", _build_reference, False),
    "llvm": Target("llvm", "native CPU code via LLVM (llvmlite JIT)", _build_llvm, True),
}
