"""Expression emission for the LLVM backend: scalar and vector (one lane per iteration of the
enclosing vectorized loop) values, math functions expanded into intrinsics and polynomials.
"""
from __future__ import annotations


import llvmlite.ir as ir

from cnncc.ir import CompileError, DType
from cnncc.ir.loop import (BYTE_DOT_FNS, PAIR_DOT, And, Bin, Call, Cast, Cmp, Const, Expr,
                          LanePermute, Load, Not, Or, Select, Var)
from cnncc.ir.loop_walk import permute_scalar_form
from .indexing import IndexCache, fold_int_values, value_key
from .int8_dot import emit_byte_dot, emit_pair_dot, word_operand
from .vecmath import FUNCTIONS as VECMATH_FUNCTIONS, VecMath

I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
_LL = {DType.float32: ir.FloatType(), DType.float64: ir.DoubleType(), DType.float16: ir.HalfType(),
       DType.bool: ir.IntType(8)}
for _dt, _bits in ((DType.int8, 8), (DType.int16, 16), (DType.int32, 32), (DType.int64, 64),
                   (DType.uint8, 8), (DType.uint16, 16), (DType.uint32, 32), (DType.uint64, 64)):
    _LL[_dt] = ir.IntType(_bits)


def lltype(dtype: DType, value: bool = False) -> ir.Type:
    """The LLVM type of an element in memory (value=False) or of a computed value (bool -> i1)."""
    if value and dtype is DType.bool:
        return I1
    return _LL[dtype]


_CMP_F = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


# vecmath.py's functions are called as internal functions of the module (False: emitted
# inline at every use, as before; for A/B runs).
VECMATH_CALLS = True


