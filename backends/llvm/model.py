"""LLVMModel: a graph compiled to one native entry function, called once per inference."""
from __future__ import annotations

import ctypes
import itertools
import os

import numpy as np

from ...ir import CompileError, Graph
from ...runtime import CompiledModel, signature
from . import jit
from .codegen import ModuleBuilder

_IDS = itertools.count()


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    """A zeroed uint8 array whose data pointer is ``align``-byte aligned."""
    raw = np.zeros(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + nbytes]


class LLVMModel(CompiledModel):
    target = "llvm"

    def __init__(self, graph: Graph, threads: int, opt_level: int = 3):
        from ...lower.program import entry_function, lower_graph

        super().__init__(*signature(graph))
        self.threads = threads
        lanes = jit.vector_lanes()
        self.program = prog = lower_graph(graph, lanes, threads)
        uid = next(_IDS)
        mb = ModuleBuilder(f"cnncc_{uid}", lanes, threads, jit.has_openmp())
        fns = {}
        for k, _ in prog.ctx.kernels:
            from ...ir.loop import Kernel
            fns[k.name] = mb.add_kernel(Kernel(f"m{uid}_{k.name}", k.params, k.body))
        fns = {k.name: fns[k.name] for k, _ in prog.ctx.kernels}
        self.entry_name = f"m{uid}_run"
        entry_function(mb.module, prog, fns, self.entry_name)
        self.ir_text = str(mb)
        self._module = jit.compile_ir(self.ir_text, opt_level)
        self._weights = _aligned(prog.weights.nbytes)
        self._weights[:] = prog.weights
        self._arena = _aligned(max(prog.arena_bytes, 64))
        self._fn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p)(
            jit.function_address(self.entry_name))
        self.kernels = [k for k, _ in prog.ctx.kernels]

    def profile(self, inputs: list[np.ndarray], repeat: int = 10) -> list[tuple[str, float]]:
        """Median seconds per kernel (each kernel called on its own, in program order)."""
        import time

        checked = self._check(list(inputs))
        outs = [np.empty(s, d) for s, d in zip(self.output_shapes, self.output_dtypes)]
        base = {"input": [a.ctypes.data for a in checked], "output": [a.ctypes.data for a in outs],
                "const": self._weights.ctypes.data, "arena": self._arena.ctypes.data}
        uid = self.entry_name[:-len("_run")]
        result = []
        for k in self.kernels:
            ptrs = []
            for b in k.params:
                kind, ref = self.program.storage[id(b)]
                ptrs.append(base[kind][ref] if kind in ("input", "output") else base[kind] + ref)
            fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(ptrs))(
                jit.function_address(f"{uid}_{k.name}"))
            fn(*ptrs)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn(*ptrs)
                times.append(time.perf_counter() - t0)
            result.append((k.name, float(np.median(times))))
        return result

    def _execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outs = [np.empty(shape, dt) for shape, dt in zip(self.output_shapes, self.output_dtypes)]
        in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
        rc = self._fn(in_ptrs, out_ptrs, self._weights.ctypes.data, self._arena.ctypes.data)
        if rc != 0:
            raise CompileError(f"native code returned error {rc}")
        return outs


def build(graph: Graph, options: dict) -> LLVMModel:
    threads = options.get("threads") or os.cpu_count() or 1
    return LLVMModel(graph, threads, options.get("opt_level", 3) and 3)
