"""Arena planning: place buffers with known lifetimes in one scratch arena, reusing memory.

Not a Graph -> Graph pass (so it lives with the lowering, not in passes/): lifetimes are kernel
positions, known only once the graph is lowered, so cnncc/lower/program.py computes them and
calls ``plan_memory`` as the last step of lowering.

Notation. Buffer i lives over the closed interval [s_i, e_i] of kernel positions (it is used by
kernels s_i..e_i and must keep its bytes in between) and takes b_i = ceil64(bytes_i) bytes
(at least 64: every offset stays 64-byte aligned). Buffers i and j *conflict* when their
lifetimes intersect: s_i <= e_j and s_j <= e_i. Buffers are placed one at a time in the order of
decreasing b_i (ties: earlier s_i first, then the key's order), each at the lowest offset that
overlaps no conflicting buffer placed before it:

    o_i = min { o in 64N : for every placed j conflicting with i, o + b_i <= o_j or o_j + b_j <= o }

and the arena is A = max_i (o_i + b_i). Bounds (tests/test_memory_plan.py checks both):

    max_t sum_{i : s_i <= t <= e_i} b_i  <=  A  <=  sum_i b_i

The left side holds because buffers live at the same time t pairwise conflict and so occupy
disjoint byte ranges of [0, A); the right one because o_i is 0 or the end of a placed buffer,
so by induction o_i + b_i <= the sum of the sizes placed so far (i included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping

from cnncc.ir.aligned import align


@dataclass(frozen=True)
class Lifetime:
    """A buffer used by kernels ``first``..``last`` (inclusive) of ``nbytes`` bytes."""
    first: int
    last: int
    nbytes: int


@dataclass
class MemoryPlan:
    """Arena offsets of every buffer and the figures that judge the plan (all in bytes).

    ``arena_bytes``: the peak, the arena's size; ``unshared_bytes``: the arena without reuse
    (every buffer its own memory, sum of b_i); ``live_bytes``: the most bytes live at one kernel
    position, the lower bound of any plan."""
    offsets: dict
    sizes: dict                     # key -> b_i (rounded)
    lifetimes: dict                 # key -> Lifetime
    arena_bytes: int
    unshared_bytes: int
    live_bytes: int

    def summary(self) -> dict:
        """The figures alone (what the CLI, the bench json and ``memory_report()`` show)."""
        return {"arena_bytes": self.arena_bytes, "unshared_bytes": self.unshared_bytes,
                "live_bytes": self.live_bytes, "buffers": len(self.offsets)}


def plan_memory(lifetimes: Mapping[Hashable, Lifetime]) -> MemoryPlan:
    """Greedy placement by decreasing size, each buffer at the lowest offset free of every
    conflicting placed buffer (the rule in the module docstring)."""
    for k, lt in lifetimes.items():
        if not 0 <= lt.first <= lt.last:
            raise ValueError(f"buffer {k!r}: lifetime [{lt.first}, {lt.last}] is not an interval "
                             "of kernel positions")
    sizes = {k: align(max(lt.nbytes, 1)) for k, lt in lifetimes.items()}
    keys = list(lifetimes)
    order = sorted(range(len(keys)), key=lambda n: (-sizes[keys[n]], lifetimes[keys[n]].first, n))
    placed: list[tuple[int, int, int, int]] = []      # (offset, size, first, last)
    offsets: dict = {}
    for n in order:
        key = keys[n]
        lt, size = lifetimes[key], sizes[key]
        conflicts = sorted((o, b) for o, b, s, e in placed if s <= lt.last and lt.first <= e)
        off = 0
        for o, b in conflicts:
            if off + size <= o:
                break                   # fits in the gap below this block
            off = max(off, o + b)
        placed.append((off, size, lt.first, lt.last))
        offsets[key] = off
    arena = max((o + b for o, b, _, _ in placed), default=0)
    return MemoryPlan(offsets, sizes, dict(lifetimes), arena, sum(sizes.values()),
                      max_live_bytes(lifetimes, sizes))


def max_live_bytes(lifetimes: Mapping[Hashable, Lifetime], sizes: Mapping[Hashable, int]) -> int:
    """max over kernel positions t of the bytes of the buffers live at t."""
    events: dict[int, int] = {}
    for k, lt in lifetimes.items():
        events[lt.first] = events.get(lt.first, 0) + sizes[k]
        events[lt.last + 1] = events.get(lt.last + 1, 0) - sizes[k]
    live = best = 0
    for t in sorted(events):
        live += events[t]
        best = max(best, live)
    return best


def format_plan(plan: MemoryPlan, names: Mapping[Hashable, str] | None = None) -> str:
    """One line per buffer (by offset): name, lifetime, bytes, offset; then the totals."""
    lines = [f"{'buffer':<40} {'kernels':>11} {'bytes':>12} {'offset':>12}"]
    for key in sorted(plan.offsets, key=lambda k: (plan.offsets[k], plan.lifetimes[k].first)):
        lt = plan.lifetimes[key]
        name = (names or {}).get(key, str(key))
        lines.append(f"{name[:40]:<40} {f'{lt.first}..{lt.last}':>11} {plan.sizes[key]:>12,} "
                     f"{plan.offsets[key]:>12,}")
    lines.append(format_summary(plan.summary()))
    return "\n".join(lines)


def format_summary(s: Mapping[str, int]) -> str:
    """``arena: 6.24 MiB peak, 21.36 MiB without reuse (71% saved; ...)``: one line."""
    def mib(n: int) -> str:
        return f"{n / (1 << 20):.2f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"

    saved = 1 - s["arena_bytes"] / s["unshared_bytes"] if s["unshared_bytes"] else 0.0
    return (f"arena: {mib(s['arena_bytes'])} peak, {mib(s['unshared_bytes'])} without reuse "
            f"({100 * saved:.0f}% saved; {s['buffers']} buffers, at most "
            f"{mib(s['live_bytes'])} live at once)")