class ExprEmitter:
    """Mixin of the function emitter: ``ev(e) -> (value, is_vector)``."""

    b: ir.IRBuilder
    module: ir.Module
    env: dict
    bufs: dict
    vvar: str | None
    lanes: int
    flags: frozenset
    vec_lets: set
    index: IndexCache

    # ---- helpers -------------------------------------------------------------------------------
    def splat(self, v: ir.Value) -> ir.Value:
        vty = ir.VectorType(v.type, self.lanes)
        if isinstance(v, ir.Constant):
            return ir.Constant(vty, [v.constant] * self.lanes)
        u = self.b.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(I32, 0))
        return self.b.shuffle_vector(u, ir.Constant(vty, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, self.lanes), [0] * self.lanes))

    def both(self, a, b):
        (va, xa), (vb, xb) = a, b
        if xa and not xb:
            vb = self.splat(vb)
        elif xb and not xa:
            va = self.splat(va)
        return va, vb, xa or xb

    def intrinsic(self, name: str, ret: ir.Type, args: list) -> ir.Function:
        """An LLVM intrinsic or a C library function, declared in the module once."""
        g = self.module.globals.get(name)
        if g is None:
            g = ir.Function(self.module, ir.FunctionType(ret, args), name=name)
            if not name.startswith("llvm."):
                # Called through the GOT, as LLVM's own library calls are (codegen.py).
                g.attributes.add("nonlazybind")
        return g

    def vecmath_function(self, fn: str, ty: ir.Type) -> ir.Function:
        """vecmath.py's ``fn`` on values of type ``ty`` as an internal function of the module,
        defined once: a register tile applies it to each of its elements, and inline it was
        emitted once per element (a 1x1 conv's Gelu epilogue, 6 x 4 vectors: 0.9 -> 0.3 MB of
        IR). LLVM's inliner weighs its size against its calls; the machine code stayed as fast
        (ConvNeXt, EfficientNet-B0, interleaved A/B)."""
        sfx = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
        name = f"cnncc.{fn}.{sfx}"
        f = self.module.globals.get(name)
        if f is None:
            f = ir.Function(self.module, ir.FunctionType(ty, [ty]), name=name)
            f.linkage = "internal"
            f.attributes.add("nounwind")
            b = ir.IRBuilder(f.append_basic_block("entry"))
            b.ret(VecMath(b, self.intrinsic).emit(fn, f.args[0]))
        return f

    def lane_dep(self, e: Expr) -> bool:
        if self.vvar is None:
            return False
        names = self.index.var_names(e)
        return self.vvar in names or not names.isdisjoint(self.vec_lets)

    def ev_scalar(self, e: Expr) -> ir.Value:
        v, vec = self.ev(e)
        if vec:
            raise CompileError(f"internal error: expression varies across vector lanes: {e}")
        return v

    # ---- memory --------------------------------------------------------------------------------
    def address(self, buf, indices):
        lin = self.index.offset(buf, indices)
        fixed = tuple((name, known[0].constant) for name in sorted(self.index.var_names(lin))
                      if name != self.vvar and name not in self.vec_lets
                      and (known := self.env.get(name)) is not None
                      and isinstance(known[0], ir.Constant) and not known[1])
        if fixed:
            lin = self.index.with_constants(lin, fixed)
        ptr = self.bufs[buf.name]
        ety = lltype(buf.dtype)
        if not self.lane_dep(lin):
            return "scalar", self.b.gep(ptr, [self.ev_scalar(lin)], source_etype=ety), ety
        coef = None if not self.index.var_names(lin).isdisjoint(self.vec_lets) else \
            self.index.coefficient(lin, self.vvar)
        if coef == 1:
            self.scalar_lane = True
            try:
                off = self.ev_scalar(lin)
            finally:
                self.scalar_lane = False
            return "vector", self.b.gep(ptr, [off], source_etype=ety), ety
        idx, _ = self.ev(lin)
        ptrs = [self.b.gep(ptr, [self.b.extract_element(idx, ir.Constant(I32, k))],
                           source_etype=ety) for k in range(self.lanes)]
        return "lanes", ptrs, ety

    def load(self, e: Load):
        kind, p, ety = self.address(e.buf, e.indices)
        align = e.buf.dtype.itemsize
        if kind == "scalar":
            v = self.b.load(p, typ=ety)
            return self._from_mem(v, e.buf.dtype), False
        if kind == "vector":
            v = self.b.load(p, typ=ir.VectorType(ety, self.lanes), align=align)
            return self._from_mem(v, e.buf.dtype), True
        vty = ir.VectorType(ety, self.lanes)
        out = ir.Constant(vty, ir.Undefined)
        for k, pk in enumerate(p):
            out = self.b.insert_element(out, self.b.load(pk, typ=ety), ir.Constant(I32, k))
        return self._from_mem(out, e.buf.dtype), True

    def store(self, buf, indices, value: Expr, mask=None) -> None:
        """Store ``value``; with a <lanes x i1> ``mask`` only the enabled lanes are written."""
        kind, p, ety = self.address(buf, indices)
        v, vec = self.ev(value)
        v = self._to_mem(v, buf.dtype)
        if kind == "scalar":
            if vec:
                raise CompileError(f"internal error: vector value stored to one element of "
                                   f"{buf.name}")
            self.b.store(v, p)
            return
        if not vec:
            v = self.splat(v)
        # Masked stores of 8- and 16-bit integers go lane by lane: LLVM 22 on AVX-512 turns
        # one with a single lane enabled after constant folding (a tail of one output
        # channel) into a store of the whole untruncated element, 4 bytes for an i32 -> i8
        # value (tests/test_llvm_codegen.py::test_masked_narrow_store_of_one_lane).
        narrow = isinstance(ety, ir.IntType) and ety.width < 32
        if mask is not None and kind == "vector" and not narrow:
            fn = self.intrinsic(f"llvm.masked.store.{_suffix(v.type)}.p0", ir.VoidType(),
                                [v.type, PTR, I32, mask.type])
            self.b.call(fn, [v, p, ir.Constant(I32, buf.dtype.itemsize), mask])
        elif kind == "vector" and mask is None:
            self.b.store(v, p, align=buf.dtype.itemsize)
        else:
            if kind == "vector":
                p = [self.b.gep(p, [ir.Constant(I64, k)], source_etype=ety)
                     for k in range(self.lanes)]
            for k, pk in enumerate(p):
                lane = self.b.extract_element(v, ir.Constant(I32, k))
                if mask is None:
                    self.b.store(lane, pk)
                else:
                    with self.b.if_then(self.b.extract_element(mask, ir.Constant(I32, k))):
                        self.b.store(lane, pk)

    def _from_mem(self, v, dtype):
        if dtype is DType.bool:
            zero = ir.Constant(v.type, None)
            return self.b.icmp_unsigned("!=", v, zero)
        return v

    def _to_mem(self, v, dtype):
        if dtype is DType.bool:
            ty = ir.IntType(8) if not isinstance(v.type, ir.VectorType) else \
                ir.VectorType(ir.IntType(8), self.lanes)
            return self.b.zext(v, ty)
        return v

    # ---- expressions ---------------------------------------------------------------------------
    def ev(self, e: Expr):
        if isinstance(e, Var):
            if e.name == self.vvar:
                base = self.env[e.name][0]
                if self.scalar_lane:
                    return base, False
                iota = ir.Constant(ir.VectorType(I64, self.lanes), list(range(self.lanes)))
                return self.b.add(self.splat(base), iota), True
            if e.name not in self.env:
                raise CompileError(f"internal error: unbound variable '{e.name}'")
            return self.env[e.name]
        if isinstance(e, Const):
            ty = lltype(e.dtype, value=True)
            return ir.Constant(ty, int(e.value) if ty is I1 else e.value), False
        if isinstance(e, Load):
            return self.load(e)
        if isinstance(e, Bin):
            return self._bin(e)
        if isinstance(e, Cmp):
            a, b, vec = self.both(self.ev(e.a), self.ev(e.b))
            if e.a.dtype.is_float:
                op = _CMP_F[e.op]
                r = self.b.fcmp_unordered(op, a, b) if e.op == "ne" else \
                    self.b.fcmp_ordered(op, a, b)
            elif e.a.dtype.value.startswith("uint") or e.a.dtype is DType.bool:
                r = self.b.icmp_unsigned(_CMP_F[e.op], a, b)
            else:
                r = self.b.icmp_signed(_CMP_F[e.op], a, b)
            return r, vec
        if isinstance(e, (And, Or)):
            a, b, vec = self.both(self.ev(e.a), self.ev(e.b))
            return (self.b.and_(a, b) if isinstance(e, And) else self.b.or_(a, b)), vec
        if isinstance(e, Not):
            a, vec = self.ev(e.a)
            return self.b.not_(a), vec
        if isinstance(e, Select):
            fixed = self._fixup_max(e)
            if fixed is not None:
                return fixed
            c, cv = self.ev(e.cond)
            a, b, vec = self.both(self.ev(e.a), self.ev(e.b))
            if cv and not vec:
                a, b, vec = self.splat(a), self.splat(b), True
            elif vec and not cv:
                pass                # a scalar i1 condition selects whole vectors
            return self.b.select(c, a, b), vec
        if isinstance(e, Cast):
            return self._cast(e)
        if isinstance(e, Call):
            return self._call(e)
        if isinstance(e, LanePermute):
            return self._permute(e)
        raise CompileError(f"internal error: cannot emit {type(e).__name__}")

    def _permute(self, e: LanePermute):
        """One shufflevector of the operand's vector when the permute is over the vectorized
        loop's variable, lanes from 0 (as many as the permute has indices); otherwise (lanes
        one at a time, a chunk from another lane, the lane reaching the operand through a let)
        the scalar form: the operand with perm[lane] as selects."""
        n = self.lanes
        if (e.lane.name == self.vvar and not self.scalar_lane and len(e.perm) == n
                and self.index.var_names(e.a).isdisjoint(self.vec_lets)):
            base = self.env[e.lane.name][0]
            if isinstance(base, ir.Constant) and base.constant == 0:
                v, vec = self.ev(e.a)
                if not vec:
                    return v, False
                mask = ir.Constant(ir.VectorType(I32, n), list(e.perm))
                return self.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), mask), True
        return self.ev(permute_scalar_form(e))

    def _fixup_max(self, e: Select):
        """ir/loop.nan_max(a, b) = Select(b != b, b, max(a, b)) on float32 vectors with
        AVX-512 (8 lanes: AVX-512VL): max(a, b) (a NaN ``a`` propagates) then one VFIXUPIMMPS
        that replaces the lanes where ``b`` is a NaN by ``b`` - two instructions instead of a
        compare, a max and a blend. None when ``e`` is not that form or the target lacks it."""
        cond, pick = e.cond, e.b
        flags = self.flags
        if not (isinstance(cond, Cmp) and cond.op == "ne" and isinstance(pick, Bin)
                and pick.op == "max" and e.dtype is DType.float32 and "avx512f" in flags
                and (self.lanes == 16 or (self.lanes == 8 and "avx512vl" in flags))):
            return None
        # The same operand four times (equal in structure: schedules rewrite copies of it).
        if len({repr(x) for x in (cond.a, cond.b, e.a, pick.b)}) != 1:
            return None
        a, b, vec = self.both(self.ev(pick.a), self.ev(pick.b))
        larger = self.b.select(self.b.fcmp_ordered("<", a, b), b, a)
        vt = a.type
        if not (vec and isinstance(vt, ir.VectorType) and vt.count == self.lanes):
            return self.b.select(self.b.fcmp_unordered("!=", b, b), b, larger), vec
        mask, table_t = ir.IntType(self.lanes), ir.VectorType(I32, self.lanes)
        wide = self.lanes == 16            # the 512-bit form takes a rounding argument
        fn = self.intrinsic(f"llvm.x86.avx512.mask.fixupimm.ps.{self.lanes * 32}", vt,
                            [vt, vt, table_t, I32, mask] + [I32] * wide)
        # Response per class of b's lane, a nibble each: QNaN -> b (1), SNaN -> QNaN(b) (2),
        # every other class -> keep ``larger`` (0); no exceptions (imm 0); every lane (mask
        # -1); rounding 4: the current direction.
        args = [larger, b, ir.Constant(table_t, [0x21] * self.lanes), ir.Constant(I32, 0),
                ir.Constant(mask, -1)]
        return self.b.call(fn, args + [ir.Constant(I32, 4)] * wide), True

    def _bin(self, e: Bin):
        fl = e.dtype.is_float
        if fl and e.op == "add":
            for m, c in ((e.a, e.b), (e.b, e.a)):
                if isinstance(m, Bin) and m.op == "mul":
                    return self._fma(m.a, m.b, c)
        a, b, vec = self.both(self.ev(e.a), self.ev(e.b))
        if fl or vec or e.dtype.value.startswith("uint"):
            return self._bin_values(e, a, b, vec)
        # Signed scalar integers (index arithmetic): folded when constant, and each value
        # emitted once per basic block (the unrolled statements of a register tile share their
        # run-time index terms).
        folded = fold_int_values(e.op, a, b)
        if folded is not None:
            return folded, vec
        key = (id(self.b.block), e.op, value_key(a), value_key(b))
        known = self.int_values.get(key)
        if known is None:
            known = self.int_values[key] = self._bin_values(e, a, b, vec)
        return known

    def _bin_values(self, e: Bin, a, b, vec: bool):
        fl = e.dtype.is_float
        B = self.b
        uns = e.dtype.value.startswith("uint")
        if e.op in ("min", "max"):
            # min = b < a ? b : a; max = a < b ? b : a (a NaN in ``a`` propagates).
            if fl:
                c = B.fcmp_ordered("<", b, a) if e.op == "min" else B.fcmp_ordered("<", a, b)
            else:
                cmp = B.icmp_unsigned if uns else B.icmp_signed
                c = cmp("<", b, a) if e.op == "min" else cmp("<", a, b)
            return B.select(c, b, a), vec
        if fl:
            fn = {"add": B.fadd, "sub": B.fsub, "mul": B.fmul, "div": B.fdiv}.get(e.op)
            if fn is None:
                raise CompileError(f"internal error: float {e.op}")
            return fn(a, b), vec
        if e.op in ("add", "sub", "mul"):
            return {"add": B.add, "sub": B.sub, "mul": B.mul}[e.op](a, b), vec
        safe = isinstance(e.b, Const) and e.b.value not in (0, -1)
        return self._int_div(e.op, a, b, uns, safe), vec

    def _int_div(self, op: str, a, b, uns: bool, safe: bool):
        """Integer div (C), floordiv, mod (floor) and fmod (C remainder). A zero divisor acts as
        1 (x / 0 = x, x % 0 = 0, as the numpy references) and x / -1 never traps: native code
        must not raise SIGFPE on any input."""
        B = self.b
        one = ir.Constant(a.type, 1) if not isinstance(a.type, ir.VectorType) else \
            ir.Constant(a.type, [1] * a.type.count)
        zero = ir.Constant(a.type, None)
        minus = None
        if not safe:
            b = B.select(B.icmp_signed("==", b, zero), one, b)
            if not uns:
                minus = B.icmp_signed("==", b, B.sub(zero, one))
                b = B.select(minus, one, b)
        if uns:
            res = B.urem(a, b) if op in ("mod", "fmod") else B.udiv(a, b)
            return res
        q, r = B.sdiv(a, b), B.srem(a, b)
        if op in ("div", "fmod"):
            res = q if op == "div" else r
        else:
            # Floor division / modulo: correct the C-truncated result when signs differ.
            fix = B.and_(B.icmp_signed("!=", r, zero), B.icmp_signed(
                "!=", B.icmp_signed("<", r, zero), B.icmp_signed("<", b, zero)))
            res = B.sub(q, B.zext(fix, q.type)) if op == "floordiv" else \
                B.select(fix, B.add(r, b), r)
        if minus is not None:             # divisor -1: quotient -a, remainder 0
            res = B.select(minus, B.sub(zero, a) if op in ("div", "floordiv") else zero, res)
        return res

    def _fma(self, x: Expr, y: Expr, z: Expr):
        vals = [self.ev(x), self.ev(y), self.ev(z)]
        vec = any(v for _, v in vals)
        args = [self.splat(v) if vec and not isv else v for v, isv in vals]
        ty = args[0].type
        return self.b.call(self.intrinsic(f"llvm.fma.{_suffix(ty)}", ty, [ty] * 3), args), vec

    def _cast(self, e: Cast):
        src, dst = e.a.dtype, e.dtype
        if src is DType.float32 and dst is DType.int32 and isinstance(e.a, Call) \
                and e.a.fn == "round":
            # int32(round_half_even(x)) as one conversion in the default rounding mode
            # (vcvtps2dq) instead of vroundps + vcvttps2dq: the requantizing epilogues.
            v, vec = self.ev(e.a.args[0])
            dty = ir.VectorType(I32, self.lanes) if vec else I32
            return self.b.call(self.intrinsic(f"llvm.lrint.{_suffix(dty)}.{_suffix(v.type)}",
                                              dty, [v.type]), [v]), vec
        v, vec = self.ev(e.a)
        dty = lltype(dst, value=True)
        if vec:
            dty = ir.VectorType(dty, self.lanes)
        B = self.b
        if src == dst:
            return v, vec
        if dst is DType.bool:
            zero = ir.Constant(v.type, None)
            return (B.fcmp_unordered("!=", v, zero) if src.is_float else
                    B.icmp_unsigned("!=", v, zero)), vec
        if src is DType.float64 and dst is DType.float16:
            return self._f64_to_f16(v, dty, vec), vec
        if src.is_float and dst.is_float:
            return (B.fpext(v, dty) if dst.itemsize > src.itemsize else B.fptrunc(v, dty)), vec
        if src.is_float:
            return (B.fptoui(v, dty) if dst.value.startswith("uint") else B.fptosi(v, dty)), vec
        signed = not (src.value.startswith("uint") or src is DType.bool)
        if dst.is_float:
            return (B.sitofp(v, dty) if signed else B.uitofp(v, dty)), vec
        sb, db = v.type.element.width if vec else v.type.width, dst.itemsize * 8
        if db > sb:
            return (B.sext(v, dty) if signed else B.zext(v, dty)), vec
        return (B.trunc(v, dty) if db < sb else v), vec

    def _f64_to_f16(self, v, dty, vec: bool):
        """double -> half rounded once (to nearest even) without the __truncdfhf2 libcall the
        JIT cannot resolve: double -> float rounded to odd (truncate toward zero, then set the
        last bit when inexact), then float -> half; round-to-odd with 13 spare bits makes the
        second rounding exact."""
        B = self.b
        n = self.lanes if vec else None
        fty = ir.FloatType() if n is None else ir.VectorType(ir.FloatType(), n)
        ity = I32 if n is None else ir.VectorType(I32, n)
        one = ir.Constant(ity, 1 if n is None else [1] * n)
        f = B.fptrunc(v, fty)
        back = B.fpext(f, v.type)
        absf = self.b.call(self.intrinsic(f"llvm.fabs.{_suffix(v.type)}", v.type, [v.type]),
                           [back])
        absd = self.b.call(self.intrinsic(f"llvm.fabs.{_suffix(v.type)}", v.type, [v.type]),
                           [v])
        bits = B.bitcast(f, ity)
        bits = B.select(B.fcmp_ordered(">", absf, absd), B.sub(bits, one), bits)
        bits = B.select(B.fcmp_unordered("!=", back, v), B.or_(bits, one), bits)
        return B.fptrunc(B.bitcast(bits, fty), dty)

    def _call(self, e: Call):
        fn, x = e.fn, e.args[0]
        if fn in BYTE_DOT_FNS or fn == PAIR_DOT:
            vals = [self.ev(a) for a in e.args]
            if fn in BYTE_DOT_FNS:
                fn, shifted = word_operand(self.b, fn, vals[1][0])     # before a splat
                vals[1] = (shifted, vals[1][1])
            vec = any(v for _, v in vals)
            args = [self.splat(v) if vec and not isv else v for v, isv in vals]
            if fn == PAIR_DOT:
                signed = [not a.dtype.value.startswith("uint") for a in e.args[1:3]]
                return emit_pair_dot(self.b, *args, signed), vec
            return emit_byte_dot(self.b, fn, *args), vec
        if fn in VECMATH_FUNCTIONS and e.dtype is DType.float32:
            v, vec = self.ev(x)
            if not VECMATH_CALLS:
                return VecMath(self.b, self.intrinsic).emit(fn, v), vec
            return self.b.call(self.vecmath_function(fn, v.type), [v]), vec
        if fn in ("tanh", "erf", "expm1", "log1p", "erfc") and e.dtype is DType.float64:
            # vecmath.py is float32; float64 calls the C library.
            v, vec = self.ev(x)
            return self._libm(fn, v, vec), vec
        if fn == "sigmoid":
            return self._sigmoid64(x)
        if fn == "fmod":
            a, b, vec = self.both(self.ev(x), self.ev(e.args[1]))
            if e.dtype.is_float:
                return self.b.frem(a, b), vec
            uns = e.dtype.value.startswith("uint")
            return self._int_div("fmod", a, b, uns, False), vec
        if fn == "pow":
            a, b, vec = self.both(self.ev(x), self.ev(e.args[1]))
            return self.b.call(self.intrinsic(f"llvm.pow.{_suffix(a.type)}", a.type,
                                              [a.type] * 2), [a, b]), vec
        v, vec = self.ev(x)
        if fn in _LIBM_ONLY:
            return self._libm(f"{fn}f" if e.dtype is DType.float32 else fn, v, vec), vec
        name = {"abs": "fabs", "round": "roundeven"}.get(fn, fn)
        return self.b.call(self.intrinsic(f"llvm.{name}.{_suffix(v.type)}", v.type, [v.type]),
                           [v]), vec

    def _libm(self, name: str, v, vec: bool):
        """A scalar C math library call (per lane for vectors): functions without an LLVM
        intrinsic; the JIT resolves them from the process's libm."""
        sty = v.type.element if vec else v.type
        fn = self.intrinsic(name, sty, [sty])
        if not vec:
            return self.b.call(fn, [v])
        out = ir.Constant(v.type, ir.Undefined)
        for k in range(self.lanes):
            lane = self.b.extract_element(v, ir.Constant(I32, k))
            out = self.b.insert_element(out, self.b.call(fn, [lane]), ir.Constant(I32, k))
        return out

    def _sigmoid64(self, x: Expr):
        """float64 sigmoid as 1 / (1 + exp(-x)) (x evaluated once, bound to a temp)."""
        tmp = Var(f"__sigmoid_{id(x)}", x.dtype)
        self.env[tmp.name] = self.ev(x)
        one = Const(1.0, x.dtype)
        out = self.ev(one / (one + Call("exp", (-tmp,), x.dtype)))
        del self.env[tmp.name]
        return out


_LIBM_ONLY = ("asinh", "acosh", "atanh")


def _suffix(ty: ir.Type) -> str:
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{_suffix(ty.element)}"
    if isinstance(ty, ir.FloatType):
        return "f32"
    if isinstance(ty, ir.DoubleType):
        return "f64"
    if isinstance(ty, ir.HalfType):
        return "f16"
    return f"i{ty.width}"


__all__ = ["ExprEmitter", "lltype"]
