"""compute_at: move a producer stage inside a consumer loop, computing only the tile it reads.

Kernel form required: ``Allocate(P, Seq[..., producer, ..., consumer, ...])`` where the producer
is a perfect loop nest whose vars index P in order (``for a: for b: ... P[a, b] = f(a, b)``,
the innermost body may be any statement storing P[a, b]). Inside the consumer loop L, every read
of P must be affine; the box of P read per iteration of L (interval bounds over the loops inside
L) must have constant extents. The producer is re-emitted inside L over that box into a local
buffer, guarded to P's bounds, and the reads are redirected to it.
"""
from __future__ import annotations

from .loop_walk import (bounds, const_value, loop_path, map_expr, map_stmt, replace_node, simplify,
                     substitute_stmt, walk_stmts)
from .errors import ScheduleError
from .loop import (Allocate, And, Buffer, Cmp, Const, For, If, Kernel, Load, Prefetch, Seq, Stmt,
                   Store, Var, seq)


def _err(msg: str) -> ScheduleError:
    return ScheduleError(msg)


def _find_alloc(s: Stmt, name: str) -> Allocate | None:
    for x in walk_stmts(s):
        if isinstance(x, Allocate) and x.buf.name == name:
            return x
    return None


def compute_at(kernel: Kernel, producer: str, loop_name: str) -> Kernel:
    alloc = _find_alloc(kernel.body, producer)
    if alloc is None:
        raise _err(f"compute_at({producer}): '{producer}' is not a locally allocated "
                   "intermediate buffer of the kernel")
    buf = alloc.buf
    stages = alloc.body.stmts if isinstance(alloc.body, Seq) else [alloc.body]
    prod_idx = [i for i, st in enumerate(stages)
                if any(isinstance(x, Store) and x.buf is buf for x in walk_stmts(st))]
    if len(prod_idx) != 1:
        raise _err(f"compute_at({producer}): expected one stage storing it, found {len(prod_idx)}")
    pstage = stages[prod_idx[0]]
    band, node = [], pstage
    while isinstance(node, For) and len(band) < len(buf.shape):
        band.append(node)
        node = node.body
    pvars = [b.var.name for b in band]
    stores = [x for x in walk_stmts(node) if isinstance(x, Store) and x.buf is buf]
    ok = len(band) == len(buf.shape) and all(
        const_value(b.start) == 0 and const_value(b.extent) == d for b, d in zip(band, buf.shape))
    for st in stores:
        ok = ok and [getattr(i, "name", None) for i in st.indices] == pvars
    if not ok:
        raise _err(f"compute_at({producer}): the producer must be a loop nest over the whole "
                   f"buffer storing {producer}[loop vars in order]")
    pbody = node
    cpath = None
    for i, st in enumerate(stages):
        p = loop_path(st, loop_name)
        if p is not None:
            cpath, cidx = p, i
    if cpath is None or cidx <= prod_idx[0]:
        raise _err(f"compute_at({producer}, {loop_name}): no loop '{loop_name}' in a stage after "
                   f"the producer")
    for i, st in enumerate(stages):
        if i not in (prod_idx[0], cidx) and _reads(st, buf):
            raise _err(f"compute_at({producer}): stage {i} also reads it (it must have one "
                       "consumer)")
    loop: For = cpath[-1]
    outside = [x for x in cpath[:-1]]
    if any(_reads(x, buf) for x in _shallow(outside, loop)):
        raise _err(f"compute_at({producer}, {loop_name}): it is read outside loop '{loop_name}'")
    # Ranges of the loops strictly inside L (L's own var stays symbolic).
    ranges = {}
    for x in walk_stmts(loop.body):
        if isinstance(x, For):
            ranges[x.var.name] = (x.start, simplify(x.start + x.extent - 1))
    lo0, offs = None, None
    for x in walk_stmts(loop.body):
        exprs = []
        if isinstance(x, Store):
            exprs = list(x.indices) + [x.value]
        elif isinstance(x, If):
            exprs = [x.cond]
        elif isinstance(x, For):
            exprs = [x.start, x.extent]
        for e in exprs:
            for ld in _loads(e, buf):
                bs = [bounds(i, ranges) for i in ld.indices]
                if any(b is None for b in bs):
                    raise _err(f"compute_at({producer}): a read of it has a non-affine index")
                lo0 = [b[0] for b in bs] if lo0 is None else lo0
                cur = [(const_value(b[0] - r), const_value(b[1] - r)) for b, r in zip(bs, lo0)]
                if any(a is None or b is None for a, b in cur):
                    raise _err(f"compute_at({producer}): its reads inside '{loop_name}' do not "
                               "cover one box of constant size")
                offs = cur if offs is None else [(min(a, c), max(b, d))
                                                 for (a, b), (c, d) in zip(offs, cur)]
    if lo0 is None:
        raise _err(f"compute_at({producer}, {loop_name}): it is not read inside that loop")
    los = [simplify(r + a) for r, (a, _) in zip(lo0, offs)]
    shape = [b - a + 1 for a, b in offs]
    local = Buffer(f"{producer}_tile", buf.dtype, shape, "local")
    tvars = [Var(f"{v}_c") for v in pvars]
    mapping = {b.var: simplify(lo + tv) for b, lo, tv in zip(band, los, tvars)}
    inner = substitute_stmt(pbody, mapping)
    inner = _redirect_stores(inner, buf, local, tvars)
    conds = None
    for v, d in zip(mapping.values(), buf.shape):
        c = And(Cmp("ge", v, Const(0)), Cmp("lt", v, Const(d)))
        conds = c if conds is None else And(conds, c)
    tile: Stmt = If(conds, inner)
    for tv, n in reversed(list(zip(tvars, shape))):
        tile = For(tv, n, tile)
    new_body = map_stmt(loop.body, lambda e: _redirect_loads(e, buf, local, los))
    new_loop = For(loop.var, loop.extent, Allocate(local, seq(tile, new_body)), loop.kind,
                   loop.start)
    consumer = replace_node(stages[cidx], loop, new_loop)
    rest = [consumer if i == cidx else st for i, st in enumerate(stages) if i != prod_idx[0]]
    body = replace_node(kernel.body, alloc, seq(*rest))
    # Prefetches of the producer would name a buffer that no longer exists (its tile is
    # computed in place): hints, so they are dropped.
    for x in list(walk_stmts(body)):
        if isinstance(x, Prefetch) and x.buf is buf:
            body = replace_node(body, x, Seq([]))
    return Kernel(kernel.name, kernel.params, body)


