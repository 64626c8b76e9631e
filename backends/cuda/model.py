"""CUDA targets: a graph lowered with GPU schedules into one .cu program, then run.

    cuda-emu   the generated source compiled for the CPU with the emulation header (g++) and
               called in-process: host memory is device memory. How CI checks numerics.
    cuda       the same source built by nvcc into a shared library linked with the CUDA runtime,
               run on the GPU (needs nvcc and an NVIDIA GPU; a clear error otherwise).

Both call ``NAME_init(weights)`` once and ``NAME_run(inputs, outputs)`` (host pointers) per
inference; see program.py for the host side.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncc.backends import check_options
from cnncc.ir import CompileError
from cnncc.ir.loop import Kernel
from cnncc.runtime import CompiledModel, signature
from cnncc.debug import dump, dump_enabled
from cnncc.backends.llvm.aot import c_identifier
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


# Suffixes of the program-level symbols NAME_<suffix> (program.py, export.py).
PROGRAM_SYMBOLS = ("in", "out", "weights", "arena", "init", "run", "release")


def generate(prog, name: str | None = None) -> CudaProgram:
    """Render ``prog`` (a Program the driver lowered with the GPU schedules) as CUDA C."""
    graph = prog.ctx.graph
    ins, outs = signature(graph)
    if name is None:
        digest = hashlib.sha256(f"{prog.fused}\n{graph}".encode()).hexdigest()[:8]
        name = f"{c_identifier(graph.name or 'model')[:40]}_{digest}"
    # Kernel symbols carry the program's name: programs linked (or emulated) together do not
    # clash. The kernels keep their buffers, so the program's storage map still applies.
    # A kernel named after one of the program's own symbols (a layer called "in" or "run")
    # gets a suffix.
    prog.ctx.kernels = [(Kernel(f"{name}_{k.name}" + ("_kernel" if k.name in PROGRAM_SYMBOLS
                                                      else ""), k.params, k.body), i)
                        for k, i in prog.ctx.kernels]
    kernels = [k for k, _ in prog.ctx.kernels]
    calls = [KernelCall(k.name, tuple(prog.storage[id(b)] for b in k.params)) for k in kernels]
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

    def __init__(self, prog, emulate: bool):
        super().__init__(*signature(prog.ctx.graph))
        self.target = "cuda-emu" if emulate else "cuda"
        if not emulate:
            _require_gpu()
        self.generated = gen = generate(prog)
        self.program = gen.program
        self.source = gen.module.source
        self.kernels = [k for k, _ in gen.program.ctx.kernels]
        self._lib = None
        self._build_error: Exception | None = None
        if emulate and _DEFERRED is not None:
            _DEFERRED.append(self)          # built with others by build_deferred
        else:
            self._attach(build_emu_library(self.source) if emulate
                         else build_cuda_library(self.source))

    def _attach(self, path) -> None:
        """Load the library holding this program (possibly with others) and run NAME_init."""
        name = self.generated.name
        self.library_path = Path(path)
        lib = ctypes.CDLL(str(path))
        self._lock = _LOCKS.setdefault(str(path), threading.Lock())
        self._run = getattr(lib, f"{name}_run")
        self._run.restype = ctypes.c_int
        self._run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        init = getattr(lib, f"{name}_init")
        init.restype = ctypes.c_int
        init.argtypes = [ctypes.c_void_p]
        weights = np.ascontiguousarray(self.program.weights)
        with self._lock:
            err = init(weights.ctypes.data)
        if err != 0:
            raise CompileError(f"{self.target}: {name}_init failed with CUDA error {err}")
        self._lib = lib

    def _execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._lib is None:
            if self._build_error is not None:
                raise self._build_error
            self._attach(build_emu_library(self.source))
        outs = [np.empty(shape, dt) for shape, dt in zip(self.output_shapes, self.output_dtypes)]
        in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
        with self._lock:        # one arena per program: calls take turns
            err = self._run(in_ptrs, out_ptrs)
        if err != 0:
            raise RuntimeError(f"{self.target}: {self.generated.name}_run returned CUDA error "
                               f"{err}")
        return outs


_DEFERRED: list | None = None


@contextlib.contextmanager
def deferred_builds():
    """Inside this block cuda-emu models are generated but not built; ``build_deferred(list)``
    then builds them several programs per g++ run (how the op sweeps stay fast). A model not
    built that way builds itself at its first call."""
    global _DEFERRED
    previous, _DEFERRED = _DEFERRED, []
    try:
        yield _DEFERRED
    finally:
        _DEFERRED = previous


def build_deferred(models: list, per_library: int = 40, jobs: int = 2,
                   quick: bool = False) -> None:
    """Build the programs of ``models`` together, ``per_library`` per translation unit, ``jobs``
    g++ processes at once (``quick``: unoptimized, faster to build); a unit that fails is
    retried model by model so that the error lands on the model that caused it."""
    from concurrent.futures import ThreadPoolExecutor

    models = [m for m in models if m._lib is None]
    chunks = [models[i:i + per_library] for i in range(0, len(models), per_library)]

    def build_chunk(chunk: list) -> None:
        sources = {m.generated.name: m.source for m in chunk}
        try:
            path = build_emu_library("\n".join(sources.values()), quick=quick)
            for m in chunk:
                m._attach(path)
        except CompileError:
            for m in chunk:
                try:
                    m._attach(build_emu_library(m.source, quick=quick))
                except CompileError as e:
                    m._build_error = e

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(build_chunk, chunks))


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


def build(prog, options: dict, emulate: bool) -> CudaModel:
    """The model of ``prog``, lowered by the driver with the GPU schedules (at ``opt_level``)."""
    known = ("opt_level", "threads")
    check_options("cuda-emu" if emulate else "cuda", options, known)
    return CudaModel(prog, emulate)
