"""Schedule primitives: legality-checked rewrites of a kernel's loop nest.

    s = Schedule(kernel)
    o, i = s.split("x", 8, mode="tail")
    s.vectorize(i); s.parallel("y")
    kernel = s.kernel            # str(s) prints the applied primitives and the loop nest

Loops are named by their variable (unique within a kernel). Each primitive checks that it keeps
the kernel's meaning (or raises ScheduleError naming what is wrong) and records itself in ``log``
as the call that made it. The primitives are the ones the lowering applies (split, fuse,
vectorize, parallel; bind for the GPU grid); loop order and register-tile unrolling are written
into the kernels' templates (README: the pipeline).
"""
from __future__ import annotations

from .loop_walk import (const_value, loop_path, replace_node, simplify, stmt_exprs,
                        substitute_stmt, uses_var, walk_exprs, walk_stmts)
from .errors import ScheduleError
from .loop import Allocate, Cmp, Const, For, If, Kernel, Stmt, Store, Var, seq


def _stores_independent_of(body: Stmt, name: str) -> list[str]:
    """Global/outer buffers stored at an index that does not depend on loop var ``name``."""
    local = {s.buf.name for s in walk_stmts(body) if isinstance(s, Allocate)}
    bad = []
    for s in walk_stmts(body):
        if isinstance(s, Store) and s.buf.name not in local:
            if not any(uses_var(i, name) for i in s.indices):
                bad.append(s.buf.name)
    return bad


