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
    missing: Callable[[], str | None] = lambda: None   # why it cannot run here (None: it can)


def _cuda_missing() -> str | None:
    from .cuda.build import find_nvcc
    from .cuda.device import gpu_count
    n, why = gpu_count()
    if n == 0:
        return f"target cuda needs an NVIDIA GPU: {why}"
    return None if find_nvcc() else "target cuda needs nvcc (the CUDA toolkit)"


def _emu_missing() -> str | None:
    from .cuda.build import find_cxx
    return None if find_cxx() else "target cuda-emu needs a C++ compiler (g++)"


def _build_reference(graph, options):
    from .reference import build
    return build(graph, options)


def _build_llvm(graph, options):
    from .llvm.model import build
    return build(graph, options)


def _build_cuda(graph, options):
    from .cuda.model import build
    return build(graph, options, emulate=False)


def _build_cuda_emu(graph, options):
    from .cuda.model import build
    return build(graph, options, emulate=True)


BACKENDS: dict[str, Target] = {
    "reference": Target("reference", "numpy interpreter (the oracle)", _build_reference, False),
    "llvm": Target("llvm", "native CPU code via LLVM (llvmlite JIT)", _build_llvm, True),
    "cuda": Target("cuda", "CUDA C built by nvcc, run on an NVIDIA GPU", _build_cuda, True,
                   _cuda_missing),
    "cuda-emu": Target("cuda-emu", "the CUDA C of target cuda compiled for the CPU with an "
                       "emulation header (g++)", _build_cuda_emu, True, _emu_missing),
}
