"""Statements of one stage -> CUDA C lines (the body of a ``__global__`` function).

Block loops become ``const int bx = blockIdx.x;`` declarations, thread loops a block that
binds the variable to threadIdx (guarded when the loop is shorter than blockDim), other loops
plain ``for`` loops (``#pragma unroll`` for unrolled ones; vectorized loops stay plain loops: on
a GPU the thread dimension carries the vector work). Statements that store while a threadIdx
dimension of the block is not bound by an enclosing thread loop would run once per thread along
that dimension: they are guarded to thread 0 of it. ``__syncthreads()`` follows a block-scope
statement (see stages.block_leaves) when something that may run after it in the block reads
what it writes or writes what it reads (global or shared memory).
"""
from __future__ import annotations

import re

from cnncc.ir import CompileError
from cnncc.ir.loop_walk import const_value, walk_stmts
from cnncc.ir.dtypes import DType
from cnncc.ir.loop import (SEQUENTIAL_KINDS, Allocate, Bin, Cast, Const, For, If, Let, Prefetch,
                           Seq, Stmt, Store)
from .cexpr import ExprRenderer, c_type
from .stages import Stage, accesses, children, has_thread_loop

_AXES = "xyz"


class StageWriter:
    """Renders one stage; ``render()`` returns the indented body lines."""

    def __init__(self, kname: str, stage: Stage, names, helpers: set, narrow: bool):
        self.kname = kname
        self.st = stage
        self.names = names
        self.lines: list[str] = []
        self.decl_lines: dict[int, str] = {}    # line index -> variable (dropped when unused)
        self.alloc_lines: set[int] = set()      # line indices of local array declarations
        self.depth = 1
        self.ranges: dict = {}
        self.expr = ExprRenderer(kname, names.vars, self._access, self.ranges, helpers, narrow)
        self.decls = _decl_counts(stage.root)
        self.barrier_after = _barriers(stage)
        self._free: dict = {}
        self._binds: dict = {}

    # ---- output -------------------------------------------------------------------------------
    def emit(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

    def render(self) -> list[str]:
        st = self.st
        for buf in st.shared_buffers():
            self.emit(f"CNNCC_SHARED({c_type(buf.dtype)}, {self.names.buf(buf)}, {buf.size});")
        for node in st.chain:
            if isinstance(node, For):
                d = st.block_dims[id(node)]
                self._declare_loop_var(node, f"blockIdx.{_AXES[d]}")
            else:
                self._let_decl(node)
        self.stmt(st.body, frozenset(), True)
        dead = _unused_decls(self.lines, self.decl_lines)
        decls = (set(self.decl_lines) - dead) | self.alloc_lines
        return _tidy(self.lines, dead, decls)

    # ---- element access -----------------------------------------------------------------------
    def _access(self, buf, indices) -> str:
        home = self.st.homes.get(id(buf))
        keep = range(len(buf.shape)) if home is None else home.keep
        shape = [buf.shape[d] for d in keep]
        idx = [indices[d] for d in keep]
        total = None
        stride = 1
        for i, n in reversed(list(zip(idx, shape))):
            if i.dtype is not DType.int64:
                i = Cast(DType.int64, i)
            term = i if stride == 1 else Bin("mul", i, Const(stride))
            if not (isinstance(i, Const) and i.value == 0):
                total = term if total is None else Bin("add", term, total)
            stride *= n
        return f"{self.names.buf(buf)}[{'0' if total is None else self.expr(total)}]"

    # ---- helpers ------------------------------------------------------------------------------
    def _declare_loop_var(self, loop: For, source: str) -> None:
        start = const_value(loop.start)
        n = const_value(loop.extent)
        name = self.names.var(loop.var.name)
        t = self.expr.ctype(loop.var.dtype)
        value = source if start == 0 else f"{source} + {self.expr(loop.start)}"
        self.decl_lines[len(self.lines)] = name
        self.emit(f"const {t} {name} = {value};")
        self.ranges[loop.var.name] = (start, start + n - 1)
        self.expr.scope.add(loop.var.name)

    def _let_decl(self, s: Let) -> None:
        name = self.names.var(s.var.name)
        self.decl_lines[len(self.lines)] = name
        self.emit(f"const {self.expr.ctype(s.value.dtype)} {name} = {self.expr(s.value)};")
        self.expr.scope.add(s.var.name)
        r = self.expr.interval(s.value)
        if r is not None:
            self.ranges[s.var.name] = r
        else:
            self.ranges.pop(s.var.name, None)

    def free(self, s: Stmt) -> frozenset:
        """Active threadIdx dims that some store in ``s`` reaches with no thread loop in ``s``
        binding them."""
        key = id(s)
        if key not in self._free:
            if isinstance(s, Store):
                r = frozenset(self.st.active)
            else:
                r = frozenset().union(*(self.free(c) for c in children(s)))
                if isinstance(s, For) and s.kind == "gpu_thread":
                    r = r - {self.st.thread_dims[id(s)]}
            self._free[key] = r
        return self._free[key]

    def binds(self, s: Stmt) -> frozenset:
        key = id(s)
        if key not in self._binds:
            self._binds[key] = frozenset(self.st.thread_dims[id(x)] for x in walk_stmts(s)
                                         if isinstance(x, For) and x.kind == "gpu_thread")
        return self._binds[key]

    # ---- statements ---------------------------------------------------------------------------
    def stmt(self, s: Stmt, bound: frozenset, blk: bool) -> None:
        need = self.free(s) - bound
        if need and not (self.binds(s) & need):
            cond = " && ".join(f"threadIdx.{_AXES[d]} == 0" for d in sorted(need))
            self.emit(f"if ({cond}) {{")
            self.depth += 1
            self._stmt(s, bound | need, blk)
            self.depth -= 1
            self.emit("}")
        else:
            self._stmt(s, bound, blk)
        if blk and id(s) in self.barrier_after:
            self.emit("__syncthreads();")

    def _stmt(self, s: Stmt, bound: frozenset, blk: bool) -> None:
        if isinstance(s, Store):
            self.emit(f"{self._access(s.buf, s.indices)} = {self.expr(s.value)};")
        elif isinstance(s, Seq):
            for i, c in enumerate(s.stmts):
                wrap = isinstance(c, (Let, Allocate)) and i < len(s.stmts) - 1 and \
                    self.decls.get(_decl_name(c), 0) > 1
                if wrap:
                    self.emit("{")
                    self.depth += 1
                self.stmt(c, bound, blk)
                if wrap:
                    self.depth -= 1
                    self.emit("}")
        elif isinstance(s, For):
            self._for(s, bound, blk)
        elif isinstance(s, If):
            self.emit(f"if ({self.expr(s.cond)}) {{")
            self._nested(s.then, bound, blk)
            if s.else_ is not None:
                self.emit("} else {")
                self._nested(s.else_, bound, blk)
            self.emit("}")
        elif isinstance(s, Let):
            self._let_decl(s)
            self.stmt(s.body, bound, blk)
            self.expr.scope.discard(s.var.name)
        elif isinstance(s, Allocate):
            home = self.st.homes[id(s.buf)]
            if home.kind != "shared":
                size = 1
                for d in home.keep:
                    size *= s.buf.shape[d]
                self.alloc_lines.add(len(self.lines))
                self.emit(f"{c_type(s.buf.dtype)} {self.names.buf(s.buf)}[{size}];")
            self.stmt(s.body, bound, blk)
        elif isinstance(s, Prefetch):
            # A CPU cache hint: GPU caches are left to the hardware.
            self.emit(f"// prefetch {self.names.buf(s.buf)} (not emitted)")
        else:
            raise CompileError(f"cuda backend, kernel {self.kname}: unknown statement "
                               f"{type(s).__name__}")

    def _nested(self, s: Stmt, bound: frozenset, blk: bool) -> None:
        self.depth += 1
        self.stmt(s, bound, blk)
        self.depth -= 1

    def _for(self, s: For, bound: frozenset, blk: bool) -> None:
        if s.kind == "gpu_thread":
            d = self.st.thread_dims[id(s)]
            n = const_value(s.extent)
            if n < self.st.block[d]:
                self.emit(f"if (threadIdx.{_AXES[d]} < {n}) {{")
            else:
                self.emit("{")
            self.depth += 1
            self._declare_loop_var(s, f"threadIdx.{_AXES[d]}")
            self.stmt(s.body, bound | {d}, False)
            self.depth -= 1
            self.emit("}")
            self.ranges.pop(s.var.name, None)
            self.expr.scope.discard(s.var.name)
            return
        if s.kind not in SEQUENTIAL_KINDS + ("unrolled", "vectorized"):
            raise CompileError(f"cuda backend, kernel {self.kname}: {s.kind} loop "
                               f"'{s.var.name}' cannot be rendered here")
        name = self.names.var(s.var.name)
        t = self.expr.ctype(s.var.dtype)
        start, n = const_value(s.start), const_value(s.extent)
        if s.kind == "unrolled":
            self.emit("#pragma unroll")
        elif s.kind == "rolled":
            self.emit("#pragma unroll 1")
        first = self.expr(s.start)
        end = self.expr(s.extent) if start == 0 else self.expr(Bin("add", s.start, s.extent))
        self.emit(f"for ({t} {name} = {first}; {name} < {end}; ++{name}) {{")
        self.expr.scope.add(s.var.name)
        if start is not None and n is not None:
            self.ranges[s.var.name] = (start, start + n - 1)
        else:
            lo = self.expr.interval(s.start)
            self.ranges[s.var.name] = (lo[0], lo[0] + 2 ** 62) if lo and lo[0] >= 0 else None
            if self.ranges[s.var.name] is None:
                del self.ranges[s.var.name]
        self._nested(s.body, bound, blk)
        self.ranges.pop(s.var.name, None)
        self.expr.scope.discard(s.var.name)
        self.emit("}")


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" "))


