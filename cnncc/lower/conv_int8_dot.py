"""The u8 x s8 dot-product packing of the int8 convs (cnncc/lower/conv_int8.py): 4 input
channels per int32 word, so one ``dot4_u8s8*`` call (vpdpbusd with VNNI, vpmaddubsw + vpmaddwd
on AVX2) does 4 multiply-adds per output-channel lane.

Input: x (int8 inputs shifted by +128 to uint8, the zero point with them) copied once into a
padded scratch buffer [N, G * C4, H + pads, W + pads, 4] of bytes (C4 = ceil(C/G / 4); pads and
missing channels hold the zero point). Weights w' = w - w_zero_point must fit int8; they are
packed [O, C4, k...] as words of 4 bytes (missing channels 0). Since sum (x - zx) w' =
sum x w' - zx sum w', the bias absorbs zx * sum w' at compile time.
Without VNNI there are two exact paths; dot_plan picks the one of fewer cycles (dot_cycles):
- split (AVX2): vpmaddubsw sums two u8 x s8 products into int16 with saturation; a pair of
  weights with |w0| + |w1| > 128 could saturate, so such pairs are split exactly as w' = lo +
  hi with lo = clip(w', -64, 64) and hi = w' - lo (pair_split) and a word with a non-zero high
  part gets two dot calls; the convs run those taps first, then the rest with one call (7-bit
  weights, e.g. models quantized with --reduce-range, never need the second). A word and
  output vector: vpmaddubsw, vpmaddwd (both multiply), vpaddd; twice for a split one.
- int16 pairs (AVX2, AVX-512BW): the weights packed as int16 pairs (int16_words); a blocked
  input copied widened to int16 (blocked_words: channels 4q, 4q+1 in one word, 4q+2, 4q+3 in
  the next; a plain vpmovzxbw copy), an NCHW-packed one widened in registers (channels 4q,
  4q+2 and 4q+1, 4q+3: a vpand and a vpsrlw a pixel, for all its output vectors); two
  vpmaddwd + two vpaddd a word and output vector, whatever the weights.
The instruction path comes from the Target (its VNNI level, lanes and pipes), never from the
host.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir import DType, Node
from cnncc.ir.loop import (And, Buffer, Call, Cast, Cmp, Const, Expr, For, If, Kernel, Select,
                           Store, Var, seq)

from cnncc.ir.ops.quant_blocked import compensation, dot4_fits, shifted_zero_point

from .context import LowerCtx
from .cpu_schedule import parallel_outer
from .layout_nchwc import padded_blocked

I32, U8 = DType.int32, DType.uint8
AVX2_SAFE = 64          # |w| <= 64: 2 * 255 * 64 < 2^15, vpmaddubsw cannot saturate
AVX2_PAIR = 128         # |w0| + |w1| <= 128: 255 * 128 < 2^15, neither can the pair's sum
MULTIPLY_PIPES = 2      # vector pipes that multiply integers (Intel since Skylake, AMD Zen)


def dot_plan(ctx: LowerCtx, wz: np.ndarray, icg: int, ocg: int, bias: np.ndarray,
             zx: int, copied: bool = False) -> str | None:
    """The byte dot for this conv on ctx's Target (a dot4 function, or "dot2_u8s16" for the
    int16 pair calls), or None for the plain int32 path (GPU, or weights the dot products
    cannot take: ir/ops/quant_blocked.dot4_fits). ``copied``: int16 pairs would read the
    input copied widened (blocked inputs: blocked_words)."""
    t = ctx.target
    if ctx.gpu or t is None or not dot4_fits(wz, icg, ocg, bias, zx):
        return None
    if t.vnni and ctx.lanes in (8, 16):
        return "dot4_u8s8_vnni"
    if "avx2" in t.flags and ctx.lanes == 8:
        vectors = tile_vectors(ocg, ctx.lanes) // ctx.lanes
        split = dot_cycles("dot4_u8s8_avx2", vectors, t.vector_pipes,
                           split_share(wz, ctx.lanes))
        pairs = dot_cycles("dot2_i16i16" if copied else "dot2_u8s16", vectors, t.vector_pipes)
        return "dot2_u8s16" if pairs < split else "dot4_u8s8_avx2"
    if "avx512bw" in t.flags and ctx.lanes == 16:
        return "dot2_u8s16"
    return "dot4_u8s8"


def tile_vectors(channels: int, lanes: int) -> int:
    """Output channels of an int8 register tile (conv and gemm): two vectors when there are
    that many channels, else one."""
    return 2 * lanes if channels >= 2 * lanes else lanes


def dot_cycles(fn: str, vectors: int, pipes: int, split: float = 0.0) -> float:
    """Cycles a word of input and output vector takes on a core with ``pipes`` vector pipes
    (MULTIPLY_PIPES of them multiply), the larger of the multiply and the all-pipe bound,
    counting what a pixel's word costs once for the tile's ``vectors`` output vectors (its
    broadcasts, and widening in registers); ``split`` is the share of words the AVX2 split
    path runs twice (split_share). On 4 pipes the int16 pairs on a widened copy cost 1.25
    split-free words (crossover at a split share of 0.25), 1.67 on 3. Measured on Zen 5 as
    AVX2 code, 8-bit weights per channel (shares 0.2-0.95), fp32/int8: ResNet-50 split 1.26x,
    int16 pairs 1.73x; per tensor (shares 0-0.2) split 2.00x, pairs 1.74x; 7-bit 2.08x."""
    if fn == "dot2_i16i16":
        multiply, total = 2.0, 4.0 + 2.0 / vectors
    elif fn.startswith("dot2_"):        # one broadcast, widened by two instructions
        multiply, total = 2.0, 4.0 + 3.0 / vectors
    else:
        multiply, total = 2.0 * (1 + split), 3.0 * (1 + split) + 1.0 / vectors
    return max(multiply / MULTIPLY_PIPES, total / pipes)


def words(w: np.ndarray) -> np.ndarray:
    """[O, C, k...] int8 values -> [O, ceil(C/4), k...] int32 words of 4 channels."""
    o, c = w.shape[:2]
    c4 = -(-c // 4)
    padded = np.zeros((o, c4 * 4) + w.shape[2:], np.int8)
    padded[:, :c] = w
    moved = np.moveaxis(padded.reshape((o, c4, 4) + w.shape[2:]), 2, -1)
    return np.ascontiguousarray(moved).view(np.int32).reshape((o, c4) + w.shape[2:])


def int16_words(w: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """[O, C, k...] int8 values -> [O, ceil(C/4), k...] int32 words holding channels 4q + lo
    (low half) and 4q + hi (high half) as int16: (0, 2) / (1, 3) are what dot2_*_even / _odd
    multiply with the input word's bytes 0, 2 / 1, 3; (0, 1) / (2, 3) what dot2_i16i16 multiplies
    with the two words of an input copied widened (4 channels as 4 consecutive int16)."""
    o, c = w.shape[:2]
    c4 = -(-c // 4)
    padded = np.zeros((o, c4 * 4) + w.shape[2:], np.int16)
    padded[:, :c] = w
    pairs = np.moveaxis(padded.reshape((o, c4, 4) + w.shape[2:]), 2, -1)[..., [lo, hi]]
    return np.ascontiguousarray(pairs).view(np.int32).reshape((o, c4) + w.shape[2:])


def pair_split(wz: np.ndarray) -> list[np.ndarray]:
    """[w'] when every pair of weights that vpmaddubsw sums (channels 4q + 2i, 4q + 2i + 1 of
    one output channel and tap) has |w0| + |w1| <= 128 (then 255 * 128 < 2^15: no saturation),
    else [lo, hi] with w' = lo + hi exactly: lo = w' on such pairs and clip(w', -64, 64) on the
    others, hi = w' - lo (0 on the safe pairs), both within the bound."""
    o, c = wz.shape[:2]
    c4 = -(-c // 4)
    w = np.zeros((o, c4 * 4) + wz.shape[2:], np.int32)
    w[:, :c] = wz
    a = np.abs(w).reshape((o, c4, 2, 2) + wz.shape[2:])
    safe = np.repeat(a.sum(axis=3) <= AVX2_PAIR, 2, axis=2).reshape(w.shape)
    if safe.all():
        return [wz]
    lo = np.where(safe, w, np.clip(w, -AVX2_SAFE, AVX2_SAFE))
    return [lo[:, :c], (w - lo)[:, :c]]


def split_share(wz: np.ndarray, lanes: int) -> float:
    """The share of (output vector of ``lanes`` channels, word, tap) whose pair_split high
    part is non-zero in some lane: the words that take a second vpmaddubsw call."""
    parts = pair_split(wz)
    if len(parts) == 1:
        return 0.0
    hi = words(parts[1].astype(np.int8))
    o = hi.shape[0]
    padded = np.zeros((-(-o // lanes) * lanes,) + hi.shape[1:], np.int32)
    padded[:o] = hi
    return float((padded.reshape(-1, lanes, int(np.prod(hi.shape[1:]))) != 0).any(axis=1).mean())


def input_words(fn: str) -> int:
    """int32 words of input per 4 channels: 2 for inputs copied as int16 pairs, else 1."""
    return 2 if fn == "dot2_i16i16" else 1


def dot_parts(wz: np.ndarray, fn: str) -> list[tuple[str, np.ndarray, int]]:
    """The dot calls 4 channels of the input take, each with its weight words [O, C4, k...]
    and the input word it reads (of input_words): one call, two on AVX2 when pair_split
    splits (a word whose high part is zero across a kernel's output vector needs only the
    first: cnncc/lower/conv_int8.py orders its taps), or the even and odd int16 pair calls (on
    one byte word, or on the two words of an int16 copy)."""
    if fn == "dot2_i16i16":
        return [(fn, int16_words(wz, 2 * j, 2 * j + 1), j) for j in range(2)]
    if fn.startswith("dot2_"):
        return [(f"{fn}_{half}", int16_words(wz, j, j + 2), 0)
                for j, half in enumerate(("even", "odd"))]
    parts = pair_split(wz) if fn.endswith("_avx2") else [wz]
    return [(fn, words(p.astype(np.int8)), 0) for p in parts]


def byte_dot_update(calls: list[tuple[str, int]]):
    """acc + the dot calls (function, input word) of 4 input channels with their weight
    vectors (as many of them as the weights given: the first ones); ``word(i)`` is input word
    i of those channels."""
    def update(acc: Expr, word, ws: list) -> Expr:
        for (fn, i), w in zip(calls, ws):
            acc = Call(fn, (acc, word(i), w), I32)
        return acc
    return update


def int32_update(acc: Expr, word, ws: list) -> Expr:
    """acc + the input value times the weight: the plain int32 path's update (no byte dots),
    in byte_dot_update's form."""
    return acc + word(0) * ws[0]


def dot_registers(fn: str, vectors: int) -> tuple[int, int]:
    """(vector registers a row of a register tile holds, registers beside the rows) for a tile
    of ``vectors`` accumulator vectors a row: the row's input word, the weight vectors, AVX2's
    vector of ones and int16 pair sums; for the int16 pairs the weights' even and odd vectors,
    one pixel's two widened halves and a product."""
    if fn.startswith("dot2_"):      # the word's two halves made pixel by pixel
        return vectors, 2 * vectors + 3
    return vectors + 1, vectors + (2 if fn.endswith("_avx2") else 0)


def dot_weights(wz: np.ndarray, zx: int, fn: str):
    """(weight word arrays, per-channel compensation zx * sum w', the accumulator update)."""
    parts = dot_parts(wz, fn)
    return [w for _, w, _ in parts], compensation(wz, zx), \
        byte_dot_update([(f, i) for f, _, i in parts])


def pack_dot(ctx: LowerCtx, node: Node, x: str, x_zp: int, win, groups: int) -> tuple:
    """(int32 word view of the packed NCHW input [N, G*C4, Hp, Wp], C4)."""
    g = ctx.graph
    shape = g.types[x].shape
    zx = shifted_zero_point(g.types[x].dtype, x_zp)
    icg = shape[1] // groups
    c4 = -(-icg // 4)
    pshape = tuple(s + win.begin(d) + win.end(d) for d, s in enumerate(shape[2:]))
    xb = ctx.temp(U8, (shape[0], groups * c4) + pshape + (4,), "xb")
    xin = ctx.value(x, bname="x")
    pack_input(ctx, node, xb, xin, win, groups, c4, zx - x_zp, zx)
    view = Buffer("x", I32, (shape[0], groups * c4) + pshape)
    ctx.binding[id(view)] = ctx.binding[id(xb)]
    return view, c4


def blocked_words(ctx: LowerCtx, node: Node, x: str, x_zp: int, win, fn: str) -> tuple:
    """(the blocked 8-bit input [N, CB, H, W, c] as int32 words [N, CB, Hp, Wp, c / 4] (4
    channels of a pixel per word), the dot function reading them): where the window pads, a
    contiguous row copy padded with the zero point, int8 bytes shifted to uint8 there; else
    read in place, int8 words shifted in registers (the dot4_s8s8 form of ``fn``). For the int16
    pairs always a copy as int16 pairs, c / 2 words a pixel, read by dot2_i16i16: the loop
    then widens nothing (in place, each output block widened every word again: 2 vector
    instructions a word and block against about one in the copy; measured 1.5-2% faster on
    MobileNetV2 / ResNet-50 even where the window does not pad)."""
    xb = ctx.value(x, bname="x")
    signed = xb.dtype is DType.int8
    pads = (win.begin(0), win.begin(1)), (win.end(0), win.end(1))
    pairs = fn.startswith("dot2_")
    xp = padded_blocked(ctx, node.name, xb, *pads, fill=shifted_zero_point(xb.dtype, x_zp),
                        to_uint8=signed, int16_pairs=pairs)
    if pairs:
        fn = "dot2_i16i16"
    if signed and xp is xb:
        fn = fn.replace("dot4_u8s8", "dot4_s8s8")
    view = Buffer("xw", I32, xp.shape[:-1] + (xp.shape[-1] * xp.dtype.itemsize // 4,))
    ctx.binding[id(view)] = ctx.binding[id(xp)]
    return view, fn


def pack_input(ctx: LowerCtx, node: Node, xb: Buffer, xin: Buffer, win, groups: int, c4: int,
               shift: int, zx: int) -> None:
    """xb[n, g*C4 + q, pad..., j] = x[n, g*Cg + 4q + j, ...] + shift, zx in pads and missing
    channels: pad rows and columns filled apart, interior rows copied without a branch
    (a missing channel reads the last real one and selects zx), contiguous along W."""
    shape = xin.shape
    nd = len(shape) - 2
    icg = shape[1] // groups
    pshape = xb.shape[2:-1]
    n, gq, j = Var("n"), Var("gq"), Var("j")
    rows = [Var(f"r{d}") for d in range(nd - 1)]
    w, fl, fr, fa = Var("w"), Var("fl"), Var("fr"), Var("fa")
    zv = Const(zx, U8)
    bl, width = win.begin(nd - 1), shape[-1]

    def at(col: Expr) -> tuple:
        return (n, gq) + tuple(rows) + (col, j)
    cin = (gq % c4) * 4 + j
    src = (n, (gq // c4) * icg + cin.min(icg - 1)) + tuple(
        r - win.begin(d) for d, r in enumerate(rows)) + (w,)
    val = Cast(U8, Cast(I32, xin[src]) + Const(shift, I32))
    copy = Store(xb, at(w + bl), Select(Cmp("lt", cin, Const(icg)), val, zv))
    interior = seq(For(fl, bl, For(j, 4, Store(xb, at(fl), zv), "unrolled")),
                   For(w, width, For(j, 4, copy, "unrolled")),
                   For(fr, pshape[-1] - bl - width,
                       For(j, 4, Store(xb, at(fr + (bl + width)), zv), "unrolled")))
    inside = None
    for d, r in enumerate(rows):
        ok = And(Cmp("ge", r, Const(win.begin(d))), Cmp("lt", r, Const(win.begin(d) + shape[2 + d])))
        inside = ok if inside is None else And(inside, ok)
    body = interior if inside is None else If(
        inside, interior, For(fa, pshape[-1], For(j, 4, Store(xb, at(fa), zv), "unrolled")))
    for d in reversed(range(nd - 1)):
        body = For(rows[d], pshape[d], body)
    k = Kernel(f"{node.name}_pack", [xb, xin], For(n, shape[0], For(gq, groups * c4, body)))
    ctx.emit(parallel_outer(k, ["n", "gq"], ctx, int(np.prod(xb.shape))))
