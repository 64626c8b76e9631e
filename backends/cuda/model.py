"""CUDA targets: a graph lowered with GPU schedules into one .cu program, then run.

    cuda-emu   the generated source compiled for the CPU with the emulation header (g++) and
               called in-process: host memory is device memory. How CI checks numerics.
    cuda       the same source built by nvcc into a shared library linked with the CUDA runtime,
               run on the GPU (needs nvcc and an NVIDIA GPU; a clear error otherwise).

Both call ``NAME_init(weights)`` once and ``NAME_run(inputs, outputs)`` (host pointers) per
inference; see program.py for the host side.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...ir import CompileError, Graph
from ...runtime import CompiledModel, signature
from ...debug import dump, dump_enabled
from .build import BuildError, build_emu_library, find_nvcc
from .device import build_cuda_library, gpu_count
from .codegen import CudaModule
from .program import KernelCall, render_program

# One lock per loaded library: its arena and staging buffers are process-wide statics.
_LOCKS: dict[str, threading.Lock] = {}


@dataclass
class CudaProgram:
    """A lowered program and its CUDA source (``module.source``)."""
    program: object                 # cnncc.lower.program.Program
    module: CudaModule
    name: str
    inputs: list                    # [(name, TensorType)] in graph order
    outputs: list


def c_name(text: str) -> str:
    """``text`` made a C identifier (the program's symbol prefix)."""
    s = re.sub(r"\W", "_", text or "model")
    return s if re.match(r"[A-Za-z_]", s) else f"m_{s}"


def generate(graph: Graph, opt_level: int = 3, name: str | None = None) -> CudaProgram:
    """Lower ``graph`` with the GPU schedules and render the whole program as CUDA C."""
    from ...lower.program import lower_graph

    prog = lower_graph(graph, lanes=1, threads=1, fuse=opt_level > 0, gpu=True)
    kernels = [k for k, _ in prog.ctx.kernels]
    calls = [KernelCall(k.name, tuple(prog.storage[id(b)] for b in k.params)) for k in kernels]
    ins, outs = signature(graph)
    if name is None:
        digest = hashlib.sha256(str(graph).encode()).hexdigest()[:8]
        name = f"{c_name(graph.name)[:40]}_{digest}"
    module = render_program(name, kernels, calls, len(ins), len(outs), prog.weights.nbytes,
                            prog.arena_bytes, [t.nbytes for _, t in ins],
                            [t.nbytes for _, t in outs])
    if dump_enabled("kernels"):
        dump("kernels", f"loop nests of {graph.name} (cuda)",
             "\n\n".join(str(k) for k in kernels))
    dump("cuda", f"CUDA C of {graph.name}", module.source)
    return CudaProgram(prog, module, name, ins, outs)


class CudaModel(CompiledModel):
    """A model whose generated CUDA program runs through a shared library (emulated or real)."""

    def __init__(self, graph: Graph, opt_level: int, emulate: bool):
        super().__init__(*signature(graph))
        self.target = "cuda-emu" if emulate else "cuda"
        if not emulate:
            _require_gpu()
        self.generated = gen = generate(graph, opt_level)
        self.program = gen.program
        self.source = gen.module.source
        self.kernels = [k for k, _ in gen.program.ctx.kernels]
        path = build_emu_library(self.source) if emulate else build_cuda_library(self.source)
        self.library_path = Path(path)
        self._lib = ctypes.CDLL(str(path))
        self._lock = _LOCKS.setdefault(str(path), threading.Lock())
        self._run = getattr(self._lib, f"{gen.name}_run")
        self._run.restype = ctypes.c_int
        self._run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        init = getattr(self._lib, f"{gen.name}_init")
        init.restype = ctypes.c_int
        init.argtypes = [ctypes.c_void_p]
        weights = np.ascontiguousarray(gen.program.weights)
        with self._lock:
            err = init(weights.ctypes.data)
        if err != 0:
            raise CompileError(f"{self.target}: {gen.name}_init failed with CUDA error {err}")

    def _execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outs = [np.empty(shape, dt) for shape, dt in zip(self.output_shapes, self.output_dtypes)]
        in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
        with self._lock:        # one arena per library: calls take turns
            err = self._run(in_ptrs, out_ptrs)
        if err != 0:
            raise RuntimeError(f"{self.target}: {self.generated.name}_run returned CUDA error "
                               f"{err}")
        return outs


def _require_gpu() -> None:
    problems = []
    if find_nvcc() is None:
        problems.append("nvcc was not found (install the CUDA toolkit or put nvcc on PATH)")
    n, why = gpu_count()
    if n == 0:
        problems.append(f"no NVIDIA GPU is usable here ({why})")
    if problems:
        raise BuildError("target cuda cannot run: " + "; ".join(problems) + ". Use "
                         "target='cuda-emu' to run the generated CUDA code on the CPU, or "
                         "`cnncc compile MODEL --target cuda -o DIR` to write the .cu file.")


def build(graph: Graph, options: dict, emulate: bool) -> CudaModel:
    unknown = set(options) - {"opt_level", "threads", "keep_ir"}
    if unknown:
        raise CompileError(f"unknown option(s) for target cuda: {sorted(unknown)}")
    return CudaModel(graph, options.get("opt_level", 3), emulate)