def _unused_decls(lines: list, decls: dict) -> set:
    """Indices of ``const T v = ...;`` lines whose variable is not used in its scope (the lines
    after it indented at least as deep), e.g. a thread index that a per-thread buffer no longer
    needs (nvcc rejects unused variables under -Werror); repeated until nothing changes."""
    dead: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, name in decls.items():
            if i in dead:
                continue
            pat = re.compile(rf"\b{re.escape(name)}\b")
            d, used, j = _indent(lines[i]), False, i + 1
            while j < len(lines) and _indent(lines[j]) >= d:
                if j not in dead and pat.search(lines[j]):
                    used = True
                    break
                j += 1
            if not used:
                dead.add(i)
                changed = True
    return dead


def _tidy(lines: list, dead: set, decls: set) -> list:
    """Drop the ``dead`` lines, then bare ``{ ... }`` blocks that declare nothing directly
    (left behind by dropped thread index declarations), dedenting their contents."""
    drop = set(dead)
    shift = [0] * len(lines)
    for i, line in enumerate(lines):
        if i in drop or line.strip() != "{":
            continue
        d = _indent(line)
        j = next(k for k in range(i + 1, len(lines)) if k not in drop and _indent(lines[k]) <= d)
        if lines[j].strip() != "}" or _indent(lines[j]) != d:
            continue
        if any(k in decls for k in range(i + 1, j) if _indent(lines[k]) == d + 2):
            continue
        drop |= {i, j}
        for k in range(i + 1, j):
            shift[k] += 2
    return [x[shift[i]:] for i, x in enumerate(lines) if i not in drop]


