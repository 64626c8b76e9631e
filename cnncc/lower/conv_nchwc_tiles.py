"""How a dense NCHWc conv is tiled and scheduled (the kernel itself: conv_nchwc.py).

``DenseTiling`` holds a conv's choices (``dense_tiling``): the register tile (``pick_tile``, a
small cost model: TH rows x TW columns, or where rows are short a run of TW pixels of the
flattened output, RUN_PIXELS), the weights packed for that tile (``pack_dense``), the loop
order of the tasks and how threads share them, and the prefetch plan.

Every size comes from the Target (ir/target.py): the vector registers bound the register tile,
the target's L1 decides when a tile's weights stream from L2, its L2 when a conv runs
pixel-major. Loop order: with several threads, pixel-major (output rows outermost, every
channel group per pixel tile) when the packed weights fit in the L2, so each core keeps all
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

import functools
from dataclasses import dataclass

import numpy as np

from cnncc.ir import Node
from cnncc.ir.ops.layout import group_span

from .context import LowerCtx, op_context

# Input channels of a block unrolled per iteration of the reduction's innermost loop.
CI_UNROLL = 4
# Cycles per cache line of weights a tile streams from L2 (its weights above L1), in the cost
# model: a weight vector of AVX-512 (16 floats) is a line, one of AVX2 (8 floats) half a line.
# Costed as a whole line per AVX2 vector, the model gave 1x2x6 tiles (12 broadcasts a step)
# to AVX2's 16 x 16 convs where 2x1x6 runs at 98% of the FMA peak against 79% (Zen 4).
L2_LINE_CYCLES = 3.0
LINE_BYTES = 64
# Groups of at most this many pixel tiles prefetch the next group's weights into L2. Measured
# (ResNet-18/50, 1 thread, weights from L3): 4 to 56 tiles a group gain 5-30%; from ~100 tiles
# the first tile's stall is amortized and the prefetches cost more than they save.
PREFETCH_MAX_TILES = 64
# With several threads, convs whose packed weights fit in this share of an L2 run pixel-major
# (each core then streams every weight once per pixel tile, from its own L2). Measured,
# interleaved A/B of whole nets: with a 2 MiB L2 (Intel, AVX-512), pixel-major up to 1 MiB of
# weights made ResNet-18 at 2 threads 0.2-3.5% faster, ResNet-50 / MobileNetV2 / SqueezeNet
# within noise (+-2%), 1 thread group-major was faster (ResNet-50 by 4%); with a 1 MiB L2 (AMD
# Zen 5), up to the whole L2 beat up to half of it: ResNet-18 at 2 threads 2.0-2.5% faster in
# three runs, ResNet-50 and MobileNetV2 within +-1.2%.
PIXEL_MAJOR_L2_SHARE = 1.0
# A register tile over a run of pixels of the flattened output (TH = 0) crosses row ends at
# a place known only at run time, so each pixel keeps its own input address in a general
# register: at most this many (x86-64 has 16; the loop counters and base pointers hold the
# rest). Runs are costed where a row is shorter than two tiles' widths (ResNet's 7x7 outputs
# on AVX2: 7 pixels against 6 a tile). Measured (ResNet-18's 7x7x512 3x3 conv, Zen 5): AVX2
# runs of 2 blocks x 6 pixels 112.7 GFLOP/s (87% of peak) vs the 1x1x7 rectangle's 93.3, runs
# of 1 x 13 83.1; AVX-512 runs of 2 x 28 118.2 vs the 2x2x7 rectangle's 238.1.
RUN_PIXELS = 8
# Register tiles the tuner tries per dense conv: the cost model's best few (with several threads,
# each in both loop orders and the rule's).
TUNE_TILES = 8
# Where a group-major conv's next-group weight prefetches go (prefetch_plan): "burst" = a tap's
# lines before its channel loop, "spread" = a reduction step's lines inside it, "off" = none.
# The cost model's choice is placement_rule; the tuner tries the others on the cost model's tile.
PREFETCH_PLACEMENTS = ("burst", "spread", "off")
# A stem (NCHW input: one channel a block) reduces over only C_in x taps steps (27 for a 3x3 RGB
# stem) between stores, and its output (megabytes, written once) is not in any cache: each tile
# ends in a burst of stores to lines the core must fetch first. A tile writes at most this many
# cache lines (its VB x TH x TW pixel blocks of c floats). Measured, VGG-11's 3x3 stem on Zen 5
# (AVX-512, 1 line a pixel block), in order / alone, % of FMA peak: 28 lines (the register
# limit's 2x1x14) 82.6 / 86.6, 20 (2x1x10) 84.3 / 88.5, 16 (2x1x8) 86.9 / 91.9, 14 (2x1x7)
# 89.1 / 93.6, 12 (2x1x6, 4x1x3) 88.8 / 94.2; AVX2 code's register limit (2x1x6 of 8-float
# blocks) writes 6 lines and stays. Other convs reduce over >= 16 x taps steps a store.
STEM_TILE_LINES = 12


def vector_regs(ctx: LowerCtx) -> int:
    """Vector registers of the target (32 zmm with AVX-512, 16 ymm with AVX2)."""
    return ctx.vector_registers


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


def tile_grid(oh: int, ow: int, th: int, tw: int) -> tuple[int, int]:
    """Pixel tiles along the rows and the columns of an OH x OW output (TH = 0: runs of TW
    pixels of the flattened output, in one row)."""
    if th == 0:
        return 1, -(-oh * ow // tw)
    return -(-oh // th), -(-ow // tw)


def tile_lines(vb: int, th: int, tw: int, c: int) -> int:
    """Cache lines a register tile's outputs cover (each row of TW pixel blocks of c floats)."""
    return vb * th * -(-tw * c * 4 // LINE_BYTES)


@dataclass(frozen=True)
class TileProblem:
    """What a dense conv's register tile is chosen from: ``ocb`` output blocks of ``oh`` x
    ``ow`` pixels; ``regs`` vector registers of one block each; ``block_bytes``, the packed
    weights of one output block: above ``l1_bytes`` (the target's L1) a tile streams them from
    L2, ``vector_bytes`` (a weight vector's bytes) at a time; ``taps`` of the window;
    ``span_blocks`` input blocks a group (a grouped conv: VB divides them); ``max_lines``
    (lines, c) for a stem (STEM_TILE_LINES); ``prologue``: a prologue transforms the input
    (tile_limit). Hashable: the costed tiles of a problem are computed once per process."""
    ocb: int
    oh: int
    ow: int
    regs: int
    block_bytes: int
    taps: int
    l1_bytes: int
    span_blocks: int = 0
    max_lines: tuple[int, int] | None = None
    prologue: bool = False
    vector_bytes: int = LINE_BYTES


def _tile_candidates(p: TileProblem):
    """(cost, VB, TH, TW) of every register tile within the register limit, larger VB first;
    for a grouped conv VB divides span_blocks; with ``max_lines`` (a stem) only tiles writing
    at most that many lines (tile_lines), else also runs (TH = 0) where a row is shorter than
    the tile could be (a generator: see _costed_tiles)."""
    for vb in range(min(4, p.ocb), 0, -1):
        if p.span_blocks and p.span_blocks % vb:
            continue
        k_step = L2_LINE_CYCLES * min(1.0, p.vector_bytes / LINE_BYTES) \
            if vb * p.block_bytes > p.l1_bytes else 1.0
        limit = tile_limit(p.regs, vb, p.taps, p.prologue)
        for th in range(1, min(4, p.oh) + 1):
            for tw in range(1, min(p.ow, limit) + 1):
                if vb * th * tw > limit:
                    break
                if p.max_lines and tile_lines(vb, th, tw, p.max_lines[1]) > p.max_lines[0]:
                    break
                yield _tile_cost(p.ocb, p.oh, p.ow, vb, th, tw, k_step), vb, th, tw
        if not p.max_lines and p.oh > 1 and p.ow < 2 * (limit // vb):
            for tw in range(1, min(limit // vb, RUN_PIXELS, p.oh * p.ow) + 1):
                yield _tile_cost(p.ocb, 1, p.oh * p.ow, vb, 1, tw, k_step), vb, 0, tw


@functools.lru_cache(maxsize=4096)
def _costed_tiles(p: TileProblem) -> tuple:
    """_tile_candidates as a tuple, costed once per conv shape: a model's convs repeat a few
    shapes (ResNet-50: 53 convs, ~20 shapes), and pick_tile and ranked_tiles cost the same
    tiles (ResNet-50: ~7,000 tile costs, ~0.1 s of every compile, cached kernels or not)."""
    return tuple(_tile_candidates(p))


def pick_tile(p: TileProblem) -> tuple[int, int, int]:
    """(VB output-channel blocks, TH rows, TW columns) of the register tile minimizing
    ``_tile_cost`` within the registers: VB weights, two broadcasts and the accumulators,
    fewer with VB >= 3 or a 1x1 conv (tile_limit)."""
    best = None
    for cost, vb, th, tw in _costed_tiles(p):
        if best is None or cost < best[0] * 0.99:     # ties: the larger VB
            best = (cost, vb, th, tw)
    assert best is not None
    return best[1:]


@dataclass(frozen=True)
class DenseSchedule:
    """The tunable choices of a dense NCHWc conv: its register tile (VB blocks x TH rows x TW
    columns; TH = 0: a run of TW pixels of the flattened output), with several threads the
    loop order (None: the L2 rule decides) and where the next group's weight prefetches go
    (one of PREFETCH_PLACEMENTS; None: ``placement_rule``; logs written before the field
    existed have none). Every schedule within the register
    limit computes the same conv; only the speed differs."""
    vb: int
    th: int
    tw: int
    pixel_major: bool | None = None
    prefetch: str | None = None

    def as_dict(self) -> dict:
        return {"vb": self.vb, "th": self.th, "tw": self.tw, "pixel_major": self.pixel_major,
                "prefetch": self.prefetch}

    @classmethod
    def from_dict(cls, d: dict) -> "DenseSchedule":
        pm, pf = d.get("pixel_major"), d.get("prefetch")
        if not all(isinstance(d.get(k), int) and not isinstance(d.get(k), bool)
                   for k in ("vb", "th", "tw")) or pm not in (None, True, False) \
                or not (pf is None or pf in PREFETCH_PLACEMENTS):
            raise ValueError(f"not a dense conv schedule: {d!r}")
        return cls(d["vb"], d["th"], d["tw"], pm, pf)

    def label(self) -> str:
        order = {None: "", True: " pixel-major", False: " group-major"}[self.pixel_major]
        shape = f"{self.vb}x{self.th}x{self.tw}" if self.th else f"{self.vb}x run {self.tw}"
        return shape + order + (f" prefetch {self.prefetch}" if self.prefetch else "")


def tile_limit(regs: int, vb: int, taps: int, prologue: bool = False) -> int:
    """Accumulators a register tile of ``vb`` blocks may hold (pick_tile's rule): all but the
    VB weights and two broadcasts; a 1x1 conv or a tile of VB >= 3 keeps a quarter of the
    registers out, at most 8 (at least VB + 2), a 1x1 conv with a prologue 8 (the prologue's
    P, Q, pixel and temporaries are live beside the accumulators). Measured: AVX-512's 32
    registers less 8 (fuller tiles spilled or ran slower); AVX2's 16 less 4 against less 8
    on Zen 4 (AVX2 code): ResNet-50 79.4 -> 74.9 ms, ConvNeXt-T 112 -> 101; DenseNet-121's
    prologue 1x1 convs with AVX2's 16 less 4: 77% -> 62% of the FMA peak at 56 x 56 (2x2x3
    tiles against 4x1x2)."""
    if vb >= 3 or taps == 1:
        return max(1, regs - (8 if prologue and taps == 1 else max(min(regs // 4, 8), vb + 2)))
    return max(1, regs - vb - 2)


def tile_fits(sched: DenseSchedule, p: TileProblem) -> bool:
    pixels = sched.tw if sched.th == 0 else sched.th * sched.tw
    shape = 1 <= sched.tw <= min(RUN_PIXELS, p.oh * p.ow) if sched.th == 0 else \
        1 <= sched.th <= p.oh and 1 <= sched.tw <= p.ow
    return (1 <= sched.vb <= min(4, p.ocb) and shape
            and sched.vb * pixels <= tile_limit(p.regs, sched.vb, p.taps, p.prologue)
            and not (p.span_blocks and p.span_blocks % sched.vb))


def ranked_tiles(p: TileProblem, count: int) -> list[tuple[int, int, int]]:
    """The ``count`` register tiles of lowest ``_tile_cost`` (best first): the tuner's
    candidates."""
    scored = [(cost, -vb, th, tw) for cost, vb, th, tw in _costed_tiles(p)]
    scored.sort()
    return [(-nvb, th, tw) for _, nvb, th, tw in scored[:count]]


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


def densify_groups(wv: np.ndarray, group: int, c: int, span: int) -> np.ndarray:
    """A grouped conv's W [OC, k, KH, KW] -> [OC, K, KH, KW] for K = ``span`` input channels
    (ir/ops/layout.group_span): row o holds the weights of input channels base(o) + i, base(o)
    = (o // c * c // K) * K, and zeros for channels outside o's group."""
    oc, k, kh, kw = wv.shape
    out = np.zeros((oc, span, kh, kw), np.float32)
    for o in range(oc):
        base = o // c * c // span * span
        first = o // k * k - base            # o's group's first input channel, from base
        out[o, first:first + k] = wv[o]
    return out


def channel_split(cin: int) -> bool:
    """Whether a tile's channel loop over the ``cin`` channels of an input block runs in steps
    of CI_UNROLL (else: one unrolled loop)."""
    return cin > CI_UNROLL and cin % CI_UNROLL == 0


def step_bytes(cin: int, vb: int, c: int) -> int:
    """Bytes of packed weights one reduction step of a VB-block tile reads: ``cin`` channels
    of c * VB floats, in groups of CI_UNROLL channels when the channel loop is split."""
    return cin * vb * c * 4 // (cin // CI_UNROLL if channel_split(cin) else 1)


def placement_candidates(ocb: int, oh: int, ow: int, tile: tuple[int, int, int], cin: int,
                         c: int, unit_stride: bool, threads: int) -> list[DenseSchedule]:
    """``tile`` (the cost model's) with each prefetch placement other than ``placement_rule``'s,
    when the tile prefetches group-major (forced with several threads) and the placement
    changes its loops (burst and spread differ only with a split channel loop)."""
    vb, th, tw = tile
    nth, ntw = tile_grid(oh, ow, th, tw)
    plan = prefetch_plan(ocb // vb, nth * ntw, step_bytes(cin, vb, c))
    if plan is None:
        return []
    rule = placement_rule(plan, unit_stride)
    order = False if threads > 1 else None
    return [DenseSchedule(vb, th, tw, order, p) for p in PREFETCH_PLACEMENTS
            if p != rule and (channel_split(cin) or p == "off")]


def placement_rule(plan: tuple[int, int], unit_stride: bool) -> str:
    """The cost model's prefetch placement (measured on Zen 5 only, weights from DRAM / L3): a
    stride-1 conv prefetching one line a step issues a tap's lines at once before its channel
    loop - inside it they split LLVM's scheduling region (a 28-accumulator 2x1x14 tile spilled
    one: GoogLeNet's and ResNet-18's 14x14 3x3 convs 0.87 -> 0.70 and 1.19 -> 0.88 ms) and ran
    slower even without a spill; other convs keep P lines a reduction step, spread through the
    loop (bursts of 8 lines a tap made ResNet-18's stride-2 convs 10-30% and GoogLeNet's 7x7
    ones ~10% slower; why is not understood: the tuner tries every placement)."""
    return "burst" if unit_stride and plan[0] == 1 else "spread"


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
    span_blocks: int            # grouped convs: input blocks a group reads (0: dense)
    packs: list                 # full groups [G, ICb, KH, KW, cin, VB * c] (+ the tail group)
    wbufs: list                 # their constant buffers
    threads: int
    work: int
    pixel_major_max_bytes: int  # packed weights up to this run pixel-major with threads > 1
    order: bool | None = None   # a tuned loop order (True: pixel-major); None: the L2 rule
    prefetch: str | None = None  # a tuned prefetch placement; None: placement_rule

    @property
    def runs(self) -> bool:
        """Tiles of TW consecutive pixels of the flattened OH x OW (TH = 0: RUN_PIXELS)."""
        return self.th == 0

    @property
    def split(self) -> bool:
        return channel_split(self.cin)

    @property
    def steps(self) -> int:
        """Reduction steps of a tile (input block x tap x [group of CI_UNROLL channels])."""
        return self.icb * self.taps * (self.cin // CI_UNROLL if self.split else 1)

    @property
    def groups(self) -> int:
        return self.ocb // self.vb

    @property
    def pixel_major(self) -> bool:
        if self.threads <= 1:
            return False
        if self.order is not None:
            return self.order
        return sum(p.nbytes for p in self.packs) <= self.pixel_major_max_bytes

    def tile_grid(self) -> tuple[int, int]:
        """Pixel tiles along the rows and the columns (runs: one row of runs)."""
        return tile_grid(self.oh, self.ow, self.th, self.tw)

    def extents(self) -> dict[str, int]:
        """The task loops, outer first, and their extents."""
        nth, ntw = self.tile_grid()
        ng = self.groups + (len(self.packs) > 1)
        if self.pixel_major:
            return {"n": self.nb, "ot": nth, "t": ntw, "og": ng}
        return {"n": self.nb, "og": ng, "ot": nth, "t": ntw}

    def group_plan(self) -> tuple[int, int] | None:
        """The next-group prefetch plan (group-major only; None with placement "off")."""
        if self.pixel_major or self.prefetch == "off":
            return None
        nth, ntw = self.tile_grid()
        return prefetch_plan(self.groups, nth * ntw, step_bytes(self.cin, self.vb, self.c))

    def placement(self, unit_stride: bool) -> str | None:
        """Where the prefetches go: "burst", "spread" (PREFETCH_PLACEMENTS; the same loops
        when the channel loop is not split) or None (no prefetch)."""
        plan = self.group_plan()
        if plan is None:
            return None
        return self.prefetch or placement_rule(plan, unit_stride)


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
    group = octx["group"]
    span = group_span(wv.shape[1] * group, wv.shape[0], group, c) if group > 1 else None
    sb = 0
    prologue = len(node.inputs) > 5 and bool(node.inputs[5])
    key = dense_workload(ctx.target, xs, wv.shape, win, stem, flat, group, prologue)
    if span is not None:
        wv, icb, sb = densify_groups(wv, group, c, span), span // c, span // c
    target = ctx.target
    problem = TileProblem(ocb, oh, ow, vector_regs(ctx) * ctx.lanes // c,
                          icb * cin * kh * kw * c * 4, kh * kw, target.l1d_bytes, sb,
                          (STEM_TILE_LINES, c) if stem else None, prologue, c * 4)
    vb, th, tw = pick_tile(problem)
    order = prefetch = None
    if key not in ctx.workloads:
        ranked = ranked_tiles(problem, TUNE_TILES)
        orders = (None, True, False) if target.threads > 1 else (None,)
        cands = [DenseSchedule(*t, o) for t in ranked for o in orders]
        cands[1:1] = placement_candidates(ocb, oh, ow, (vb, th, tw), cin, c,
                                          tuple(win.strides) == (1, 1), target.threads)
        ctx.workloads[key] = cands
    tuned = ctx.schedules.get(key)
    if isinstance(tuned, DenseSchedule) and tile_fits(tuned, problem):
        vb, th, tw, order, prefetch = (tuned.vb, tuned.th, tuned.tw, tuned.pixel_major,
                                       tuned.prefetch)
        ctx.tuned.add(node.name)
    ctx.workload_of[node.name] = key
    packs = pack_dense(wv, c, cin, vb)
    wbufs = [ctx.const(p, f"w{i}") for i, p in enumerate(packs)]
    work = nb * ocb * oh * ow * c * icb * cin * kh * kw
    return DenseTiling(stem, flat, c, cin, nb, ocb, icb, oh, ow, kh * kw, vb, th, tw, sb, packs,
                       wbufs, ctx.threads, work, int(target.l2_bytes * PIXEL_MAJOR_L2_SHARE),
                       order, prefetch)


def dense_workload(target, xs, wshape, win, stem: bool, flat: bool, group: int = 1,
                   prologue: bool = False) -> str:
    """The tuning log's key of a dense NCHWc conv: what decides its speed (the target's
    vectors and threads, the shapes, the window, the layout variant, a prologue), never the
    model it is in, its weights or its epilogue."""
    return (f"conv_nchwc/{target.isa}/l{target.lanes}/t{target.threads}/x{'x'.join(map(str, xs))}"
            f"/w{'x'.join(map(str, wshape))}/s{'x'.join(map(str, win.strides))}"
            f"/d{'x'.join(map(str, win.dilations))}/p{'x'.join(map(str, win.pads))}"
            f"{'/stem' if stem else ''}{'/flat' if flat else ''}"
            f"{f'/g{group}' if group > 1 else ''}{'/pre' if prologue else ''}")