def _shallow(path: list, loop: For):
    """Statements along ``path`` other than the branch that leads to ``loop``."""
    for st in path:
        if isinstance(st, Seq):
            for x in st.stmts:
                if not any(y is loop for y in walk_stmts(x)):
                    yield x


def _loads(e, buf: Buffer):
    from .loop_walk import walk_exprs
    return [x for x in walk_exprs(e) if isinstance(x, Load) and x.buf is buf]


def _reads(st: Stmt, buf: Buffer) -> bool:
    from .loop_walk import stmt_exprs
    return any(_loads(e, buf) for _, e in stmt_exprs(st))


def _redirect_loads(e, buf: Buffer, local: Buffer, los: list):
    def fn(x):
        if isinstance(x, Load) and x.buf is buf:
            idx = [simplify(map_expr(i, fn) - lo) for i, lo in zip(x.indices, los)]
            return Load(local, tuple(idx))
        return None
    return map_expr(e, fn)


def _redirect_stores(s: Stmt, buf: Buffer, local: Buffer, tvars: list) -> Stmt:
    if isinstance(s, Store) and s.buf is buf:
        return Store(local, tuple(tvars), s.value)
    if isinstance(s, For):
        return For(s.var, s.extent, _redirect_stores(s.body, buf, local, tvars), s.kind, s.start)
    if isinstance(s, Seq):
        return Seq([_redirect_stores(x, buf, local, tvars) for x in s.stmts])
    if isinstance(s, If):
        return If(s.cond, _redirect_stores(s.then, buf, local, tvars),
                  None if s.else_ is None else _redirect_stores(s.else_, buf, local, tvars),
                  s.masked)
    return s