class Schedule:
    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.log: list[str] = []

    def __str__(self) -> str:
        return "\n".join([f"# {x}" for x in self.log] + [str(self.kernel)])

    # ---- lookup -------------------------------------------------------------------------------
    def loop(self, name: str) -> For:
        p = loop_path(self.kernel.body, name)
        if p is None:
            raise ScheduleError(f"kernel {self.kernel.name}: no loop named '{name}'")
        return p[-1]

    def loop_names(self) -> list[str]:
        return [s.var.name for s in walk_stmts(self.kernel.body) if isinstance(s, For)]

    def _fresh(self, base: str) -> str:
        used = set(self.loop_names()) | {e.name for _, x in stmt_exprs(self.kernel.body)
                                         for e in walk_exprs(x) if isinstance(e, Var)}
        name, i = base, 1
        while name in used:
            name, i = f"{base}{i}", i + 1
        return name

    def _replace(self, target: Stmt, new: Stmt) -> None:
        self.kernel = Kernel(self.kernel.name, self.kernel.params,
                             replace_node(self.kernel.body, target, new))

    def _const_extent(self, loop: For, what: str) -> int:
        n = const_value(loop.extent)
        if n is None:
            raise ScheduleError(f"{what} '{loop.var.name}': extent must be a constant")
        return n

    # ---- primitives ---------------------------------------------------------------------------
    def split(self, name: str, factor: int, mode: str = "guard") -> tuple[str, str]:
        """Split loop ``name`` into (outer, inner) with inner extent ``factor``.

        mode "guard": outer runs ceil(n/factor) times, the body is guarded when factor does not
        divide n. mode "tail": a main nest over the divisible part plus a tail loop (constant n).
        """
        loop = self.loop(name)
        if not isinstance(factor, int) or factor < 1:
            raise ScheduleError(f"split '{name}': factor must be a positive int, got {factor!r}")
        if mode not in ("guard", "tail"):
            raise ScheduleError(f"split '{name}': mode must be 'guard' or 'tail', got {mode!r}")
        n = const_value(loop.extent)
        outer, inner = Var(self._fresh(f"{name}_o")), Var(self._fresh(f"{name}_i"))
        value = simplify(loop.start + outer * factor + inner)
        body = substitute_stmt(loop.body, {loop.var: value})
        if mode == "tail":
            if n is None:
                raise ScheduleError(f"split '{name}' mode tail: extent must be a constant")
            main = For(outer, n // factor, For(inner, factor, body), loop.kind)
            rest = n % factor
            if rest:
                tail = Var(self._fresh(f"{name}_t"))
                tbody = substitute_stmt(loop.body, {loop.var: simplify(
                    loop.start + (n - rest) + tail)})
                new = seq(main, For(tail, rest, tbody))
            else:
                new = main
        else:
            if n is not None and n % factor == 0:
                ext, guarded = Const(n // factor), body
            else:
                ext = simplify((loop.extent + (factor - 1)) // factor) if n is None else \
                    Const(-(-n // factor))
                guarded = If(Cmp("lt", simplify(outer * factor + inner), loop.extent), body)
            new = For(outer, ext, For(inner, factor, guarded), loop.kind)
        self._replace(loop, new)
        self.log.append(f"split({name}, {factor}, {mode}) -> {outer.name}, {inner.name}")
        return outer.name, inner.name

    def _loop_path(self, name: str) -> list[Stmt]:
        p = loop_path(self.kernel.body, name)
        if p is None:
            raise ScheduleError(f"kernel {self.kernel.name}: no loop named '{name}'")
        return p

    def fuse(self, outer: str, inner: str) -> str:
        """Fuse two directly nested loops into one over the product of their extents."""
        lo = self.loop(outer)
        li = lo.body
        if not isinstance(li, For) or li.var.name != inner:
            raise ScheduleError(f"fuse({outer}, {inner}): '{inner}' must be the only statement "
                                f"directly inside '{outer}'")
        ni = self._const_extent(li, "fuse inner loop")
        if uses_var(li.extent, outer) or uses_var(li.start, outer):
            raise ScheduleError(f"fuse({outer}, {inner}): inner extent depends on '{outer}'")
        f = Var(self._fresh(f"{outer}_{inner}"))
        body = substitute_stmt(li.body, {lo.var: simplify(lo.start + f // ni),
                                         li.var: simplify(li.start + f % ni)})
        self._replace(lo, For(f, simplify(lo.extent * ni), body, lo.kind))
        self.log.append(f"fuse({outer}, {inner}) -> {f.name}")
        return f.name

    def _set_kind(self, name: str, kind: str) -> None:
        loop = self.loop(name)
        self._replace(loop, For(loop.var, loop.extent, loop.body, kind, loop.start))
        # The log reads back as the calls that made it: vectorize(i), parallel(j), bind(k, kind).
        call = {"vectorized": f"vectorize({name})",
                "parallel": f"parallel({name})"}.get(kind, f"bind({name}, {kind})")
        self.log.append(call)

    def vectorize(self, name: str) -> None:
        loop = self.loop(name)
        self._const_extent(loop, "vectorize")
        bad = _stores_independent_of(loop.body, name)
        if bad:
            raise ScheduleError(f"vectorize '{name}': it is a reduction loop (stores to "
                                f"{sorted(set(bad))} do not depend on it)")
        for s in walk_stmts(loop.body):
            if isinstance(s, For) and s.kind in ("parallel", "vectorized"):
                raise ScheduleError(f"vectorize '{name}': contains {s.kind} loop '{s.var.name}'")
        self._set_kind(name, "vectorized")

    def check_parallel(self, name: str, what: str = "parallel") -> None:
        """Raise ScheduleError unless loop ``name`` may run its iterations in parallel."""
        path = self._loop_path(name)
        loop = path[-1]
        bad = _stores_independent_of(loop.body, name)
        if bad:
            raise ScheduleError(f"{what} '{name}': it is a reduction loop (stores to "
                                f"{sorted(set(bad))} do not depend on it)")
        inner = [s for s in walk_stmts(loop.body) if isinstance(s, For) and s.kind == "parallel"]
        outer = [s for s in path[:-1] if isinstance(s, For)
                 and s.kind in ("parallel", "vectorized")]
        for s in inner + outer:
            if s is not loop:
                raise ScheduleError(f"{what} '{name}': nested with {s.kind} loop "
                                    f"'{s.var.name}'")

    def parallel(self, name: str) -> None:
        self.check_parallel(name)
        self._set_kind(name, "parallel")

    def bind(self, name: str, kind: str) -> None:
        """Bind loop ``name`` to the GPU grid ("gpu_block") or a block's threads ("gpu_thread");
        same legality as parallel."""
        if kind not in ("gpu_block", "gpu_thread"):
            raise ScheduleError(f"bind '{name}': kind must be gpu_block or gpu_thread, "
                                f"got {kind!r}")
        self._const_extent(self.loop(name), f"bind {kind}")
        self.check_parallel(name, f"bind {kind}")
        self._set_kind(name, kind)


__all__ = ["Schedule", "ScheduleError"]
