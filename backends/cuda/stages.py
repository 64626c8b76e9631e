"""Launch structure of a loop IR kernel on a GPU: stages, block / thread binding, buffer homes.

A kernel body is a sequence of top-level statements; each becomes one ``__global__`` function
(a *stage*; stages run one after another, so a stage may read what a preceding one wrote
anywhere in the grid). In a stage:

- the outer chain of ``gpu_block`` loops (only Let statements may sit between them) is the grid:
  the innermost block loop is blockIdx.x, the next blockIdx.y, then blockIdx.z;
- below it is *block scope*: code every thread of a block runs in lockstep order (control flow
  there is uniform across the block, so ``__syncthreads()`` may be placed there);
- ``gpu_thread`` loops bind threadIdx: a thread loop with no thread loop inside is threadIdx.x,
  one with a thread loop (x) inside is threadIdx.y, then threadIdx.z. blockDim per dimension is the
  largest extent bound to it; a loop with a smaller extent is guarded.

Local buffers (Allocate) get a home: ``local`` (a per-thread C array: allocated inside a thread
loop, or used by one block-scope statement that a single thread runs), ``private`` (allocated at
block scope but every access indexes some dimensions by the enclosing thread loop variables so
that each element belongs to one thread: those dimensions are dropped and each thread keeps its
part in registers), or ``shared`` (``__shared__``, one copy per block).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cnncc.ir import CompileError
from cnncc.ir.loop_walk import const_value, walk_exprs, walk_stmts
from cnncc.ir.loop import Allocate, For, If, Let, Load, Seq, Stmt, Store, Var

MAX_THREADS = 1024
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
MAX_STATIC_SHARED = 48 * 1024


@dataclass
class Home:
    """Where a local buffer lives: kind is local | private | shared; ``keep`` lists the
    buffer dimensions that remain in storage (private buffers drop the thread-indexed ones)."""

    kind: str
    keep: tuple


@dataclass
class Stage:
    root: Stmt
    chain: list                     # For (gpu_block) and Let nodes from the root, outer first
    body: Stmt                      # block scope
    grid: list = field(default_factory=lambda: [1, 1, 1])
    block: list = field(default_factory=lambda: [1, 1, 1])
    block_dims: dict = field(default_factory=dict)    # id(For) -> blockIdx dim
    thread_dims: dict = field(default_factory=dict)   # id(For) -> threadIdx dim
    homes: dict = field(default_factory=dict)         # id(Buffer) -> Home

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def active(self) -> set[int]:
        """threadIdx dimensions with more than one thread."""
        return {d for d in range(3) if self.block[d] > 1}

    def shared_bytes(self) -> int:
        return sum(b.size * b.dtype.itemsize for b in self.shared_buffers())

    def shared_buffers(self) -> list:
        return [s.buf for s in walk_stmts(self.body) if isinstance(s, Allocate)
                and self.homes[id(s.buf)].kind == "shared"]


def _err(kernel: str, msg: str) -> CompileError:
    return CompileError(f"cuda backend, kernel {kernel}: {msg}")


def split_stages(kname: str, body: Stmt) -> list[Stage]:
    """Analyze every top-level statement of a kernel body as one launch."""
    roots = body.stmts if isinstance(body, Seq) else [body]
    return [_analyze(kname, r) for r in roots]


def _analyze(kname: str, root: Stmt) -> Stage:
    chain, node = [], root
    while (isinstance(node, For) and node.kind == "gpu_block") or isinstance(node, Let):
        chain.append(node)
        node = node.body
    st = Stage(root, chain, node)
    if isinstance(node, Allocate) and any(isinstance(s, For) and s.kind == "gpu_block"
                                          for s in walk_stmts(node)):
        raise _err(kname, f"local buffer '{node.buf.name}' allocated outside the block loops "
                          f"(one copy for the whole grid cannot be expressed)")
    blocks = [s for s in chain if isinstance(s, For)]
    if len(blocks) > 3:
        raise _err(kname, f"{len(blocks)} gpu_block loops; at most 3 (fuse some)")
    for s in walk_stmts(node):
        if isinstance(s, For) and s.kind == "gpu_block":
            raise _err(kname, f"gpu_block loop '{s.var.name}' is not in the outer band of block "
                              f"loops (only Let may sit between block loops)")
        if isinstance(s, For) and s.kind == "parallel":
            raise _err(kname, f"parallel loop '{s.var.name}' is CPU-only; bind it with "
                              f"gpu_block / gpu_thread")
    for d, loop in enumerate(reversed(blocks)):
        n = _const_extent(kname, loop)
        if n > MAX_GRID[d]:
            raise _err(kname, f"gpu_block loop '{loop.var.name}' (blockIdx.{'xyz'[d]}) has "
                              f"{n} iterations, more than {MAX_GRID[d]}")
        st.grid[d] = n
        st.block_dims[id(loop)] = d
    _bind_threads(kname, st)
    _place_buffers(kname, st)
    if st.shared_bytes() > MAX_STATIC_SHARED:
        raise _err(kname, f"{st.shared_bytes()} bytes of shared memory, more than the "
                          f"{MAX_STATIC_SHARED} a block may declare statically")
    return st


def _const_extent(kname: str, loop: For) -> int:
    n = const_value(loop.extent)
    if n is None or const_value(loop.start) is None:
        raise _err(kname, f"{loop.kind} loop '{loop.var.name}' needs a constant start and "
                          f"extent (they set the launch geometry)")
    if n < 1:
        raise _err(kname, f"{loop.kind} loop '{loop.var.name}' has extent {n}")
    return n


def _bind_threads(kname: str, st: Stage) -> None:
    def height(s: Stmt) -> int:
        """Largest thread-loop height inside ``s`` (-1 when none); records dims on the way."""
        kids = children(s)
        h = max((height(c) for c in kids), default=-1)
        if isinstance(s, For) and s.kind == "gpu_thread":
            h += 1
            if h > 2:
                raise _err(kname, f"gpu_thread loops nest {h + 1} deep below "
                                  f"'{s.var.name}'; at most 3 (fuse some)")
            n = _const_extent(kname, s)
            st.thread_dims[id(s)] = h
            st.block[h] = max(st.block[h], n)
        return h

    height(st.body)
    if st.threads > MAX_THREADS:
        raise _err(kname, f"blocks of {st.block[0]}x{st.block[1]}x{st.block[2]} = {st.threads} "
                          f"threads, more than {MAX_THREADS}")


def children(s: Stmt) -> list:
    """The statements directly nested in ``s``."""
    if isinstance(s, (For, Let, Allocate)):
        return [s.body]
    if isinstance(s, Seq):
        return list(s.stmts)
    if isinstance(s, If):
        return [s.then] + ([s.else_] if s.else_ is not None else [])
    return []


def has_thread_loop(s: Stmt) -> bool:
    return any(isinstance(x, For) and x.kind == "gpu_thread" for x in walk_stmts(s))


def block_leaves(s: Stmt) -> list[Stmt]:
    """Block-scope leaf statements of ``s``: thread loops, and maximal statements with no thread
    loop inside (each runs as one unit between barriers)."""
    if (isinstance(s, For) and s.kind == "gpu_thread") or not has_thread_loop(s):
        return [s]
    return [x for c in children(s) for x in block_leaves(c)]


def accesses(s: Stmt):
    """(buffer, indices, is_store, enclosing thread loops) of every access inside ``s``."""
    def go(x: Stmt, loops: tuple):
        if isinstance(x, Store):
            yield x.buf, x.indices, True, loops
        for e in _own_exprs(x):
            for sub in walk_exprs(e):
                if isinstance(sub, Load):
                    yield sub.buf, sub.indices, False, loops
        inner = loops + (x,) if isinstance(x, For) and x.kind == "gpu_thread" else loops
        for c in children(x):
            yield from go(c, inner)
    yield from go(s, ())


def _own_exprs(s: Stmt) -> list:
    if isinstance(s, For):
        return [s.start, s.extent]
    if isinstance(s, Store):
        return list(s.indices) + [s.value]
    if isinstance(s, If):
        return [s.cond]
    if isinstance(s, Let):
        return [s.value]
    return []


def _place_buffers(kname: str, st: Stage) -> None:
    leaves = block_leaves(st.body)

    def visit(s: Stmt, in_thread: bool) -> None:
        if isinstance(s, Allocate):
            home = Home("local", tuple(range(len(s.buf.shape)))) if in_thread \
                else _block_home(st, s, leaves)
            old = st.homes.get(id(s.buf))
            if old is not None and (old != home or home.kind == "shared"):
                raise _err(kname, f"local buffer '{s.buf.name}' is allocated at two places "
                                  f"that need different storage; use two buffers")
            st.homes[id(s.buf)] = home
        inner = in_thread or (isinstance(s, For) and s.kind == "gpu_thread")
        for c in children(s):
            visit(c, inner)

    visit(st.body, False)


def _block_home(st: Stage, alloc: Allocate, leaves: list) -> Home:
    buf = alloc.buf
    full = tuple(range(len(buf.shape)))
    users = [leaf for leaf in leaves if any(a[0] is buf for a in accesses(leaf))]
    if len(users) <= 1 and not any(a[0] is buf for leaf in users for a in accesses(leaf)
                                   if a[3]):
        # One block-scope statement without thread loops uses it: one thread runs that.
        return Home("local", full)
    dims = _private_dims(st, buf, list(accesses(alloc.body)))
    if dims is not None:
        return Home("private", tuple(d for d in full if d not in dims))
    return Home("shared", full)


def _private_dims(st: Stage, buf, accs: list) -> dict | None:
    """Buffer dims -> threadIdx dims when every access indexes those buffer dims by the enclosing
    thread loop var of that threadIdx dim (start 0), covering every active threadIdx dim."""
    mapping: dict | None = None
    for b, indices, _, loops in accs:
        if b is not buf:
            continue
        by_var = {lp.var.name: st.thread_dims[id(lp)] for lp in loops
                  if const_value(lp.start) == 0}
        here = {p: by_var[i.name] for p, i in enumerate(indices)
                if isinstance(i, Var) and i.name in by_var}
        mapping = here if mapping is None else \
            {p: t for p, t in mapping.items() if here.get(p) == t}
    if not mapping or set(mapping.values()) != st.active or \
            len(set(mapping.values())) != len(mapping):
        return None
    return mapping
