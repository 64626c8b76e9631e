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
_SHOWN = ("kernel_shape", "strides", "group", "activation", "epilogue", "layout", "block")


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
        color = "#fff3e0" if node.op.startswith("Fused") else "#eef3fb"
        lines.append(f"  {_quote(node.name)} [label={_quote(chr(10).join(label))}, "
                     f"fillcolor=\"{color}\"];")
    for node in graph.nodes:
        for i in node.inputs:
            if i in producer:
                lines.append(f"  {_quote(producer[i])} -> {_quote(node.name)};")
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
