"""Loop IR -> llvmlite IR.

Each Kernel becomes ``void NAME(T* noalias p0, ...)``. Loop kinds: serial (a phi loop; rolled:
one with llvm.loop.unroll.disable), unrolled
(body emitted once per iteration), vectorized (body emitted once on <lanes x T> values; bodies that
cannot be vectorized are emitted once per lane), parallel (outlined into
NAME_parK(ptr ctx, i32 thread, i32 team) and run by cnncc's thread pool, thread_pool.py: every
participant takes chunks of the iteration range from an atomic counter). Prefetch becomes
llvm.prefetch, once per vector of lanes.
"""
from __future__ import annotations

import llvmlite.ir as ir

from cnncc.ir import CompileError
from cnncc.ir.loop_walk import const_value, stmt_exprs, walk_exprs, walk_stmts
from cnncc.ir.loop import (SEQUENTIAL_KINDS, Allocate, For, If, Kernel, Let, Load, Prefetch, Seq,
                           Stmt, Store, Var)
from . import thread_pool
from .exprs import I32, I64, PTR, ExprEmitter, lltype
from .indexing import IndexCache, memory_resident, uses_any

# Unrolled loops whose variable indexes no scratch buffer are emitted as loops with
# llvm.loop.unroll.full (False: every unrolled loop is unrolled here, as before; for A/B runs).
LLVM_UNROLLS = True


class ModuleBuilder:
    """An llvmlite module holding kernels (and the program entry function)."""

    def __init__(self, name: str, lanes: int, threads: int, openmp: bool = True,
                 flags: frozenset[str] = frozenset()):
        self.module = ir.Module(name=name)
        # Calls out of the code (the C library's memcpy/memset that LLVM emits, cnncc's thread
        # pool) load their target from the GOT instead of going through PLT stubs: the JIT's
        # memory manager reserves an object's GOT with its sections, not stubs (jit.py).
        self.module.add_named_metadata("llvm.module.flags",
                                       [ir.Constant(I32, 7), "RtLibUseGOT", ir.Constant(I32, 1)])
        self.lanes = lanes
        self.flags = flags              # the target's CPU features (exprs.py picks instructions)
        self.threads = threads
        self.openmp = openmp and threads > 1
        self.kernels: dict[str, ir.Function] = {}
        self._outlined = 0
        self._hints: dict[str, ir.MDValue] = {}
        self._loops = 0
        self.memory_bufs: set = set()     # of the kernel being emitted: memory_resident()

    def add_kernel(self, kernel: Kernel) -> ir.Function:
        if kernel.name in self.kernels:
            raise CompileError(f"internal error: kernel {kernel.name} defined twice")
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * len(kernel.params))
        fn = ir.Function(self.module, fnty, name=kernel.name)
        fn.attributes.add("nounwind")
        for arg, buf in zip(fn.args, kernel.params):
            arg.name = buf.name
            arg.add_attribute("noalias")
        bufs = {b.name: a for b, a in zip(kernel.params, fn.args)}
        self.memory_bufs = memory_resident(kernel.body)
        em = FunctionEmitter(self, fn, bufs, {})
        em.emit(kernel.body)
        em.b.ret_void()
        self.kernels[kernel.name] = fn
        return fn

    def loop_id(self, hint: str) -> ir.MDValue:
        """A new loop ID (self-referential, as LLVM requires) carrying ``hint``
        (llvm.loop.unroll.full or llvm.loop.unroll.disable)."""
        if hint not in self._hints:
            self._hints[hint] = self.module.add_metadata([ir.MetaDataString(self.module, hint)])
        self._loops += 1
        md = self.module.add_metadata([ir.MetaDataString(self.module,
                                                         f"cnncc.loop{self._loops}")])
        md.operands = (md, self._hints[hint])
        return md

    def outlined_name(self, base: str) -> str:
        self._outlined += 1
        return f"{base}_par{self._outlined}"

    def __str__(self) -> str:
        return str(self.module)


