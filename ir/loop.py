"""The loop IR: kernels as explicit loop nests over buffers (what schedules transform and
backends print as LLVM IR or CUDA C).

Expressions are dataclasses that no pass modifies in place (a rewrite builds new nodes: see
loop_walk.py's map/substitute); Python operators build them (``i * 4 + j``), and plain ints and
floats become constants (``a.eq(b)`` builds an equality test). Nodes compare and hash by
identity. Integer division by 0 acts as division by 1 (x / 0 = x, x % 0 = 0).
min(a, b) = (b < a ? b : a), max(a, b) = (a < b ? b : a): a NaN in
the first operand propagates (put the data operand first).
A LanePermute(a, lane, perm) is ``a`` at lane perm[lane] of the vectorized loop over ``lane``
(one shufflevector in vector code; in scalar semantics ``a`` with ``lane`` replaced by
perm[lane]). Statements are For / Store / Seq / If / Let / Allocate / Prefetch (a cache
hint). A Kernel has global Buffer parameters passed by pointer; local buffers come from
Allocate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from numbers import Integral
from typing import Union

from .dtypes import DType
from .loop_printer import format_kernel

# Loops run one iteration after another at run time; "rolled" ones the backends keep as loops
# (never unrolled by the compiler below them).
SEQUENTIAL_KINDS = ("serial", "rolled")
LOOP_KINDS = SEQUENTIAL_KINDS + ("parallel", "vectorized", "unrolled", "gpu_block", "gpu_thread")
BIN_OPS = ("add", "sub", "mul", "div", "floordiv", "mod", "min", "max")
CMP_OPS = ("lt", "le", "gt", "ge", "eq", "ne")
MATH_FNS = ("exp", "expm1", "log", "log1p", "erfc", "sqrt", "tanh", "erf", "abs", "floor", "ceil", "sigmoid", "round",
            "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
            "atanh", "pow", "fmod")
# dot4_u8s8*(acc, a, b), all int32: acc + sum over the 4 bytes k of a and b of
# uint8(a_k) * int8(b_k) (exact, as vpdpbusd). The suffix names the instruction sequence a
# lowering chose from its Target (vnni: vpdpbusd; avx2: vpmaddubsw + vpmaddwd, whose pair sums
# saturate at int16: the lowering must keep |b_2i| + |b_2i+1| <= 128, where they cannot).
# dot4_s8s8*: the same with a's bytes int8 shifted to uint8 first (a_k + 128: a xor 0x80808080).
# dot4_i8i8(acc, a, b): the same with int8(a_k), no shift (CUDA's __dp4a(int, int, int)); the sum
# wraps modulo 2^32 as the instruction does.
DOT4_FNS = tuple(f"dot4_{a}s8{s}" for a in ("u8", "s8") for s in ("", "_vnni", "_avx2")) \
    + ("dot4_i8i8",)
# dot2_u8s16_{even,odd}(acc, a, b), all int32: acc + uint8(a_j) * int16(b_lo) + uint8(a_j+2) *
# int16(b_hi), j = 0 (even) or 1 (odd): two of a's bytes times b's two int16 halves (exact, as
# vpmaddwd once a's bytes are widened to int16: 8-bit weights on CPUs without VNNI, where
# vpmaddubsw's int16 pair sums could saturate). dot2_i16i16(acc, a, b): acc + int16(a_lo) *
# int16(b_lo) + int16(a_hi) * int16(b_hi) (vpmaddwd itself: inputs copied widened to int16).
DOT2_FNS = ("dot2_u8s16_even", "dot2_u8s16_odd", "dot2_i16i16")
BYTE_DOT_FNS = DOT4_FNS + DOT2_FNS
# dot2_pair(acc, a0, a1, b): acc + a0 * int16(b_lo) + a1 * int16(b_hi), a0 and a1 8-bit values
# (widened by their own type, uint8 or int8) and acc, b int32: two taps of a depthwise conv at
# once (vpmaddwd on a0's and a1's bytes interleaved and widened to int16; exact).
PAIR_DOT = "dot2_pair"
MATH_FNS = MATH_FNS + BYTE_DOT_FNS + (PAIR_DOT,)


I64 = DType.int64
F32 = DType.float32
BOOL = DType.bool


class Expr:
    """Base of expressions. ``dtype`` is the element type of the value."""

    dtype: DType

    def __add__(self, o): return Bin("add", self, wrap(o, self.dtype))
    def __radd__(self, o): return Bin("add", wrap(o, self.dtype), self)
    def __sub__(self, o): return Bin("sub", self, wrap(o, self.dtype))
    def __rsub__(self, o): return Bin("sub", wrap(o, self.dtype), self)
    def __mul__(self, o): return Bin("mul", self, wrap(o, self.dtype))
    def __rmul__(self, o): return Bin("mul", wrap(o, self.dtype), self)
    def __truediv__(self, o): return Bin("div", self, wrap(o, self.dtype))
    def __rtruediv__(self, o): return Bin("div", wrap(o, self.dtype), self)
    def __floordiv__(self, o): return Bin("floordiv", self, wrap(o, self.dtype))
    def __mod__(self, o): return Bin("mod", self, wrap(o, self.dtype))
    def __neg__(self): return Bin("sub", Const(0, self.dtype), self)
    def __lt__(self, o): return Cmp("lt", self, wrap(o, self.dtype))
    def __le__(self, o): return Cmp("le", self, wrap(o, self.dtype))
    def __gt__(self, o): return Cmp("gt", self, wrap(o, self.dtype))
    def __ge__(self, o): return Cmp("ge", self, wrap(o, self.dtype))

    def max(self, o) -> "Expr": return Bin("max", self, wrap(o, self.dtype))
    def min(self, o) -> "Expr": return Bin("min", self, wrap(o, self.dtype))
    def eq(self, o) -> "Expr": return Cmp("eq", self, wrap(o, self.dtype))
    def ne(self, o) -> "Expr": return Cmp("ne", self, wrap(o, self.dtype))

    # eq=False dataclasses compare and hash by identity (``<`` etc. build a Cmp, so a structural
    # ``==`` would be a trap); compare structure through the printed form when that is meant.
    __hash__ = object.__hash__


def wrap(v, dtype: DType = I64) -> Expr:
    """Turn a Python number into a Const (of ``dtype``'s kind); pass an Expr through."""
    if isinstance(v, Expr):
        return v
    if isinstance(v, bool):
        return Const(v, BOOL)
    if isinstance(v, int):
        return Const(v, dtype if not dtype.is_float else dtype)
    if isinstance(v, float):
        return Const(v, dtype if dtype.is_float else F32)
    raise TypeError(f"cannot use {type(v).__name__} as a loop IR expression")


@dataclass(eq=False)
class Var(Expr):
    name: str
    dtype: DType = I64


@dataclass(eq=False)
class Const(Expr):
    value: Union[int, float, bool]
    dtype: DType = I64

    def __post_init__(self):
        if self.dtype.is_float:
            self.value = float(self.value)
        elif self.dtype is BOOL:
            self.value = bool(self.value)
        else:
            self.value = int(self.value)


@dataclass(eq=False)
class Bin(Expr):
    op: str
    a: Expr
    b: Expr

    def __post_init__(self):
        assert self.op in BIN_OPS, self.op
        if self.a.dtype != self.b.dtype:
            raise TypeError(f"{self.op}: operand types differ ({self.a.dtype} vs {self.b.dtype})")
        self.dtype = self.a.dtype


@dataclass(eq=False)
class Cmp(Expr):
    op: str
    a: Expr
    b: Expr

    def __post_init__(self):
        assert self.op in CMP_OPS, self.op
        if self.a.dtype != self.b.dtype:
            raise TypeError(f"{self.op}: operand types differ ({self.a.dtype} vs {self.b.dtype})")
        self.dtype = BOOL


@dataclass(eq=False)
class And(Expr):
    a: Expr
    b: Expr
    dtype: DType = BOOL


@dataclass(eq=False)
class Or(Expr):
    a: Expr
    b: Expr
    dtype: DType = BOOL


@dataclass(eq=False)
class Not(Expr):
    a: Expr
    dtype: DType = BOOL


@dataclass(eq=False)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    def __post_init__(self):
        if self.a.dtype != self.b.dtype:
            raise TypeError(f"select: branch types differ ({self.a.dtype} vs {self.b.dtype})")
        self.dtype = self.a.dtype


@dataclass(eq=False)
class Cast(Expr):
    dtype: DType
    a: Expr


@dataclass(eq=False)
class Call(Expr):
    fn: str
    args: tuple
    dtype: DType = F32

    def __post_init__(self):
        assert self.fn in MATH_FNS, self.fn
        self.args = tuple(self.args)


@dataclass(eq=False)
class LanePermute(Expr):
    """``a`` with the variable ``lane`` replaced by ``perm[lane]`` (lane must be in range): in a
    vectorized loop over ``lane`` starting at 0, a constant shuffle of the lanes of ``a``'s
    vector (lane i takes lane perm[i]; indices may repeat: a broadcast within sub-groups)."""
    a: Expr
    lane: Var
    perm: tuple

    def __post_init__(self):
        if not isinstance(self.lane, Var) or self.lane.dtype.is_float:
            raise TypeError(f"lane permute: the lane must be an integer variable, got "
                            f"{self.lane!r}")
        perm = tuple(self.perm)
        if not perm:
            raise IndexError(f"lane permute over {self.lane.name}: empty index list")
        for i, p in enumerate(perm):
            if isinstance(p, bool) or not isinstance(p, Integral) \
                    or not 0 <= p < len(perm):
                raise IndexError(f"lane permute over {self.lane.name}: index {p!r} at position "
                                 f"{i} is not a lane in 0..{len(perm) - 1}")
        self.perm = tuple(int(p) for p in perm)
        self.dtype = self.a.dtype


@dataclass(eq=False)
class Buffer:
    """A dense row-major array: a kernel parameter (scope global) or a local scratch array."""

    name: str
    dtype: DType
    shape: tuple
    scope: str = "global"

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        assert self.scope in ("global", "local"), self.scope

    @property
    def size(self) -> int:
        return prod(self.shape)

    def __getitem__(self, idx) -> "Load":
        idx = idx if isinstance(idx, tuple) else (idx,)
        return Load(self, tuple(wrap(i) for i in idx))

    __hash__ = object.__hash__


@dataclass(eq=False)
class Load(Expr):
    buf: Buffer
    indices: tuple

    def __post_init__(self):
        if len(self.indices) != len(self.buf.shape):
            raise IndexError(f"load {self.buf.name}: {len(self.indices)} indices for rank "
                             f"{len(self.buf.shape)}")
        self.dtype = self.buf.dtype


class Stmt:
    """Base of statements."""
    __hash__ = object.__hash__


@dataclass(eq=False)
class For(Stmt):
    var: Var
    extent: Expr
    body: Stmt
    kind: str = "serial"
    start: Expr = field(default_factory=lambda: Const(0))

    def __post_init__(self):
        assert self.kind in LOOP_KINDS, self.kind
        self.extent = wrap(self.extent)
        self.start = wrap(self.start)


@dataclass(eq=False)
class Store(Stmt):
    buf: Buffer
    indices: tuple
    value: Expr

    def __post_init__(self):
        self.indices = tuple(wrap(i) for i in self.indices)
        self.value = wrap(self.value, self.buf.dtype)
        if len(self.indices) != len(self.buf.shape):
            raise IndexError(f"store {self.buf.name}: {len(self.indices)} indices for rank "
                             f"{len(self.buf.shape)}")
        if self.value.dtype != self.buf.dtype:
            raise TypeError(f"store {self.buf.name}: value is {self.value.dtype}, buffer is "
                            f"{self.buf.dtype}")


@dataclass(eq=False)
class Seq(Stmt):
    stmts: list


@dataclass(eq=False)
class If(Stmt):
    """Conditional. ``masked``: the then-branch only stores and all its loads are in bounds for
    every lane, so a vectorized loop may evaluate it on all lanes and mask the stores."""
    cond: Expr
    then: Stmt
    else_: Stmt | None = None
    masked: bool = False


@dataclass(eq=False)
class Let(Stmt):
    var: Var
    value: Expr
    body: Stmt


@dataclass(eq=False)
class Allocate(Stmt):
    buf: Buffer
    body: Stmt


@dataclass(eq=False)
class Prefetch(Stmt):
    """A hint to bring the cache line holding ``buf[indices]`` into cache level ``level``
    (1: L1, 2: L2, 3: L3) ahead of its use. It has no effect on results: interpreters skip
    it, backends may emit nothing. Transformations treat it like a Store without a value."""
    buf: Buffer
    indices: tuple
    level: int = 2

    def __post_init__(self):
        self.indices = tuple(wrap(i) for i in self.indices)
        if len(self.indices) != len(self.buf.shape):
            raise IndexError(f"prefetch {self.buf.name}: {len(self.indices)} indices for rank "
                             f"{len(self.buf.shape)}")
        assert self.level in (1, 2, 3), self.level


@dataclass(eq=False)
class Kernel:
    name: str
    params: list
    body: Stmt

    def __str__(self) -> str:
        return format_kernel(self)


def seq(*stmts) -> Stmt:
    """A Seq of the given statements, flattened; a single statement is returned as is."""
    out: list = []
    for s in stmts:
        if s is None:
            continue
        if isinstance(s, Seq):
            out.extend(s.stmts)
        elif isinstance(s, (list, tuple)):
            inner = seq(*s) if len(s) else None
            out.extend(inner.stmts if isinstance(inner, Seq) else [inner] if inner else [])
        else:
            out.append(s)
    return out[0] if len(out) == 1 else Seq(out)


def loop_nest(names_extents, body_fn, kind: str = "serial") -> Stmt:
    """Build perfectly nested serial loops: ``body_fn(*vars)`` gives the innermost statement."""
    vars_ = [Var(n) for n, _ in names_extents]
    stmt = body_fn(*vars_)
    for v, (_, e) in reversed(list(zip(vars_, names_extents))):
        stmt = For(v, e, stmt, kind)
    return stmt


def nan_max(a: Expr, b: Expr) -> Expr:
    """max(a, b) that is NaN when either operand is (numpy's maximum); ints: plain max."""
    if not a.dtype.is_float:
        return a.max(b)
    return Select(Cmp("ne", b, b), b, a.max(b))


def nan_min(a: Expr, b: Expr) -> Expr:
    """min(a, b) that is NaN when either operand is (numpy's minimum); ints: plain min."""
    if not a.dtype.is_float:
        return a.min(b)
    return Select(Cmp("ne", b, b), b, a.min(b))


def fma(a: Expr, b: Expr, c: Expr) -> Expr:
    """a * b + c (codegen turns float mul+add into llvm.fma when fast-math contraction allows)."""
    return a * b + c


def call(fn: str, *args: Expr) -> Call:
    args = tuple(wrap(a, F32) for a in args)
    return Call(fn, args, args[0].dtype)
