"""How a dense NCHWc conv is tiled and scheduled (the kernel itself: conv_nchwc.py).

``DenseTiling`` holds a conv's choices (``dense_tiling``): the register tile (``pick_tile``, a
small cost model), the weights packed for that tile (``pack_dense``), the loop order of the
tasks and how threads share them, and the prefetch plan.

Every size comes from the Target (ir/target.py): the vector registers bound the register tile,
the target's L1 decides when a tile's weights stream from L2, its L2 when a conv runs
pixel-major. Loop order: with several threads, pixel-major (output rows outermost, every
channel group per pixel tile) when the packed weights fit in half an L2, so each core keeps all
of them while it works on rows its core wrote; group-major otherwise (each core its own groups
of output channels), and always with one thread.

Weights come from L3 / DRAM the first time a run reads them: a group-major conv with few pixel
tiles per group prefetches the next group's weights into L2 while a group runs
(``prefetch_plan``; Prefetch statements of ir/loop.py over a flat view of the packed weights).
Measured and left out: also prefetching, from each conv, the first 0.5-2 MiB of the next conv's
weights (a burst per tile) gained nothing on ResNet-18/50 at 2 threads (-1% to +1%), and
prefetches inside the FMA loop for it cost 20%.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncc.ir import Node

from .context import LowerCtx, op_context

# Input channels of a block unrolled per iteration of the reduction's innermost loop.
CI_UNROLL = 4
# Cycles per weight vector a tile streams from L2 (its weights above L1), in the cost model.
L2_STEP_CYCLES = 3.0
LINE_BYTES = 64
# Groups of at most this many pixel tiles prefetch the next group's weights into L2. Measured
# (ResNet-18/50, 1 thread, weights from L3): 4 to 56 tiles a group gain 5-30%; from ~100 tiles
# the first tile's stall is amortized and the prefetches cost more than they save.
PREFETCH_MAX_TILES = 64
# With several threads, convs whose packed weights fit in this share of an L2 run pixel-major.
# Measured with a 2 MiB L2 (interleaved A/B of whole nets, both compile orders): ResNet-18 at
# 2 threads 0.2-3.5% faster, ResNet-50 / MobileNetV2 / SqueezeNet within noise (+-2%); at 1
# thread group-major was faster (ResNet-50 by 4%).
PIXEL_MAJOR_L2_SHARE = 0.5


def vector_regs(ctx: LowerCtx) -> int:
    """Vector registers of the target (32 zmm with AVX-512, 16 ymm with AVX2)."""
    return ctx.target.vector_registers


def _splits(size: int, step: int) -> list[tuple[int, int]]:
    """(count, extent) of the full tiles and the tail tile of ``size`` in steps of ``step``."""
    full, rest = divmod(size, step)
    return [(k, e) for k, e in ((full, step), (1 if rest else 0, rest)) if k]


def _tile_cost(ocb: int, oh: int, ow: int, vb: int, th: int, tw: int, k_step: float) -> float:
    """Estimated cycles of the whole conv per reduction step (input channel x tap) with tiles
    of vb blocks x th rows x tw columns (and the tails): per tile, the larger of the FMAs (2 a
    cycle), the loads (vb + pixels, 2 a cycle), the FMA latency (4 cycles per accumulator
    chain) and the L2 traffic of the weights (vb vectors: k_step cycles each), + 1 overhead."""
    total = 0.0
    for gn, gv in _splits(ocb, vb):
        for rn, rv in _splits(oh, th):
            for cn, cv in _splits(ow, tw):
                r = rv * cv
                cyc = max(r * gv / 2, (r + gv) / 2, 4.0, gv * k_step) + 1.0
                total += gn * rn * cn * cyc
    return total


def pick_tile(ocb: int, oh: int, ow: int, regs: int, block_bytes: int, taps: int,
              l1_bytes: int) -> tuple[int, int, int]:
    """(VB output-channel blocks, TH rows, TW columns) of the register tile minimizing
    ``_tile_cost`` within ``regs`` vector registers (of one block each): VB weights, two
    broadcasts and the accumulators; with VB >= 3 or a 1x1 conv, 8 registers are left out of
    the accumulators (measured: fuller tiles spilled or ran slower). ``block_bytes``: the
    packed weights of one output block; above ``l1_bytes`` (the target's L1) a tile streams
    them from L2."""
    best = None
    for vb in range(min(4, ocb), 0, -1):
        k_step = L2_STEP_CYCLES if vb * block_bytes > l1_bytes else 1.0
        limit = max(1, regs - 8 if vb >= 3 or taps == 1 else regs - vb - 2)
        for th in range(1, min(4, oh) + 1):
            for tw in range(1, min(ow, limit) + 1):
                if vb * th * tw > limit:
                    break
                cost = _tile_cost(ocb, oh, ow, vb, th, tw, k_step)
                if best is None or cost < best[0] * 0.99:     # ties: the larger VB
                    best = (cost, vb, th, tw)
    assert best is not None
    return best[1:]


def pack_dense(wv: np.ndarray, c: int, cin: int, vb: int) -> list[np.ndarray]:
    """W [OC, IC, KH, KW] -> full groups [G, ICb, KH, KW, cin, vb * c] (+ the tail group of
    the remaining blocks as [1, ICb, KH, KW, cin, vbt * c]); zero-padded channels."""
    oc, ic, kh, kw = wv.shape
    ocb, icb = -(-oc // c), -(-ic // cin)
    w = np.zeros((ocb * c, icb * cin, kh, kw), np.float32)
    w[:oc, :ic] = wv
    w = w.reshape(ocb, c, icb, cin, kh, kw).transpose(0, 2, 4, 5, 3, 1)   # ocb icb kh kw ci co
    full = ocb // vb
    out = [w[:full * vb].reshape(full, vb, icb, kh, kw, cin, c).transpose(0, 2, 3, 4, 5, 1, 6)
           .reshape(full, icb, kh, kw, cin, vb * c)]
    if ocb % vb:
        t = ocb % vb
        out.append(w[full * vb:].transpose(1, 2, 3, 4, 0, 5).reshape(1, icb, kh, kw, cin, t * c))
    return [np.ascontiguousarray(a) for a in out]


def prefetch_plan(groups: int, tiles: int, step_bytes: int) -> tuple[int, int] | None:
    """(P lines prefetched per reduction step, U tiles prefetching) spreading the next group's
    weights over the tiles of a group: a tile's reduction step reads L = ``step_bytes`` / 64
    lines of its group's weights, so U = L / P tiles prefetching P lines a step cover the next
    group's; P is the smallest divisor of L with U <= ``tiles``. None when it does not pay (one
    group, or many tiles a group)."""
    lines, rest = divmod(step_bytes, LINE_BYTES)
    if groups < 2 or tiles > PREFETCH_MAX_TILES or rest or not lines:
        return None
    per = next(d for d in range(1, lines + 1) if lines % d == 0 and d * tiles >= lines)
    return per, lines // per


@dataclass
class DenseTiling:
    """The tiling of one dense ConvNCHWc: TH x TW pixels x VB blocks per tile, over an OH x OW
    output (1 x OH * OW when ``flat``: a stride-1 unpadded 1x1 conv over flattened pixels)."""
    stem: bool
    flat: bool
    c: int
    cin: int                    # channels of an input block (1 for the stem's NCHW input)
    nb: int
    ocb: int
    icb: int
    oh: int
    ow: int
    taps: int
    vb: int
    th: int
    tw: int
    packs: list                 # full groups [G, ICb, KH, KW, cin, VB * c] (+ the tail group)
    wbufs: list                 # their constant buffers
    threads: int
    work: int
    pixel_major_max_bytes: int  # packed weights up to this run pixel-major with threads > 1

    @property
    def split(self) -> bool:
        return self.cin > CI_UNROLL and self.cin % CI_UNROLL == 0

    @property
    def steps(self) -> int:
        """Reduction steps of a tile (input block x tap x [group of CI_UNROLL channels])."""
        return self.icb * self.taps * (self.cin // CI_UNROLL if self.split else 1)

    @property
    def groups(self) -> int:
        return self.ocb // self.vb

    @property
    def pixel_major(self) -> bool:
        return self.threads > 1 and sum(p.nbytes for p in self.packs) <= self.pixel_major_max_bytes

    def extents(self) -> dict[str, int]:
        """The task loops, outer first, and their extents."""
        nth, ntw = -(-self.oh // self.th), -(-self.ow // self.tw)
        ng = self.groups + (len(self.packs) > 1)
        if self.pixel_major:
            return {"n": self.nb, "ot": nth, "t": ntw, "og": ng}
        return {"n": self.nb, "og": ng, "ot": nth, "t": ntw}

    def group_plan(self) -> tuple[int, int] | None:
        """The next-group prefetch plan (group-major only)."""
        if self.pixel_major:
            return None
        return prefetch_plan(self.groups, -(-self.oh // self.th) * -(-self.ow // self.tw),
                             self.packs[0][0].nbytes // self.steps)


def dense_tiling(ctx: LowerCtx, node: Node, wv: np.ndarray, win) -> DenseTiling:
    """The tiling of dense ConvNCHWc ``node`` with weights ``wv`` [OC, IC, KH, KW] and window
    ``win`` (resolve_window); its packed weights become constants of ``ctx``."""
    g = ctx.graph
    octx = op_context(g, node)
    c, stem = octx["block"], octx["in_layout"] == "NCHW"
    xs, ys = g.types[node.inputs[0]].shape, g.types[node.outputs[0]].shape
    nb, ocb, oh, ow = ys[:4]
    kh, kw = wv.shape[2:]
    residual = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
    halos = any(v in ctx.halo for v in (node.inputs[0], node.outputs[0], residual))
    flat = kh == kw == 1 and tuple(win.strides) == (1, 1) and not any(win.pads) and not halos
    if flat:
        oh, ow = 1, oh * ow
    cin = 1 if stem else c
    icb = xs[1]
    target = ctx.target
    vb, th, tw = pick_tile(ocb, oh, ow, vector_regs(ctx) * ctx.lanes // c,
                           icb * cin * kh * kw * c * 4, kh * kw, target.l1d_bytes)
    packs = pack_dense(wv, c, cin, vb)
    wbufs = [ctx.const(p, f"w{i}") for i, p in enumerate(packs)]
    work = nb * ocb * oh * ow * c * icb * cin * kh * kw
    return DenseTiling(stem, flat, c, cin, nb, ocb, icb, oh, ow, kh * kw, vb, th, tw, packs,
                       wbufs, ctx.threads, work, int(target.l2_bytes * PIXEL_MAJOR_L2_SHARE))
