"""The int8 dot products of the loop IR (``dot4_u8s8*``, ir/loop.py) as LLVM IR: per int32
lane, acc + sum of 4 uint8 x int8 byte products.

    dot4_u8s8_vnni   <16 x i32> / <8 x i32>: llvm.x86.avx512.vpdpbusd.512 / .256 (AVX-512
                     VNNI; AVX-VNNI selects the VEX form of the 256-bit one)
    dot4_u8s8_avx2   <8 x i32>: vpmaddubsw (u8 x s8 pairs summed to int16, saturating) then
                     vpmaddwd by ones (pairs of int16 summed to int32), added to acc; exact
                     when every int8 operand lies in [-64, 64] (|2 * 255 * 64| < 2^15), which
                     the lowering guarantees
    dot4_u8s8        any width and scalars: bytes widened to i32, multiplied, summed (exact)
    dot4_s8s8*       the same after a xor 0x80808080 (int8 bytes of a shifted to uint8),
                     done by exprs.py on the scalar word before it is broadcast (see
                     shift_to_u8)
    dot4_i8i8        both operands' bytes signed, no shift (what CUDA's __dp4a computes)

The first two fall back to the generic form when the vector width does not fit them (the
scalar remainder of a vectorized loop, say).
"""
from __future__ import annotations

import llvmlite.ir as ir

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _declare(module: ir.Module, name: str, ret: ir.Type, args: list) -> ir.Function:
    g = module.globals.get(name)
    if g is None:
        g = ir.Function(module, ir.FunctionType(ret, args), name=name)
    return g


def shift_to_u8(b: ir.IRBuilder, fn: str, a: ir.Value) -> tuple[str, ir.Value]:
    """(the dot4_u8s8* function, a) for fn; for dot4_s8s8* a's int8 bytes are shifted to uint8
    first (x + 128 = x xor 0x80 per byte, one xor of the i32 word or vector).

    Callers shift a word before they broadcast it: xor(splat(word)) lets InstCombine rewrite it
    as a <64 x i8> xor feeding a byte shuffle, on which LLVM 22's x86 instruction selection
    never finishes (a one-instruction function hangs; 256-bit vectors do not); the scalar xor
    then broadcast compiles in milliseconds and costs one integer op per loaded word."""
    if not fn.startswith("dot4_s8s8"):
        return fn, a
    flip = ir.Constant(I32, 0x80808080 - 2**32)
    if isinstance(a.type, ir.VectorType):
        flip = ir.Constant(a.type, [flip.constant] * a.type.count)
    return fn.replace("dot4_s8s8", "dot4_u8s8"), b.xor(a, flip)


def emit_dot4(b: ir.IRBuilder, fn: str, acc: ir.Value, a: ir.Value, w: ir.Value) -> ir.Value:
    """acc + dot4(a, w) for i32 scalars or <n x i32> vectors (all three of one type)."""
    module = b.module
    lanes = acc.type.count if isinstance(acc.type, ir.VectorType) else 1
    fn, a = shift_to_u8(b, fn, a)
    if fn == "dot4_u8s8_vnni" and lanes in (8, 16):
        vt = ir.VectorType(I32, lanes)
        f = _declare(module, f"llvm.x86.avx512.vpdpbusd.{lanes * 32}", vt, [vt] * 3)
        return b.call(f, [acc, a, w])
    if fn == "dot4_u8s8_avx2" and lanes == 8:
        v8 = ir.VectorType(I8, 32)
        v16 = ir.VectorType(I16, 16)
        maddubs = _declare(module, "llvm.x86.avx2.pmadd.ub.sw", v16, [v8, v8])
        maddwd = _declare(module, "llvm.x86.avx2.pmadd.wd", ir.VectorType(I32, 8), [v16, v16])
        pairs = b.call(maddubs, [b.bitcast(a, v8), b.bitcast(w, v8)])
        quads = b.call(maddwd, [pairs, ir.Constant(v16, [1] * 16)])
        return b.add(acc, quads)
    return _generic(b, lanes, acc, a, w, fn == "dot4_i8i8")


def _generic(b: ir.IRBuilder, lanes: int, acc: ir.Value, a: ir.Value, w: ir.Value,
             signed_a: bool) -> ir.Value:
    n = 4 * lanes
    bytes_t, wide = ir.VectorType(I8, n), ir.VectorType(I32, n)
    widen_a = b.sext if signed_a else b.zext
    prod = b.mul(widen_a(b.bitcast(a, bytes_t), wide), b.sext(b.bitcast(w, bytes_t), wide))
    total = acc
    for k in range(4):
        if lanes == 1:
            part = b.extract_element(prod, ir.Constant(I32, k))
        else:
            mask = ir.Constant(ir.VectorType(I32, lanes), [4 * j + k for j in range(lanes)])
            part = b.shuffle_vector(prod, ir.Constant(wide, ir.Undefined), mask)
        total = b.add(total, part)
    return total
