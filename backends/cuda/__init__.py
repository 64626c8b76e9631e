"""CUDA backend: loop IR kernels rendered as CUDA C (codegen), built with nvcc or, for testing
without a GPU, compiled for the host with the emulation header cuda_emu.h (build)."""
from .codegen import CudaKernel, CudaModule, Launch, render_kernel, render_module
from .program import KernelCall, render_program

__all__ = ["CudaKernel", "CudaModule", "KernelCall", "Launch", "render_kernel", "render_module",
           "render_program"]
