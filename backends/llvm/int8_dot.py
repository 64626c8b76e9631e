"""The byte dot products of the loop IR (``dot4_*``, ``dot2_*``: ir/loop.py) as LLVM IR: per
int32 lane, acc + sum of 4 uint8 x int8 byte products (dot4), or of 2 uint8 x int16 (dot2).

    dot4_u8s8_vnni   <16 x i32> / <8 x i32>: llvm.x86.avx512.vpdpbusd.512 / .256 (AVX-512
                     VNNI; AVX-VNNI selects the VEX form of the 256-bit one)
    dot4_u8s8_avx2   <8 x i32>: vpmaddubsw (u8 x s8 pairs summed to int16, saturating) then
                     vpmaddwd by ones (pairs of int16 summed to int32), added to acc; exact
                     when every int8 operand lies in [-64, 64] (|2 * 255 * 64| < 2^15), which
                     the lowering guarantees
    dot4_u8s8        any width and scalars: bytes widened to i32, multiplied, summed (exact)
    dot4_s8s8*       the same after a xor 0x80808080 (int8 bytes of a shifted to uint8),
                     done by exprs.py on the scalar word before it is broadcast (see
                     word_operand)
    dot4_i8i8        both operands' bytes signed, no shift (what CUDA's __dp4a computes)
    dot2_u8s16_*     <8 x i32> / <16 x i32>: vpmaddwd (AVX2 / AVX-512BW) of a's even or odd
                     bytes widened to int16 with b's int16 pairs (exact); the widening is one
                     vpand or vpsrlw of the broadcast word, as int16 lanes (on the scalar word
                     LLVM would do it before the broadcast: 4 more vector instructions a word,
                     measured 0.67 of the kernel's speed)
    dot2_i16i16      the same vpmaddwd on a word of two int16 (inputs copied widened)
    dot2_pair        two vectors of 8-bit values (two taps of a depthwise conv, a lane per
                     channel) interleaved byte by byte (vpunpcklbw), widened to int16 lanes
                     (vpmovzxbw / vpmovsxbw) and vpmaddwd with b's int16 pairs: one multiply
                     for two taps instead of two vpmulld on widened bytes

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


def word_operand(b: ir.IRBuilder, fn: str, a: ir.Value) -> tuple[str, ir.Value]:
    """(the function, a) for fn: for dot4_s8s8* a's int8 bytes are shifted to uint8 (x + 128
    = x xor 0x80 per byte, one xor of the i32 word or vector; the dot4_u8s8* function).
    Calling it again on its result changes nothing.

    Callers shift a word before they broadcast it: xor(splat(word)) lets InstCombine rewrite it
    as a <64 x i8> xor feeding a byte shuffle, on which LLVM 22's x86 instruction selection
    never finishes (a one-instruction function hangs; 256-bit vectors do not); the scalar xor
    then broadcast compiles in milliseconds and costs one integer op per loaded word."""
    def const(v: int) -> ir.Constant:
        c = ir.Constant(I32, v - (2**32 if v >= 2**31 else 0))
        return ir.Constant(a.type, [c.constant] * a.type.count) \
            if isinstance(a.type, ir.VectorType) else c
    if fn.startswith("dot4_s8s8"):
        fn = fn.replace("dot4_s8s8", "dot4_u8s8")
        a = b.xor(a, const(0x80808080))
    return fn, a


def emit_byte_dot(b: ir.IRBuilder, fn: str, acc: ir.Value, a: ir.Value,
                  w: ir.Value) -> ir.Value:
    """acc + the byte dot fn(a, w) for i32 scalars or <n x i32> vectors (all three of one
    type)."""
    module = b.module
    lanes = acc.type.count if isinstance(acc.type, ir.VectorType) else 1
    fn, a = word_operand(b, fn, a)
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
    if fn.startswith("dot2_"):
        return _int16_pairs(b, lanes, acc, a, w, fn[fn.rfind("_") + 1:])
    return _generic(b, lanes, acc, a, w, fn == "dot4_i8i8")


def _int16_pairs(b: ir.IRBuilder, lanes: int, acc: ir.Value, a: ir.Value, w: ir.Value,
                 half: str) -> ir.Value:
    """acc + a's int16 halves times w's: for ``half`` "even" / "odd" a's bytes 0, 2 / 1, 3
    widened as int16 lanes first (and 0xFF, or lshr 8; "i16i16": a's halves as they are), then
    vpmaddwd on 8 and 16 lanes, else products widened to int32 and summed in pairs."""
    halves = ir.VectorType(I16, 2 * lanes)
    a16 = b.bitcast(a, halves)
    if half == "odd":
        a16 = b.lshr(a16, ir.Constant(halves, [8] * 2 * lanes))
    elif half == "even":
        a16 = b.and_(a16, ir.Constant(halves, [0xFF] * 2 * lanes))
    return _madd_pairs(b, lanes, acc, a16, w)


def _madd_pairs(b: ir.IRBuilder, lanes: int, acc: ir.Value, a16: ir.Value,
                w: ir.Value) -> ir.Value:
    """acc + the sums of a16's int16 pairs times w's (vpmaddwd on 8 and 16 lanes, else
    products widened to int32 and summed in pairs)."""
    halves = a16.type
    if lanes in (8, 16):
        name = "llvm.x86.avx2.pmadd.wd" if lanes == 8 else "llvm.x86.avx512.pmaddw.d.512"
        maddwd = _declare(b.module, name, acc.type, [halves, halves])
        return b.add(acc, b.call(maddwd, [a16, b.bitcast(w, halves)]))
    wide = ir.VectorType(I32, 2 * lanes)
    prod = b.mul(b.sext(a16, wide), b.sext(b.bitcast(w, halves), wide))
    return _pair_sums(b, lanes, acc, prod, 2)


def emit_pair_dot(b: ir.IRBuilder, acc: ir.Value, a0: ir.Value, a1: ir.Value, w: ir.Value,
                  signed: list[bool]) -> ir.Value:
    """acc + a0 * int16(w_lo) + a1 * int16(w_hi) per int32 lane (a0, a1: i8 scalars or
    vectors, widened as ``signed`` says)."""
    if not isinstance(acc.type, ir.VectorType):
        total = acc
        for v, half, sig in ((a0, 0, signed[0]), (a1, 16, signed[1])):
            wv = b.ashr(b.shl(w, ir.Constant(I32, 16 - half)), ir.Constant(I32, 16))
            total = b.add(total, b.mul(b.sext(v, I32) if sig else b.zext(v, I32), wv))
        return total
    lanes = acc.type.count
    halves = ir.VectorType(I16, 2 * lanes)
    interleave = ir.Constant(ir.VectorType(I32, 2 * lanes),
                             [k // 2 + (k % 2) * lanes for k in range(2 * lanes)])
    if signed[0] == signed[1]:
        both = b.shuffle_vector(a0, a1, interleave)
        a16 = b.sext(both, halves) if signed[0] else b.zext(both, halves)
    else:       # one widening per operand, then the same interleave as int16
        w0, w1 = ((b.sext if sig else b.zext)(v, ir.VectorType(I16, lanes))
                  for v, sig in zip((a0, a1), signed))
        a16 = b.shuffle_vector(w0, w1, interleave)
    return _madd_pairs(b, lanes, acc, a16, w)


def _generic(b: ir.IRBuilder, lanes: int, acc: ir.Value, a: ir.Value, w: ir.Value,
             signed_a: bool) -> ir.Value:
    n = 4 * lanes
    bytes_t, wide = ir.VectorType(I8, n), ir.VectorType(I32, n)
    widen_a = b.sext if signed_a else b.zext
    prod = b.mul(widen_a(b.bitcast(a, bytes_t), wide), b.sext(b.bitcast(w, bytes_t), wide))
    return _pair_sums(b, lanes, acc, prod, 4)


def _pair_sums(b: ir.IRBuilder, lanes: int, acc: ir.Value, prod: ir.Value, k: int) -> ir.Value:
    """acc + the sums of each k consecutive elements of prod (lanes * k int32s)."""
    total = acc
    for i in range(k):
        if lanes == 1:
            part = b.extract_element(prod, ir.Constant(I32, i))
        else:
            mask = ir.Constant(ir.VectorType(I32, lanes), [k * j + i for j in range(lanes)])
            part = b.shuffle_vector(prod, ir.Constant(prod.type, ir.Undefined), mask)
        total = b.add(total, part)
    return total
