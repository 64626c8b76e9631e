"""Deterministic text form of loop IR kernels (C-like pseudo code)."""
from __future__ import annotations

from .loop import (Allocate, And, Bin, Call, Cast, Cmp, Const, Expr, For, If, Kernel, Let, Load,
                   Not, Or, Prefetch, Select, Seq, Stmt, Store, Var)

_SYM = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
        "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def format_expr(e: Expr) -> str:
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Const):
        if e.dtype.is_float:
            return f"{e.value!r}f" if e.dtype.value == "float32" else repr(e.value)
        return str(e.value).lower() if isinstance(e.value, bool) else str(e.value)
    if isinstance(e, Bin):
        if e.op in ("min", "max"):
            return f"{e.op}({format_expr(e.a)}, {format_expr(e.b)})"
        return f"({format_expr(e.a)} {_SYM[e.op]} {format_expr(e.b)})"
    if isinstance(e, Cmp):
        return f"({format_expr(e.a)} {_SYM[e.op]} {format_expr(e.b)})"
    if isinstance(e, And):
        return f"({format_expr(e.a)} && {format_expr(e.b)})"
    if isinstance(e, Or):
        return f"({format_expr(e.a)} || {format_expr(e.b)})"
    if isinstance(e, Not):
        return f"!{format_expr(e.a)}"
    if isinstance(e, Select):
        return f"select({format_expr(e.cond)}, {format_expr(e.a)}, {format_expr(e.b)})"
    if isinstance(e, Cast):
        return f"{e.dtype}({format_expr(e.a)})"
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(format_expr(a) for a in e.args)})"
    if isinstance(e, Load):
        return f"{e.buf.name}[{', '.join(format_expr(i) for i in e.indices)}]"
    raise TypeError(f"unknown expression {type(e).__name__}")


def format_stmt(s: Stmt, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(s, For):
        kind = "" if s.kind == "serial" else f"{s.kind} "
        start = format_expr(s.start)
        rng = format_expr(s.extent) if start == "0" else f"{start}, {start} + " \
            f"{format_expr(s.extent)}"
        return [f"{pad}{kind}for {s.var.name} in range({rng}):"] + format_stmt(s.body, indent + 1)
    if isinstance(s, Store):
        idx = ", ".join(format_expr(i) for i in s.indices)
        return [f"{pad}{s.buf.name}[{idx}] = {format_expr(s.value)}"]
    if isinstance(s, Seq):
        return [line for x in s.stmts for line in format_stmt(x, indent)]
    if isinstance(s, If):
        head = f"{pad}if{' masked' if s.masked else ''} {format_expr(s.cond)}:"
        out = [head] + format_stmt(s.then, indent + 1)
        if s.else_ is not None:
            out += [f"{pad}else:"] + format_stmt(s.else_, indent + 1)
        return out
    if isinstance(s, Let):
        return [f"{pad}let {s.var.name} = {format_expr(s.value)}"] + format_stmt(s.body, indent)
    if isinstance(s, Allocate):
        shape = "x".join(str(d) for d in s.buf.shape)
        return [f"{pad}local {s.buf.name}: {s.buf.dtype}[{shape}]"] + format_stmt(s.body, indent)
    if isinstance(s, Prefetch):
        idx = ", ".join(format_expr(i) for i in s.indices)
        return [f"{pad}prefetch L{s.level} {s.buf.name}[{idx}]"]
    raise TypeError(f"unknown statement {type(s).__name__}")


def format_kernel(k: Kernel) -> str:
    params = ", ".join(f"{b.name}: {b.dtype}[{'x'.join(str(d) for d in b.shape)}]"
                       for b in k.params)
    return "\n".join([f"kernel {k.name}({params}):"] + format_stmt(k.body, 1))
