"""Tunable schedules of the memory-bound NCHWc kernels (depthwise convs, pools) and of the dense
layers (Gemm / MatMul with a constant matrix): their dataclasses, cost-model defaults, the
candidates `cnncc tune` tries (cnncc/tune.py) and their tuning-log keys.

Every size derives from the Target: registers are counted in c-channel blocks
(``regs * lanes // c``: 32 with AVX-512 and blocks of 16, 16 with AVX2 and blocks of 8); a
register tile leaves ``FREE_REGISTERS`` of them to its loads and broadcasts. Every schedule that
``fits`` computes the same result (the tile changes which pixels / columns share a loop
iteration, never the order of a sum), so a tuned schedule only changes speed; one that does not
fit (a stale log, another machine's) is ignored and the cost model decides.

- Depthwise conv and pool (``PixelSchedule``): R output pixels x one channel block per register
  tile of the interior columns (conv_nchwc._depthwise, layout_nchwc.lower_pool_nchwc). The row's
  interior is cut into equal tiles of at most R pixels (layout_nchwc.row_tiles), so the
  candidates are the distinct tile widths that this gives. Cost model: a depthwise tile holds
  half of the free registers as accumulators (the other half for its input vectors in flight);
  a pool tile a quarter of the registers, as the dw->pw kernel's pixel rows (conv_dwpw).
- Gemm (``GemmSchedule``): ROWS rows of A x VECTORS vectors of the output's columns per register
  tile (nn._dense: B packed in panels of VECTORS * lanes columns). Cost model: 2 vectors when
  the output has that many columns, and as many rows as the free registers hold. A batch-1
  classifier has one row: its tile is 1 x VECTORS accumulators streaming the weights, so the
  candidates there are the vector counts (more independent accumulators and memory streams).
- Reductions (``ChainSchedule``): K independent accumulator chains per register tile, each
  summing its own outputs in the original order (so every K computes the same result): channel
  blocks of a global pool on NCHWc (ReduceMean / ReduceMax over H, W: reduce_tiles.py),
  channels of an NCHW global pool (GlobalAveragePool / GlobalMaxPool / GlobalLpPool: nn.py) and
  output vectors of a row of an NCHW pool (nn.lower_pool). Cost model: one chain (the kernels
  as they were before they were tunable: accumulating in the output for the NCHWc global pool);
  the candidates are 2, 4, ... chains up to what the registers hold.
- Gemm / MatMul with a run-time matrix (``GemmSchedule`` too, gemm_runtime.py): register
  tiles of rows x vectors reading the run-time B as it is; the cost model's tile and the
  candidates are a constant matrix's.
- Block-diagonal grouped convs (``PixelSchedule``, conv_grouped.py): at most R output pixels
  per register tile (TH x TW: conv_grouped.pixel_tile). Cost model: the most pixels the
  registers hold next to the tap's k weight vectors and the permutes in flight; the
  candidates are the distinct tiles of 3/4, 1/2, 3/8 and 1/4 of that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

FREE_REGISTERS = 4       # vector registers a tile leaves to its loads and broadcasts
GEMM_MAX_VECTORS = 8     # output vectors a gemm tile may span (the tuner's range)
DW_KIND, POOL_KIND, GEMM_KIND, GROUPED_KIND = "conv_dw", "pool_nchwc", "gemm", "conv_grouped"
# The reductions' and the run-time gemm's kinds: NCHWc global pools, NCHW global pools, NCHW
# pools, Gemm / MatMul whose B is a run-time value.
GPOOL_NCHWC_KIND, GPOOL_KIND, POOL_NCHW_KIND, GEMM_RT_KIND = (
    "gpool_nchwc", "gpool", "pool_nchw", "gemm_rt")
MAX_CHAINS = 8           # accumulator chains a reduction tile may hold (the tuner's range)


def int_fields(d: dict, keys: tuple[str, ...], what: str) -> list[int]:
    """The int (not bool) values of ``keys`` in the dict ``d`` (a logged schedule); ValueError
    naming ``what`` when it is not that."""
    if not isinstance(d, dict) or not all(
            isinstance(d.get(k), int) and not isinstance(d.get(k), bool) for k in keys):
        raise ValueError(f"not a {what} schedule: {d!r}")
    return [d[k] for k in keys]


def dims(v) -> str:
    """Sizes as a key part: (1, 2, 3) -> "1x2x3"."""
    return "x".join(map(str, v))


@dataclass(frozen=True)
class PixelSchedule:
    """R output pixels (of one channel block) per register tile of a depthwise conv or a pool."""
    r: int

    def as_dict(self) -> dict:
        return {"r": self.r}

    @classmethod
    def from_dict(cls, d: dict) -> "PixelSchedule":
        return cls(*int_fields(d, ("r",), "pixel tile"))

    def label(self) -> str:
        return f"{self.r} px"


def block_registers(regs: int, lanes: int, c: int) -> int:
    """Vector registers of the target counted in c-channel blocks."""
    return max(1, regs * lanes // c)


def pixel_limit(regs: int, lanes: int, c: int) -> int:
    """The most pixels of a tile: its accumulators leave FREE_REGISTERS blocks free."""
    return max(1, block_registers(regs, lanes, c) - FREE_REGISTERS)


def tile_width(width: int, rmax: int) -> int:
    """The width of the equal tiles that cut ``width`` columns into tiles of at most ``rmax``
    (layout_nchwc.row_tiles)."""
    return -(-width // -(-width // rmax)) if width > 0 else 1


def depthwise_default(regs: int, lanes: int, c: int) -> int:
    return max(1, pixel_limit(regs, lanes, c) // 2)


def pool_default(regs: int, lanes: int, c: int) -> int:
    return max(1, block_registers(regs, lanes, c) // 4)


def pixel_candidates(width: int, default: int, regs: int, lanes: int, c: int,
                     limit: int = 8) -> list[PixelSchedule]:
    """The cost model's tile first, then the distinct tile widths of the interior's ``width``
    columns for R = the register limit and 3/4, 1/2, 3/8, 1/4, 1/8 of it (at most ``limit``)."""
    top = pixel_limit(regs, lanes, c)
    out = [PixelSchedule(tile_width(width, default))]
    for num, den in ((1, 1), (3, 4), (1, 2), (3, 8), (1, 4), (1, 8)):
        s = PixelSchedule(tile_width(width, max(1, top * num // den)))
        if s not in out:
            out.append(s)
    return out[:limit]


def pixel_fits(s: PixelSchedule, width: int, regs: int, lanes: int, c: int) -> bool:
    return 1 <= s.r <= min(max(1, width), pixel_limit(regs, lanes, c))


def depthwise_workload(target, xs, wshape, win, kind: str = DW_KIND) -> str:
    """The tuning log's key of a depthwise (or ``kind``: a block-diagonal grouped) NCHWc conv:
    the target's vectors and threads, the blocked input shape, the weights' shape and the
    window (never the model or epilogue)."""
    return (f"{kind}/{target.isa}/l{target.lanes}/t{target.threads}/x{dims(xs)}"
            f"/w{dims(wshape)}/s{dims(win.strides)}/d{dims(win.dilations)}/p{dims(win.pads)}")


def pool_workload(target, kind: str, xs, ys, win) -> str:
    """The tuning log's key of an NCHWc pool: its kind, the blocked input and output shapes and
    the window."""
    return (f"{POOL_KIND}/{target.isa}/l{target.lanes}/t{target.threads}/{kind}/x{dims(xs)}"
            f"/y{dims(ys)}/k{dims(win.kernel)}/s{dims(win.strides)}/d{dims(win.dilations)}"
            f"/p{dims(win.pads)}")


@dataclass(frozen=True)
class GemmSchedule:
    """ROWS rows x VECTORS output vectors per register tile of a dense layer."""
    rows: int
    vectors: int

    def as_dict(self) -> dict:
        return {"rows": self.rows, "vectors": self.vectors}

    @classmethod
    def from_dict(cls, d: dict) -> "GemmSchedule":
        return cls(*int_fields(d, ("rows", "vectors"), "gemm"))

    def label(self) -> str:
        return f"{self.rows}x{self.vectors} vectors"


def _gemm_rows(m: int, vectors: int, regs: int) -> int:
    return max(1, min(m, (regs - FREE_REGISTERS) // vectors))


def gemm_default(m: int, n: int, lanes: int, regs: int) -> GemmSchedule:
    vectors = 2 if n >= 2 * lanes else 1
    return GemmSchedule(_gemm_rows(m, vectors, regs), vectors)


def gemm_fits(s: GemmSchedule, m: int, n: int, lanes: int, regs: int) -> bool:
    return (1 <= s.vectors <= min(GEMM_MAX_VECTORS, -(-n // lanes)) and 1 <= s.rows <= m
            and s.rows * s.vectors <= regs - FREE_REGISTERS)


def gemm_candidates(m: int, n: int, lanes: int, regs: int, limit: int = 8) -> list[GemmSchedule]:
    """The cost model's tile first, then per vector count the most rows the registers hold and
    (with more rows than that) half as many: at most ``limit``."""
    out = [gemm_default(m, n, lanes, regs)]
    for v in range(1, GEMM_MAX_VECTORS + 1):
        rows = _gemm_rows(m, v, regs)
        for s in (GemmSchedule(rows, v), GemmSchedule(max(1, rows // 2), v)):
            if s not in out and gemm_fits(s, m, n, lanes, regs):
                out.append(s)
    return out[:limit]


def gemm_workload(target, m: int, k: int, n: int, trans_a: bool) -> str:
    return (f"{GEMM_KIND}/{target.isa}/l{target.lanes}/t{target.threads}/m{m}/k{k}/n{n}"
            f"{'/ta' if trans_a else ''}")


def choose(ctx: Any, node: str, key: str, candidates: list, fits: Callable[[Any], bool]) -> Any:
    """The schedule of kernel ``node`` (workload ``key``): the tuned one when ``ctx.schedules``
    has one of the candidates' class that ``fits``, else ``candidates[0]`` (the cost model's).
    Records the workload's candidates and the node's key for the tuner and reports."""
    sched = candidates[0]
    tuned = ctx.schedules.get(key)
    if isinstance(tuned, type(sched)) and fits(tuned):
        sched = tuned
        ctx.tuned.add(node)
    ctx.workloads.setdefault(key, candidates)
    ctx.workload_of[node] = key
    return sched


@dataclass(frozen=True)
class ChainSchedule:
    """K independent accumulator chains per register tile of a reduction (channel blocks,
    channels or output vectors: see the module docstring)."""
    k: int

    def as_dict(self) -> dict:
        return {"k": self.k}

    @classmethod
    def from_dict(cls, d: dict) -> "ChainSchedule":
        return cls(*int_fields(d, ("k",), "reduction"))

    def label(self) -> str:
        return f"{self.k} chains"


def chain_limit(units: int, regs: int) -> int:
    """The most chains of a tile over ``units`` outputs (blocks, channels, vectors) with
    ``regs`` registers for them: MAX_CHAINS, the registers less FREE_REGISTERS, the units."""
    return max(1, min(MAX_CHAINS, regs - FREE_REGISTERS, units))


def chain_candidates(units: int, regs: int) -> list[ChainSchedule]:
    """One chain (the cost model's), then 2, 4, ... and the limit."""
    top = chain_limit(units, regs)
    out = [ChainSchedule(1)]
    k = 2
    while k < top:
        out.append(ChainSchedule(k))
        k *= 2
    if top > 1:
        out.append(ChainSchedule(top))
    return out


def chain_fits(s: ChainSchedule, units: int, regs: int) -> bool:
    return 1 <= s.k <= chain_limit(units, regs)


def reduction_workload(kind: str, target, op: str, *shapes) -> str:
    """The tuning log's key of a reduction or pool ``kind``: its op and shapes (and window)."""
    return "/".join([kind, target.isa, f"l{target.lanes}", f"t{target.threads}", op]
                    + [s for s in shapes if s])


def gemm_rt_candidates(m: int, n: int, lanes: int, regs: int) -> list[GemmSchedule]:
    """A run-time matrix's tiles: those of a constant one (gemm_candidates, the cost model's
    first). Its B is read as it is, unpacked; the register tile still pays: 5-11x faster than
    a loop over the outputs stepping one or two vectors (512x49 . 49x512: 532 -> 100 us, 1
    thread, AVX-512, measured by the tuner's branch)."""
    return gemm_candidates(m, n, lanes, regs)


def gemm_rt_workload(target, batch, m: int, k: int, n: int, trans_a: bool,
                     trans_b: bool) -> str:
    return (f"{GEMM_RT_KIND}/{target.isa}/l{target.lanes}/t{target.threads}/b{dims(batch)}"
            f"/m{m}/k{k}/n{n}{'/ta' if trans_a else ''}{'/tb' if trans_b else ''}")
