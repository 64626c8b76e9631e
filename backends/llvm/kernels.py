"""Compile standalone loop IR kernels and call them on numpy arrays (tests, benchmarks)."""
from __future__ import annotations

import ctypes

import numpy as np

from cnncc.ir import CompileError
from cnncc.ir.loop import Kernel
from . import jit
from .codegen import ModuleBuilder

_COUNTER = [0]


class CompiledKernel:
    """A JIT-compiled kernel: ``k(arrays_by_name)`` runs it in place on contiguous arrays."""

    def __init__(self, kernel: Kernel, symbol: str, ir_text: str):
        self.kernel = kernel
        self.ir_text = ir_text
        self._fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(kernel.params))(
            jit.function_address(symbol))

    def __call__(self, arrays: dict[str, np.ndarray]) -> None:
        ptrs = []
        for b in self.kernel.params:
            a = arrays[b.name]
            if a.shape != b.shape or a.dtype != b.dtype.np or not a.flags.c_contiguous:
                raise CompileError(f"kernel {self.kernel.name}: {b.name} must be a contiguous "
                                   f"{b.dtype}{list(b.shape)} array")
            ptrs.append(a.ctypes.data)
        self._fn(*ptrs)


def compile_kernel(kernel: Kernel, threads: int = 1, lanes: int | None = None,
                   opt_level: int = 3) -> CompiledKernel:
    """JIT ``kernel`` under a unique symbol name (kernels of different tests never clash)."""
    _COUNTER[0] += 1
    symbol = f"{kernel.name}_k{_COUNTER[0]}"
    renamed = Kernel(symbol, kernel.params, kernel.body)
    mb = ModuleBuilder(symbol, lanes or jit.vector_lanes(), threads, jit.has_openmp(),
                       jit.cpu_flags())
    mb.add_kernel(renamed)
    text = str(mb)
    jit.compile_ir(text, opt_level)
    return CompiledKernel(kernel, symbol, text)
