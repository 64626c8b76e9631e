"""`cnncc show`: the graph as Graphviz DOT (rendered to SVG/PNG/PDF when `dot` is installed).

Each node shows its op, its output type and the attributes that matter for reading the
optimized graph (fused epilogues, layouts); parameters are folded into their node's label.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from .ir import CompileError, Graph

# Attributes worth showing in a node's box (the rest is noise at graph scale).
_SHOWN = ("kernel_shape", "strides", "group", "activation", "epilogue", "layout", "block",
          "in_layout", "kind", "view")
# Ops whose output is in the blocked NCHW{c}c layout (ir/ops/layout.py); others pass it on.
_BLOCKED_OPS = ("ToNCHWc", "ConvNCHWc", "PoolNCHWc", "DwPwConvNCHWc")


def blocked_values(graph: Graph) -> set[str]:
    """Values in the NCHW{c}c layout: made by a blocked op, or by an elementwise op, reduction
    or concat of blocked values (5-D results)."""
    blocked: set[str] = set()
    for node in graph.nodes:
        if node.op == "FromNCHWc":
            continue
        if node.op in _BLOCKED_OPS or (any(i in blocked for i in node.inputs) and all(
                graph.types[o].rank == 5 for o in node.outputs if o in graph.types)):
            blocked.update(o for o in node.outputs if o)
    return blocked


def _quote(text: str) -> str:
    """A DOT string literal; real newlines become DOT's line breaks."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + text + '"'


def to_dot(graph: Graph) -> str:
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];']
    for name in graph.inputs:
        label = _quote(f"{name}\n{graph.types[name]}")
        lines.append(f"  {_quote('in:' + name)} [label={label}, shape=ellipse, "
                     "fillcolor=\"#e8f5e9\"];")
    producer = {}
    blocked = blocked_values(graph)
    for node in graph.nodes:
        for o in node.outputs:
            producer[o] = node.name
        attrs = [f"{k}={node.attrs[k]}" for k in _SHOWN if k in node.attrs]
        nparams = sum(graph.params[i].size for i in node.inputs if i in graph.params)
        label = [node.op, node.name]
        if node.outputs and node.outputs[0] in graph.types:
            label.append(str(graph.types[node.outputs[0]]))
        label += attrs
        if nparams:
            label.append(f"{nparams:,} params")
        color = "#eef3fb"
        if node.op in ("ToNCHWc", "FromNCHWc"):
            color = "#eeeeee"                   # a layout transform
        elif node.op.startswith("Fused") or "Conv" in node.op and "activation" in node.attrs:
            color = "#fff3e0"                   # a fused group
        elif any(o in blocked for o in node.outputs):
            color = "#e0f7fa"                   # runs on blocked activations
        lines.append(f"  {_quote(node.name)} [label={_quote(chr(10).join(label))}, "
                     f"fillcolor=\"{color}\"];")
    for node in graph.nodes:
        for i in node.inputs:
            if i in producer:
                style = ' [label="NCHWc", color="#00838f", penwidth=2]' if i in blocked else ""
                lines.append(f"  {_quote(producer[i])} -> {_quote(node.name)}{style};")
            elif i in graph.inputs:
                lines.append(f"  {_quote('in:' + i)} -> {_quote(node.name)};")
    for name in graph.outputs:
        lines.append(f"  {_quote('out:' + name)} [label={_quote(name)}, shape=ellipse, "
                     "fillcolor=\"#fce4ec\"];")
        src = producer.get(name, None)
        if src is not None:
            lines.append(f"  {_quote(src)} -> {_quote('out:' + name)};")
        elif name in graph.inputs:
            lines.append(f"  {_quote('in:' + name)} -> {_quote('out:' + name)};")
    lines.append("}")
    return "\n".join(lines)


def write_graph(graph: Graph, path: str) -> str:
    """Write ``graph`` to ``path``: rendered by `dot` for .svg/.png/.pdf when it is installed,
    DOT text otherwise (then written next to it as .dot). Returns the path written."""
    text = to_dot(graph)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext in ("svg", "png", "pdf"):
        dot = shutil.which("dot")
        if dot is not None:
            proc = subprocess.run([dot, f"-T{ext}", "-o", path], input=text, text=True,
                                  capture_output=True, timeout=120)
            if proc.returncode != 0:
                raise CompileError(f"graphviz failed: {proc.stderr.strip()[:300]}")
            return path
        path = os.path.splitext(path)[0] + ".dot"
    with open(path, "w") as f:
        f.write(text + "\n")
    return path
