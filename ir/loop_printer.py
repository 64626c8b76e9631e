"""Deterministic text form of loop IR kernels (C-like pseudo code).

Nodes are told apart by their class name, so that loop.py can import this module for
``Kernel.__str__`` without the two importing each other.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loop import Expr, Kernel, Stmt

_SYM = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%",
        "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def format_expr(e: Expr) -> str:
    kind = type(e).__name__
    if kind == "Var":
        return e.name
    if kind == "Const":
        if e.dtype.is_float:
            return f"{e.value!r}f" if e.dtype.value == "float32" else repr(e.value)
        return str(e.value).lower() if isinstance(e.value, bool) else str(e.value)
    if kind == "Bin":
        if e.op in ("min", "max"):
            return f"{e.op}({format_expr(e.a)}, {format_expr(e.b)})"
        return f"({format_expr(e.a)} {_SYM[e.op]} {format_expr(e.b)})"
    if kind == "Cmp":
        return f"({format_expr(e.a)} {_SYM[e.op]} {format_expr(e.b)})"
    if kind == "And":
        return f"({format_expr(e.a)} && {format_expr(e.b)})"
    if kind == "Or":
        return f"({format_expr(e.a)} || {format_expr(e.b)})"
    if kind == "Not":
        return f"!{format_expr(e.a)}"
    if kind == "Select":
        return f"select({format_expr(e.cond)}, {format_expr(e.a)}, {format_expr(e.b)})"
    if kind == "Cast":
        return f"{e.dtype}({format_expr(e.a)})"
    if kind == "Call":
        return f"{e.fn}({', '.join(format_expr(a) for a in e.args)})"
    if kind == "Load":
        return f"{e.buf.name}[{', '.join(format_expr(i) for i in e.indices)}]"
    if kind == "LanePermute":
        return f"permute({format_expr(e.a)}, {e.lane.name}, [{', '.join(map(str, e.perm))}])"
    raise TypeError(f"unknown expression {type(e).__name__}")


def format_stmt(s: Stmt, indent: int = 0) -> list[str]:
    pad = "  " * indent
    kind = type(s).__name__
    if kind == "For":
        loop = "" if s.kind == "serial" else f"{s.kind} "
        start = format_expr(s.start)
        rng = format_expr(s.extent) if start == "0" else f"{start}, {start} + " \
            f"{format_expr(s.extent)}"
        return [f"{pad}{loop}for {s.var.name} in range({rng}):"] + format_stmt(s.body, indent + 1)
    if kind == "Store":
        idx = ", ".join(format_expr(i) for i in s.indices)
        return [f"{pad}{s.buf.name}[{idx}] = {format_expr(s.value)}"]
    if kind == "Seq":
        return [line for x in s.stmts for line in format_stmt(x, indent)]
    if kind == "If":
        head = f"{pad}if{' masked' if s.masked else ''} {format_expr(s.cond)}:"
        out = [head] + format_stmt(s.then, indent + 1)
        if s.else_ is not None:
            out += [f"{pad}else:"] + format_stmt(s.else_, indent + 1)
        return out
    if kind == "Let":
        return [f"{pad}let {s.var.name} = {format_expr(s.value)}"] + format_stmt(s.body, indent)
    if kind == "Allocate":
        shape = "x".join(str(d) for d in s.buf.shape)
        return [f"{pad}local {s.buf.name}: {s.buf.dtype}[{shape}]"] + format_stmt(s.body, indent)
    if kind == "Prefetch":
        idx = ", ".join(format_expr(i) for i in s.indices)
        return [f"{pad}prefetch L{s.level} {s.buf.name}[{idx}]"]
    raise TypeError(f"unknown statement {type(s).__name__}")


def format_kernel(k: Kernel) -> str:
    params = ", ".join(f"{b.name}: {b.dtype}[{'x'.join(str(d) for d in b.shape)}]"
                       for b in k.params)
    return "\n".join([f"kernel {k.name}({params}):"] + format_stmt(k.body, 1))