def _decl_name(s: Stmt) -> str:
    return s.var.name if isinstance(s, Let) else f"buf:{s.buf.name}"


def _decl_counts(root: Stmt) -> dict:
    counts: dict = {}
    for s in walk_stmts(root):
        if isinstance(s, (Let, Allocate)):
            counts[_decl_name(s)] = counts.get(_decl_name(s), 0) + 1
    return counts


def _barriers(st: Stage) -> set:
    """ids of block-scope leaves that need ``__syncthreads()`` after them."""
    if st.threads == 1:
        return set()
    leaves: list = []       # (leaf, enclosing block-scope loops)

    def walk(s: Stmt, loops: tuple) -> None:
        if (isinstance(s, For) and s.kind == "gpu_thread") or not has_thread_loop(s):
            leaves.append((s, loops))
            return
        inner = loops + (id(s),) if isinstance(s, For) else loops
        for c in children(s):
            walk(c, inner)

    walk(st.body, ())
    sets = []
    for leaf, _ in leaves:
        r, w = set(), set()
        for buf, _, is_store, _ in accesses(leaf):
            home = st.homes.get(id(buf))
            if home is None or home.kind == "shared":
                (w if is_store else r).add(id(buf))
        sets.append((r, w))
    out = set()
    for i, (leaf, loops) in enumerate(leaves):
        after = [j for j, (_, lp) in enumerate(leaves) if j > i or set(lp) & set(loops)]
        r_o = set().union(*(sets[j][0] for j in after)) if after else set()
        w_o = set().union(*(sets[j][1] for j in after)) if after else set()
        r, w = sets[i]
        if w & (r_o | w_o) or r & w_o:
            out.add(id(leaf))
    return out
