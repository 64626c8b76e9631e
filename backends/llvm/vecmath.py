"""float32 math functions as straight-line LLVM IR on scalars or <N x float> vectors: range
reduction, a polynomial and bit manipulation of the exponent, no call into the C library (LLVM
turns a vector ``llvm.exp`` into one ``expf`` call per lane).

Measured error bounds (ulp of the float32 result against a float64 reference, over every float
class incl. +-0, denormals, +-inf, NaN; tests/test_vecmath.py checks them at both ISAs):

    exp 1, expm1 2, log 1, log1p 3, tanh 2, sigmoid 3, erf 2, erfc 4   (ERROR_BOUNDS)

Methods: exp and expm1 reduce x = n ln2 + r (|r| <= ln2/2, ln2 in two parts, FMA), a degree-6
polynomial for exp(r) - 1, and scale by 2^n in two halves (results down into the denormals
round once). log splits x = 2^e m (sqrt(1/2) <= m < sqrt(2), denormals pre-scaled by 2^23) and
evaluates log(m) = f - f^2/2 + f^3 P(f), f = m - 1. log1p(u) = log(1 + u) u / ((1 + u) - 1)
(Goldberg's correction of the rounded 1 + u). tanh: an odd polynomial below 0.625, else
1 - 2 / (exp(2|x|) + 1). sigmoid: exp(-|x|) / (1 + exp(-|x|)) or 1 / (1 + exp(-|x|)) by sign
(no overflow, accurate in the tiny negative tail). erf: c0 x + x^3 Q(x^2) below 0.75; above,
erfc(a) = exp(-a^2) R(1/a) / a with a^2 split exactly into hi + lo (FMA) and a degree-13
polynomial R fitted (least squares, Chebyshev nodes, relative weights) on 1/a in [1/10.5, 4/3].
The polynomial constants come from our fits (erf) and the classic Cephes minimax sets (exp,
log, tanh).
"""
from __future__ import annotations

import llvmlite.ir as ir

F32 = ir.FloatType()
I32 = ir.IntType(32)

# exp: x = n ln2 + r; exp(r) - 1 = r + r^2 (c0 + c1 r + ... + c5 r^5).
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_LOG2E = 1.44269504088896341
_EXP_P = (5.0000001201e-1, 1.6666665459e-1, 4.1665795894e-2, 8.3334519073e-3,
          1.3981999507e-3, 1.9875691500e-4)
_EXP_LO, _EXP_HI = -104.0, 89.0       # exp underflows to 0 below, overflows to inf above
_EXP_MAX = 88.72283935546875          # the largest x with a finite float32 exp(x)
# log(1 + f) = f - f^2/2 + f^3 P(f), f in [sqrt(1/2) - 1, sqrt(2) - 1].
_LOG_P = (3.3333331174e-1, -2.4999993993e-1, 2.0000714765e-1, -1.6668057665e-1,
          1.4249322787e-1, -1.2420140846e-1, 1.1676998740e-1, -1.1514610310e-1,
          7.0376836292e-2)
_SQRT_HALF = 0.707106781186547524
# tanh(x) = x + x^3 P(x^2) for |x| < 0.625.
_TANH_SMALL = 0.625
_TANH_P = (-3.33332819422e-1, 1.33314422036e-1, -5.37397155531e-2, 2.06390887954e-2,
           -5.70498872745e-3)
# erf(x) = x P(x^2) for |x| < 0.75; erfc(a) = exp(-a^2) R(1/a - T0) / a above.
_ERF_SPLIT = 0.75
_ERF_P = (1.1283791654687945, -0.3761261851862592, 0.11283373257692379, -0.026834461880449696,
          0.005114018607595874, -0.000674720794173144)
_ERFC_T0 = 0.7142857142857142
_ERFC_R = (0.4742409530914397, -0.17029927851659898, 0.01462790859870672, 0.047999485519172956,
           -0.05758354858406947, 0.041574322921441816, -0.01714238244239217,
           -0.0038300931662569506, 0.012554039326376725, -0.019643331422442553,
           0.038468236104007215, -0.026622943347046284, -0.025235026681961467,
           0.02949748255288227)
_ERF_ONE = 3.92       # erf(x) rounds to +-1 in float32 from here on
_ERFC_ZERO = 10.5     # erfc(x) underflows to 0 from here on

# The measured worst case in ulp per function (the README's op section and the tests use these).
ERROR_BOUNDS = {"exp": 1, "expm1": 2, "log": 1, "log1p": 3, "tanh": 2, "sigmoid": 3, "erf": 2,
                "erfc": 4}
FUNCTIONS = tuple(ERROR_BOUNDS)


