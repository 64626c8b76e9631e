"""One kernel per unique workload: kernels equal up to their names and buffer arguments share code.

A kernel's workload is its loop IR printed with the kernel called ``K``, its parameters ``p0,
p1, ...`` and its local buffers ``l0, l1, ...`` (the names lowering gives them carry the node's
name), together with the target and the code generator's version (a hash of this folder's
sources). Kernels with the same workload are generated, optimized and compiled once, under the
symbol ``cnk_<hash>``, and called from every node that needs them: weights, bias and halos
reach a kernel as arguments (the entry function passes each node's pointers), never as
addresses inside its code.
"""
from __future__ import annotations

import hashlib
import os

import llvmlite

from cnncc.ir.loop import Kernel
from cnncc.ir.loop_walk import canonical_text
from . import codegen, exprs

_CODEGEN_DIGEST: list[str] = []


def codegen_version() -> str:
    """A hash of the LLVM backend's sources (this folder): the kernel cache (objects.py) never
    hands out code of another version of the code generator."""
    if not _CODEGEN_DIGEST:
        h = hashlib.sha256()
        folder = os.path.dirname(os.path.abspath(__file__))
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
        _CODEGEN_DIGEST.append(h.hexdigest()[:16])
    return _CODEGEN_DIGEST[0]


def target_signature(info: dict, lanes: int, threads: int, openmp: bool) -> str:
    """What besides the loop IR decides a kernel's machine code."""
    from cnncc import __version__

    return "\n".join([codegen_version(), __version__, llvmlite.__version__, info["cpu"],
                      info["features"], info["triple"], info["codegen"], f"lanes={lanes}",
                      f"threads={threads}", f"openmp={openmp}",
                      f"llvm_unrolls={codegen.LLVM_UNROLLS}",
                      f"vecmath_calls={exprs.VECMATH_CALLS}"])


def kernel_symbol(kernel: Kernel, signature: str) -> str:
    """The symbol of ``kernel``'s code: a hash of its workload and the target."""
    text = canonical_text(kernel) + "\n" + signature
    return "cnk_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def unique_kernels(kernels: list[Kernel], signature: str) -> tuple[dict, dict]:
    """({kernel name: symbol}, {symbol: the first kernel with that workload})."""
    symbols, unique = {}, {}
    for k in kernels:
        sym = kernel_symbol(k, signature)
        symbols[k.name] = sym
        unique.setdefault(sym, k)
    return symbols, unique