class FunctionEmitter(ExprEmitter):
    def __init__(self, mb: ModuleBuilder, fn: ir.Function, bufs: dict, env: dict):
        self.mb = mb
        self.module = mb.module
        self.fn = fn
        self.lanes = mb.lanes
        self.flags = mb.flags
        entry = fn.append_basic_block("entry")
        self.alloca_b = ir.IRBuilder(entry)
        body = fn.append_basic_block("body")
        self.alloca_b.branch(body)
        self.alloca_b.position_at_start(entry)
        self.b = ir.IRBuilder(body)
        self.bufs = dict(bufs)
        self.env = dict(env)
        self.vvar = None
        self.vec_lets: set = set()
        self.scalar_lane = False
        self.lane_copy = False         # emitting a lane other than a vector's first, one by one
        self.index = IndexCache()
        self.int_values: dict = {}    # exprs.py: integer values emitted, by block and operands

    # ---- statements ----------------------------------------------------------------------------
    def emit(self, s: Stmt) -> None:
        if isinstance(s, Seq):
            for x in s.stmts:
                self.emit(x)
        elif isinstance(s, Store):
            self.store(s.buf, s.indices, s.value)
        elif isinstance(s, For):
            self.emit_for(s)
        elif isinstance(s, If):
            self.emit_if(s)
        elif isinstance(s, Let):
            val = self.ev(s.value)
            self.env[s.var.name] = val
            if val[1]:
                self.vec_lets.add(s.var.name)
            self.emit(s.body)
            self.env.pop(s.var.name, None)
            self.vec_lets.discard(s.var.name)
        elif isinstance(s, Allocate):
            ety = lltype(s.buf.dtype)
            p = self.alloca_b.alloca(ir.ArrayType(ety, s.buf.size), name=s.buf.name)
            p.align = 64
            # Opaque pointers everywhere: element types are given at each GEP / load.
            p.type = PTR
            self.bufs[s.buf.name] = p
            self.emit(s.body)
            del self.bufs[s.buf.name]
        elif isinstance(s, Prefetch):
            self.prefetch(s)
        else:
            raise CompileError(f"internal error: cannot emit {type(s).__name__}")

    def prefetch(self, s: Prefetch) -> None:
        """llvm.prefetch (read, data cache) of the line holding s.buf[s.indices]; in a
        vectorized loop once per vector (the address of its first lane), not per lane."""
        if self.lane_copy:
            return
        kind, p, _ = self.address(s.buf, s.indices)
        fn = self.intrinsic("llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
        # locality 3 keeps the line in every level (L1), 2 in L2 and beyond, 1 in L3.
        self.b.call(fn, [p[0] if kind == "lanes" else p, ir.Constant(I32, 0),
                         ir.Constant(I32, 4 - s.level), ir.Constant(I32, 1)])

    def emit_if(self, s: If) -> None:
        if self.vvar is not None and self.lane_dep(s.cond):
            mask, vec = self.ev(s.cond)
            mask = mask if vec else self.splat(mask)
            for st in walk_stmts(s.then):
                if isinstance(st, Store):
                    self.store(st.buf, st.indices, st.value, mask)
            return
        cond = self.ev_scalar(s.cond)
        if s.else_ is None:
            with self.b.if_then(cond):
                self.emit(s.then)
        else:
            with self.b.if_else(cond) as (then, other):
                with then:
                    self.emit(s.then)
                with other:
                    self.emit(s.else_)

    def emit_for(self, s: For) -> None:
        n = const_value(s.extent)
        if s.kind in ("unrolled", "vectorized") and n is None:
            raise CompileError(f"internal error: {s.kind} loop '{s.var.name}' needs a constant "
                               "extent")
        if s.kind == "unrolled" and LLVM_UNROLLS and self.vvar is None and self._llvm_unrolls(s):
            # A loop LLVM unrolls (same code after O3, a fraction of the IR to build and parse).
            start = self.ev_scalar(s.start)
            self.serial_loop(s.var.name, start, self._plus(start, n),
                             lambda: self.emit(s.body), unroll=True)
        elif s.kind == "unrolled":
            start = self.ev_scalar(s.start)
            for k in range(n):
                self.env[s.var.name] = (self._plus(start, k), False)
                self.emit(s.body)
            self.env.pop(s.var.name, None)
        elif s.kind == "vectorized":
            self.emit_vector(s, n)
        elif s.kind == "parallel" and self.mb.openmp and self.vvar is None:
            self.emit_parallel(s)
        elif s.kind in SEQUENTIAL_KINDS + ("parallel",):
            start = self.ev_scalar(s.start)
            self.serial_loop(s.var.name, start, self.b.add(start, self.ev_scalar(s.extent)),
                             lambda: self.emit(s.body), rolled=s.kind == "rolled")
        else:
            raise CompileError(f"loop kind {s.kind} is not supported on target llvm")

    def _plus(self, v: ir.Value, k: int) -> ir.Value:
        """``v + k``: a constant when ``v`` is one (the iterations of loops unrolled here)."""
        if isinstance(v, ir.Constant):
            return ir.Constant(I64, v.constant + k)
        return self.b.add(v, ir.Constant(I64, k))

    def _llvm_unrolls(self, s: For) -> bool:
        """Whether unrolled loop ``s`` may be left to LLVM's full unroll: its variable must not
        index a scratch buffer (register tiles stay promotable to registers before the unroll
        pass runs) and its body must allocate nothing."""
        if const_value(s.extent) < 2:
            return False
        dep = {s.var.name}
        for st in walk_stmts(s.body):
            if isinstance(st, Let) and uses_any(st.value, dep):
                dep.add(st.var.name)
        for st in walk_stmts(s.body):
            if isinstance(st, Allocate) or (
                    isinstance(st, (Store, Prefetch)) and not self._global(st.buf)
                    and any(uses_any(i, dep) for i in st.indices)):
                return False
        return not any(isinstance(x, Load) and not self._global(x.buf)
                       and any(uses_any(i, dep) for i in x.indices)
                       for _, e in stmt_exprs(s.body) for x in walk_exprs(e))

    def _global(self, buf) -> bool:
        """Whether ``buf`` lives in memory whatever the unrolling: a kernel argument, a buffer
        shared with a parallel loop's body, or a scratch buffer some access indexes at run
        time (never promoted to registers)."""
        p = self.bufs.get(buf.name)
        return (isinstance(p, ir.Argument) or getattr(p, "_cnncc_shared", False)
                or buf.name in self.mb.memory_bufs)

    def serial_loop(self, name: str, lo: ir.Value, hi: ir.Value, body,
                    unroll: bool = False, rolled: bool = False) -> None:
        pre = self.b.block
        header = self.fn.append_basic_block(f"{name}.head")
        blk = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.done")
        self.b.branch(header)
        self.b.position_at_end(header)
        phi = self.b.phi(I64, name=name)
        phi.add_incoming(lo, pre)
        self.b.cbranch(self.b.icmp_signed("<", phi, hi), blk, done)
        self.b.position_at_end(blk)
        self.env[name] = (phi, False)
        body()
        nxt = self.b.add(phi, ir.Constant(I64, 1))
        phi.add_incoming(nxt, self.b.block)
        latch = self.b.branch(header)
        if unroll or rolled:
            latch.set_metadata("llvm.loop", self.mb.loop_id(
                "llvm.loop.unroll.full" if unroll else "llvm.loop.unroll.disable"))
        self.b.position_at_end(done)
        self.env.pop(name, None)

    # ---- vectorized loops ----------------------------------------------------------------------
    def emit_vector(self, s: For, n: int) -> None:
        start = self.ev_scalar(s.start)
        full, rest = divmod(n, self.lanes)
        if self.vvar is not None or not self._vectorizable(s):
            outer = self.lane_copy
            for k in range(n):
                self.lane_copy = outer or k % self.lanes != 0
                self.env[s.var.name] = (self._plus(start, k), False)
                self.emit(s.body)
            self.lane_copy = outer
            self.env.pop(s.var.name, None)
            return
        for c in range(full):
            self._vector_chunk(s, self._plus(start, c * self.lanes))
        outer = self.lane_copy
        for k in range(full * self.lanes, n):     # the remainder lanes, one by one
            self.lane_copy = outer or k > full * self.lanes
            self.env[s.var.name] = (self._plus(start, k), False)
            self.emit(s.body)
        self.lane_copy = outer
        self.env.pop(s.var.name, None)

    def _vector_chunk(self, s: For, base: ir.Value) -> None:
        self.vvar = s.var.name
        self.env[s.var.name] = (base, False)
        try:
            self.emit(s.body)
        finally:
            self.vvar = None
            self.vec_lets = set()

    def _vectorizable(self, s: For) -> bool:
        """Lane-dependent control flow, scratch buffers or one-element stores run per lane."""
        dep = {s.var.name}
        for st in walk_stmts(s.body):
            if isinstance(st, Let) and uses_any(st.value, dep):
                dep.add(st.var.name)
        for st in walk_stmts(s.body):
            if isinstance(st, Allocate):
                return False
            if isinstance(st, If) and uses_any(st.cond, dep) and not (
                    st.masked and st.else_ is None
                    and all(isinstance(x, (Store, Seq)) for x in walk_stmts(st.then))):
                return False
            if isinstance(st, For) and (uses_any(st.extent, dep) or uses_any(st.start, dep)):
                return False
            if isinstance(st, Store) and not any(uses_any(i, dep) for i in st.indices):
                return False
        return True

    # ---- parallel loops ------------------------------------------------------------------------
    def emit_parallel(self, s: For) -> None:
        bound = {x.var.name for x in walk_stmts(s) if isinstance(x, (For, Let))}
        names = sorted({v.name for _, e in stmt_exprs(s) for v in walk_exprs(e)
                        if isinstance(v, Var) and v.name not in bound})
        bufs = sorted({x.buf.name for _, e in stmt_exprs(s) for x in walk_exprs(e)
                       if isinstance(x, Load)} | {x.buf.name for x in walk_stmts(s)
                                                 if isinstance(x, (Store, Prefetch))})
        local = {x.buf.name for x in walk_stmts(s) if isinstance(x, Allocate)}
        bufs = [b for b in bufs if b not in local]
        for b in bufs:
            if not isinstance(self.bufs[b], ir.Argument) and not getattr(
                    self.bufs[b], "_cnncc_shared", False):
                raise CompileError(f"parallel loop '{s.var.name}' uses scratch buffer {b} "
                                   "allocated outside it (each thread needs its own)")
        vals = [self.env[n][0] for n in names]
        start = self.ev_scalar(s.start)
        extent = self.ev_scalar(s.extent)
        # The last field is the shared "next iteration" counter of the dynamic schedule.
        fields = [PTR] * len(bufs) + [v.type for v in vals] + [I64, I64, I64]
        sty = ir.LiteralStructType(fields)
        ctx = self.alloca_b.alloca(sty, name="parctx")
        ctx.type = PTR
        zero64 = ir.Constant(I64, 0)
        for i, v in enumerate([self.bufs[b] for b in bufs] + vals + [start, extent, zero64]):
            self.b.store(v, self.b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, i)],
                                       source_etype=sty))
        fname = self.mb.outlined_name(self.fn.name)
        # The chunk [lo, hi) runs in a function of its own whose buffer arguments are noalias,
        # like a kernel's: pointers loaded from the context struct carry no aliasing facts, and
        # LLVM then reloaded loop-invariant table entries per element instead of vectorizing
        # (a NCHW channel shuffle copy ran 3.4x slower at 2 threads than at 1). It is internal
        # with one call site: LLVM inlines it, turning noalias into scoped alias metadata.
        cfn = ir.Function(self.module, ir.FunctionType(
            ir.VoidType(), [PTR] * len(bufs) + [v.type for v in vals] + [I64, I64, I64]),
            name=fname + "_chunk")
        cfn.linkage = "internal"
        cfn.attributes.add("nounwind")
        for arg, b in zip(cfn.args, bufs):
            arg.name = b
            arg.add_attribute("noalias")
            arg._cnncc_shared = True
        chunk_em = FunctionEmitter(self.mb, cfn, dict(zip(bufs, cfn.args)), {})
        for n, v in zip(names, cfn.args[len(bufs):]):
            chunk_em.env[n] = (v, False)
        base, c_lo, c_hi = cfn.args[-3:]
        name = s.var.name

        def body():
            i = chunk_em.env[name][0]
            chunk_em.env[name] = (chunk_em.b.add(i, base), False)
            chunk_em.emit(s.body)

        chunk_em.serial_loop(name, c_lo, c_hi, body)
        chunk_em.b.ret_void()

        pfn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I32, I32]),
                          name=fname)
        pfn.linkage = "internal"
        pfn.attributes.add("nounwind")
        sub = FunctionEmitter(self.mb, pfn, {}, {})
        loaded = []
        for i, ty in enumerate(fields[:-1]):
            p = sub.b.gep(pfn.args[0], [ir.Constant(I32, 0), ir.Constant(I32, i)],
                          source_etype=sty)
            loaded.append(sub.b.load(p, typ=ty))
        counter = sub.b.gep(pfn.args[0], [ir.Constant(I32, 0), ir.Constant(I32, len(fields) - 1)],
                            source_etype=sty)
        lo_s, ext_s = loaded[-2], loaded[-1]
        # Dynamic schedule: threads grab chunks of ~1/(4 * threads) of the range from an atomic
        # counter, so a thread the OS preempted (shared machines) does not hold up the rest.
        nt = sub.b.sext(pfn.args[2], I64)          # the team size (thread_pool.py)
        one = ir.Constant(I64, 1)
        chunk = sub.b.sdiv(ext_s, sub.b.mul(nt, ir.Constant(I64, 4)))
        chunk = sub.b.select(sub.b.icmp_signed("<", chunk, one), one, chunk)
        grab = pfn.append_basic_block("grab")
        work = pfn.append_basic_block("work")
        done = pfn.append_basic_block("done")
        sub.b.branch(grab)
        sub.b.position_at_end(grab)
        lo = sub.b.atomic_rmw("add", counter, chunk, "monotonic")
        sub.b.cbranch(sub.b.icmp_signed("<", lo, ext_s), work, done)
        sub.b.position_at_end(work)
        hi = sub.b.add(lo, chunk)
        hi = sub.b.select(sub.b.icmp_signed("<", hi, ext_s), hi, ext_s)
        sub.b.call(cfn, loaded[:-2] + [lo_s, lo, hi])
        sub.b.branch(grab)
        sub.b.position_at_end(done)
        sub.b.ret_void()
        self.b.call(parallel_function(self.module), [pfn, ctx, ir.Constant(I32, self.mb.threads)])


def parallel_function(module: ir.Module) -> ir.Function:
    """The thread pool's entry (thread_pool.py), declared in ``module`` (called through the GOT,
    as ModuleBuilder's library calls are)."""
    fn = module.globals.get(thread_pool.SYMBOL)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I32]),
                         thread_pool.SYMBOL)
        fn.attributes.add("nonlazybind")
    return fn
