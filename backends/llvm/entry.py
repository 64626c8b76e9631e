"""The program entry: ``i32 NAME(ptr inputs, ptr outputs, ptr weights, ptr arena)``.

inputs/outputs are arrays of data pointers (graph order), weights the packed 64-byte aligned
constant blob, arena the scratch memory the lowering planned (cnncc/lower/memory_plan.py). It
calls every kernel of the lowered program once, in order, each with the pointers its buffers
are bound to (``program.storage``: input/output slot, weight or arena offset).
"""
from __future__ import annotations

import llvmlite.ir as ir


def entry_function(module: ir.Module, prog, kernels: dict, name: str) -> ir.Function:
    """``i32 NAME(ptr inputs, ptr outputs, ptr weights, ptr arena)`` calling every kernel."""
    ptr = ir.PointerType()
    i8, i64 = ir.IntType(8), ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.IntType(32), [ptr] * 4), name=name)
    ins, outs, wts, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cache: dict = {}

    def pointer(key):
        if key in cache:
            return cache[key]
        kind, ref = key
        if kind in ("input", "output"):
            base = ins if kind == "input" else outs
            p = b.load(b.gep(base, [ir.Constant(i64, ref)], source_etype=ptr), typ=ptr)
        else:
            base = wts if kind == "const" else arena
            p = b.gep(base, [ir.Constant(i64, ref)], source_etype=i8)
        cache[key] = p
        return p

    for k, _ in prog.ctx.kernels:
        args = [pointer(prog.storage[id(p)]) for p in k.params]
        b.call(kernels[k.name], args)
    b.ret(ir.Constant(ir.IntType(32), 0))
    return fn