class VecMath:
    """Emits the functions with builder ``b``; ``intrinsic(name, ret, args)`` declares an LLVM
    intrinsic in the module being built."""

    def __init__(self, b: ir.IRBuilder, intrinsic) -> None:
        self.b = b
        self._intrinsic = intrinsic

    def emit(self, fn: str, x: ir.Value) -> ir.Value:
        return getattr(self, fn)(x)

    # ---- helpers -------------------------------------------------------------------------------
    def c(self, like: ir.Value, v: float) -> ir.Constant:
        ty = like.type
        if isinstance(ty, ir.VectorType):
            return ir.Constant(ty, [v] * ty.count)
        return ir.Constant(ty, v)

    def _ity(self, x: ir.Value) -> ir.Type:
        return ir.VectorType(I32, x.type.count) if isinstance(x.type, ir.VectorType) else I32

    def ic(self, x: ir.Value, v: int) -> ir.Constant:
        ty = self._ity(x)
        return ir.Constant(ty, [v] * ty.count) if isinstance(ty, ir.VectorType) else \
            ir.Constant(ty, v)

    def call(self, name: str, *args: ir.Value) -> ir.Value:
        ty = args[0].type
        sfx = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
        return self.b.call(self._intrinsic(f"llvm.{name}.{sfx}", ty, [ty] * len(args)),
                           list(args))

    def fma(self, a, b, c):
        return self.call("fma", a, b, c)

    def poly(self, x, coefs):
        r = self.c(x, coefs[-1])
        for k in reversed(coefs[:-1]):
            r = self.fma(r, x, self.c(x, k))
        return r

    def sel(self, cond, a, b):
        return self.b.select(cond, a, b)

    def lt(self, a, b):
        return self.b.fcmp_ordered("<", a, b)

    def isnan(self, x):
        return self.b.fcmp_unordered("uno", x, x)

    def pow2(self, n_i):
        """2^n as float for an i32 n in [-126, 127]."""
        b = self.b
        bits = b.shl(b.add(n_i, self.ic(n_i, 127)), self.ic(n_i, 23))
        ty = ir.VectorType(F32, n_i.type.count) if isinstance(n_i.type, ir.VectorType) else F32
        return b.bitcast(bits, ty)

    # ---- exp / expm1 -----------------------------------------------------------------------------
    def _reduce(self, x):
        """(clamped x with NaN -> 0, n as float, n as i32, r, exp(r) - 1)."""
        b = self.b
        xs = self.sel(self.isnan(x), self.c(x, 0.0), x)
        xs = self.sel(self.lt(xs, self.c(x, _EXP_LO)), self.c(x, _EXP_LO), xs)
        xs = self.sel(self.lt(self.c(x, _EXP_HI), xs), self.c(x, _EXP_HI), xs)
        n = self.call("roundeven", b.fmul(xs, self.c(x, _LOG2E)))
        r = self.fma(n, self.c(x, -_LN2_HI), xs)
        r = self.fma(n, self.c(x, -_LN2_LO), r)
        em1 = self.fma(self.poly(r, _EXP_P), b.fmul(r, r), r)
        return n, b.fptosi(n, self._ity(x)), em1

    def exp(self, x, scale=None):
        """exp(x), times ``scale`` (a normal float) before the final power of two when given."""
        b = self.b
        _, n_i, em1 = self._reduce(x)
        p = b.fadd(em1, self.c(x, 1.0))
        if scale is not None:
            p = b.fmul(p, scale)
        n1 = b.ashr(n_i, self.ic(x, 1))
        n2 = b.sub(n_i, n1)
        y = b.fmul(b.fmul(p, self.pow2(n1)), self.pow2(n2))
        return self.sel(self.isnan(x), x, y)

    def expm1(self, x):
        """2^n (exp(r) - 1) + (2^n - 1), one rounding (FMA) while 2^n - 1 is exact (|n| <= 24);
        beyond, exp(x) - 1 is exp(x) or -1 to within rounding."""
        b = self.b
        n, n_i, em1 = self._reduce(x)
        nc = self.sel(self.lt(n, self.c(x, -25.0)), self.c(x, -25.0), n)
        nc_i = b.fptosi(self.sel(self.lt(self.c(x, 25.0), nc), self.c(x, 25.0), nc),
                        self._ity(x))
        s = self.pow2(nc_i)
        near = self.fma(s, em1, b.fsub(s, self.c(x, 1.0)))
        y = self.sel(self.lt(self.c(x, 24.5), n), self.exp(x), near)
        return self.sel(self.isnan(x), x, y)

    # ---- log / log1p -----------------------------------------------------------------------------
    def log(self, x):
        b = self.b
        ity = self._ity(x)
        tiny = self.lt(x, self.c(x, 1.1754943508222875e-38))
        xs = self.sel(tiny, b.fmul(x, self.c(x, 8388608.0)), x)
        bits = b.bitcast(xs, ity)
        e = b.sub(b.lshr(bits, self.ic(x, 23)), self.ic(x, 126))
        m = b.bitcast(b.or_(b.and_(bits, self.ic(x, 0x007FFFFF)), self.ic(x, 0x3F000000)),
                      x.type)                                      # [0.5, 1)
        e = b.sub(e, b.select(tiny, self.ic(x, 23), self.ic(x, 0)))
        low = self.lt(m, self.c(x, _SQRT_HALF))
        e = b.sub(e, b.zext(low, ity))
        f = b.fsub(self.sel(low, b.fadd(m, m), m), self.c(x, 1.0))
        ef = b.sitofp(e, x.type)
        z = b.fmul(f, f)
        y = b.fmul(b.fmul(f, z), self.poly(f, _LOG_P))
        y = self.fma(ef, self.c(x, _LN2_LO), y)
        y = self.fma(z, self.c(x, -0.5), y)
        y = b.fadd(f, y)
        y = self.fma(ef, self.c(x, _LN2_HI), y)
        inf = self.c(x, float("inf"))
        y = self.sel(b.fcmp_ordered("==", x, inf), inf, y)
        y = self.sel(b.fcmp_ordered("==", x, self.c(x, 0.0)), self.c(x, float("-inf")), y)
        return self.sel(b.fcmp_unordered("<", x, self.c(x, 0.0)), self.c(x, float("nan")), y)

    def log1p(self, x):
        b = self.b
        w = b.fadd(x, self.c(x, 1.0))
        d = b.fsub(w, self.c(x, 1.0))
        corr = b.fmul(self.log(w), b.fdiv(x, d))
        exact = b.fcmp_ordered("==", d, self.c(x, 0.0))       # 1 + x rounded to 1: log1p = x
        y = self.sel(exact, x, corr)
        return self.sel(b.fcmp_ordered("==", x, self.c(x, float("inf"))), x, y)

    # ---- tanh / sigmoid --------------------------------------------------------------------------
    def tanh(self, x):
        b = self.b
        ax = self.call("fabs", x)
        z = b.fmul(x, x)
        small = self.fma(b.fmul(x, z), self.poly(z, _TANH_P), x)
        e = self.exp(b.fadd(ax, ax))
        big = b.fsub(self.c(x, 1.0), b.fdiv(self.c(x, 2.0), b.fadd(e, self.c(x, 1.0))))
        big = self.call("copysign", big, x)
        return self.sel(self.lt(ax, self.c(x, _TANH_SMALL)), small, big)

    def sigmoid(self, x):
        b = self.b
        e = self.exp(b.fneg(self.call("fabs", x)))
        num = self.sel(self.lt(x, self.c(x, 0.0)), e, self.c(x, 1.0))
        return b.fdiv(num, b.fadd(e, self.c(x, 1.0)))

    # ---- erf / erfc ------------------------------------------------------------------------------
    def _erfc_big(self, a):
        """erfc(a) for a >= 0.75 (any a >= 0 that is not NaN evaluates; a > 10.5 gives 0)."""
        b = self.b
        ac = self.sel(self.lt(a, self.c(a, _ERFC_ZERO)), a, self.c(a, _ERFC_ZERO))
        ac = self.sel(self.lt(ac, self.c(a, _ERF_SPLIT)), self.c(a, _ERF_SPLIT), ac)
        t = b.fdiv(self.c(a, 1.0), ac)
        rt = b.fmul(t, self.poly(b.fsub(t, self.c(a, _ERFC_T0)), _ERFC_R))
        hi = b.fmul(ac, ac)
        lo = self.fma(ac, ac, b.fneg(hi))                        # a^2 = hi + lo exactly
        scale = b.fmul(rt, b.fsub(self.c(a, 1.0), lo))           # exp(-lo) = 1 - lo
        y = self.exp(b.fneg(hi), scale)
        return self.sel(self.lt(a, self.c(a, _ERFC_ZERO)), y, self.c(a, 0.0))

    def _erf_small(self, x):
        """x P(x^2) as c0 x + x^3 Q(x^2): the leading term rounded once (FMA)."""
        b = self.b
        s = b.fmul(x, x)
        return self.fma(x, self.c(x, _ERF_P[0]), b.fmul(b.fmul(x, s), self.poly(s, _ERF_P[1:])))

    def erf(self, x):
        b = self.b
        ax = self.call("fabs", x)
        small = self._erf_small(x)
        big = b.fsub(self.c(x, 1.0), self._erfc_big(ax))
        big = self.sel(self.lt(ax, self.c(x, _ERF_ONE)), big, self.c(x, 1.0))
        big = self.call("copysign", big, x)
        y = self.sel(self.lt(ax, self.c(x, _ERF_SPLIT)), small, big)
        return self.sel(self.isnan(x), x, y)

    def erfc(self, x):
        b = self.b
        ax = self.call("fabs", x)
        pos = self._erfc_big(ax)
        neg = b.fsub(self.c(x, 2.0), pos)
        big = self.sel(self.lt(x, self.c(x, 0.0)), neg, pos)
        small = b.fsub(self.c(x, 1.0), self._erf_small(x))
        y = self.sel(self.lt(ax, self.c(x, _ERF_SPLIT)), small, big)
        return self.sel(self.isnan(x), x, y)


__all__ = ["VecMath", "FUNCTIONS", "ERROR_BOUNDS"]
