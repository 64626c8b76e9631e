"""Targets: each one turns what the driver hands it into a CompiledModel.

BACKENDS is the explicit list of targets; ``cnncc.compile(..., target=NAME)`` looks names up here.
The driver (cnncc/driver.py) runs the stages in order: frontend -> passes -> lowering -> backend.
A target that generates code (``lowering`` "cpu" or "gpu") receives the lowered program
(cnncc.lower.program.Program: kernels, weight blob, arena plan, buffer storage) and never calls
back up into the lowering, the passes or the frontend; the reference target receives the graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cnncc.ir import CompileError


@dataclass(frozen=True)
class Backend:
    """A registry entry: how a target name builds a CompiledModel."""
    name: str
    description: str
    build: Callable[..., Any]          # (program, options) -> CompiledModel; imported lazily
    native: bool                       # generates code (runs the optimization pipeline)
    lowering: str | None = None        # the schedules its program is lowered with: cpu | gpu
    missing: Callable[[], str | None] = lambda: None   # why it cannot run here (None: it can)
    # (threads) -> the CPU Target the code is generated for; None for targets that are not CPUs
    machine: Callable[[int | None], Any] = lambda threads: None


def check_options(target: str, options: dict, known: tuple[str, ...]) -> None:
    """Refuse options a target does not know, naming the ones it does (the driver itself takes
    cache, skip_passes, dw_lowrank_tol and input_shapes)."""
    unknown = set(options) - set(known)
    if unknown:
        raise CompileError(f"unknown option(s) for target {target}: {sorted(unknown)} (known: "
                           f"{', '.join(known)}, and the driver's cache, skip_passes, "
                           "dw_lowrank_tol, input_shapes)")


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


def _build_llvm(program, options):
    from .llvm.model import build
    return build(program, options)


def _llvm_machine(threads):
    from .llvm.jit import host_target
    return host_target(threads)


def _build_cuda(program, options):
    from .cuda.model import build
    return build(program, options, emulate=False)


def _build_cuda_emu(program, options):
    from .cuda.model import build
    return build(program, options, emulate=True)


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", "numpy interpreter (the oracle)", _build_reference, False),
    "llvm": Backend("llvm", "native CPU code via LLVM (llvmlite JIT)", _build_llvm, True,
                    "cpu", machine=_llvm_machine),
    "cuda": Backend("cuda", "CUDA C built by nvcc, run on an NVIDIA GPU", _build_cuda, True,
                    "gpu", _cuda_missing),
    "cuda-emu": Backend("cuda-emu", "the CUDA C of target cuda compiled for the CPU with an "
                        "emulation header (g++)", _build_cuda_emu, True, "gpu", _emu_missing),
}
