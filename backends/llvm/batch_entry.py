"""The batch entry: a batch-1 program run over N images, in latency or throughput mode.

    i32 NAME_run_batch(i64 n, i32 mode, ptr inputs, ptr outputs, ptr weights, ptr arenas,
                       i64 arena_stride)

inputs/outputs point to the N-image tensors (graph order); image b of tensor i starts at
b * (its batch-1 size in bytes). Latency mode runs the images one after another through the
program entry, each image's kernels split across the threads as for one image (arena 0).
Throughput mode runs one parallel job over the images on cnncc's thread pool (thread_pool.py):
each participant takes the next image from an atomic counter and runs it on its own arena
(``arenas + thread * arena_stride``); the kernels' own parallel loops nest inside it, where the
pool, busy with the outer job, runs them on the calling thread, so each image runs
single-threaded. ``mode`` 0 picks by ``n`` (throughput from ``throughput_min_images``
images on), 1 forces latency, 2 throughput. Every image computes exactly what a single run does,
so the outputs equal N single runs bitwise in either mode.
"""
from __future__ import annotations

import llvmlite.ir as ir

from .codegen import parallel_function
from .exprs import I32, I64, PTR

MODES = {"auto": 0, "latency": 1, "throughput": 2}


def arena_stride(arena_bytes: int) -> int:
    """Bytes between the per-thread arenas of the batch entry (64-byte aligned)."""
    return (max(arena_bytes, 64) + 63) // 64 * 64


def throughput_min_images(threads: int) -> int:
    """From how many images on throughput mode runs: as soon as every thread gets an image
    (measured on ResNet-50, MobileNetV2 and tiny nets at 2 threads, see README: at N = threads
    images side by side beat each image split across the threads)."""
    return threads


def batch_entry_function(module: ir.Module, run: ir.Function, name: str, in_bytes: list[int],
                         out_bytes: list[int], threads: int, openmp: bool) -> ir.Function:
    """Define ``name`` (the ABI above) calling ``run`` (the program entry) once per image."""
    image = _image_function(module, run, f"{name}_image", in_bytes, out_bytes)
    fn = ir.Function(module, ir.FunctionType(I32, [I64, I32, PTR, PTR, PTR, PTR, I64]), name=name)
    n, mode, ins, outs, wts, arenas, stride = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    seq = fn.append_basic_block("latency")
    if openmp and threads > 1:
        par = fn.append_basic_block("throughput")
        auto = b.and_(b.icmp_signed("==", mode, ir.Constant(I32, 0)),
                      b.icmp_signed(">=", n, ir.Constant(I64, throughput_min_images(threads))))
        b.cbranch(b.or_(auto, b.icmp_signed("==", mode, ir.Constant(I32, 2))), par, seq)
        b.position_at_end(par)
        fields = [I64, PTR, PTR, PTR, PTR, I64, I64]     # n .. stride, the next-image counter
        sty = ir.LiteralStructType(fields)
        ctx = b.alloca(sty, name="batchctx")
        ctx.type = PTR
        for i, v in enumerate([n, ins, outs, wts, arenas, stride, ir.Constant(I64, 0)]):
            b.store(v, b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, i)], source_etype=sty))
        worker = _worker_function(module, image, f"{name}_worker", sty)
        b.call(parallel_function(module), [worker, ctx, ir.Constant(I32, threads)])
        b.ret(ir.Constant(I32, 0))
    else:
        b.branch(seq)
    b.position_at_end(seq)
    head = fn.append_basic_block("next")
    body = fn.append_basic_block("run")
    done = fn.append_basic_block("done")
    pre = b.block
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name="b")
    i.add_incoming(ir.Constant(I64, 0), pre)
    b.cbranch(b.icmp_signed("<", i, n), body, done)
    b.position_at_end(body)
    b.call(image, [i, ins, outs, wts, arenas])
    i.add_incoming(b.add(i, ir.Constant(I64, 1)), body)
    b.branch(head)
    b.position_at_end(done)
    b.ret(ir.Constant(I32, 0))
    return fn


def _image_function(module: ir.Module, run: ir.Function, name: str, in_bytes: list[int],
                    out_bytes: list[int]) -> ir.Function:
    """``void name(i64 b, ptr inputs, ptr outputs, ptr weights, ptr arena)``: image b."""
    i8 = ir.IntType(8)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR, PTR, PTR, PTR]), name=name)
    fn.linkage = "internal"
    idx, ins, outs, wts, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    arrays = []
    for base, sizes in ((ins, in_bytes), (outs, out_bytes)):
        arr_ty = ir.ArrayType(PTR, max(1, len(sizes)))
        arr = b.alloca(arr_ty)
        arr.type = PTR          # opaque pointers, as codegen.py's allocas
        for k, nbytes in enumerate(sizes):
            slot = ir.Constant(I64, k)
            p = b.load(b.gep(base, [slot], source_etype=PTR), typ=PTR)
            p = b.gep(p, [b.mul(idx, ir.Constant(I64, nbytes))], source_etype=i8)
            b.store(p, b.gep(arr, [ir.Constant(I64, 0), slot], source_etype=arr_ty))
        arrays.append(arr)
    b.call(run, [arrays[0], arrays[1], wts, arena])
    b.ret_void()
    return fn


def _worker_function(module: ir.Module, image: ir.Function, name: str,
                     sty: ir.LiteralStructType) -> ir.Function:
    """The body of the throughput region: grab the next image, run it on this thread's arena."""
    i8 = ir.IntType(8)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I32, I32]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n, ins, outs, wts, arenas, stride = [
        b.load(b.gep(fn.args[0], [ir.Constant(I32, 0), ir.Constant(I32, k)], source_etype=sty),
               typ=t) for k, t in enumerate(sty.elements[:-1])]
    counter = b.gep(fn.args[0], [ir.Constant(I32, 0), ir.Constant(I32, len(sty.elements) - 1)],
                    source_etype=sty)
    tid = b.sext(fn.args[1], I64)           # this participant's index in the team
    arena = b.gep(arenas, [b.mul(tid, stride)], source_etype=i8)
    grab = fn.append_basic_block("grab")
    work = fn.append_basic_block("work")
    done = fn.append_basic_block("done")
    b.branch(grab)
    b.position_at_end(grab)
    idx = b.atomic_rmw("add", counter, ir.Constant(I64, 1), "monotonic")
    b.cbranch(b.icmp_signed("<", idx, n), work, done)
    b.position_at_end(work)
    b.call(image, [idx, ins, outs, wts, arena])
    b.branch(grab)
    b.position_at_end(done)
    b.ret_void()
    return fn
