"""`cnncc bench --roofline FILE`: the roofline picture of the fused and the unfused program.

Log-log, FLOP/byte against GFLOP/s: the FMA peak (flat) and the memory roofs (L2, last-level
cache, DRAM; sloped) measured on this machine; one marker per kernel (area by its share of its
program's time), unfused and fused in two colours; a thin line from every unfused kernel to
the fused kernel that does its work now (``covers`` of the rows, from Node.origin); the 10
most expensive kernels named. Kernels without FLOPs (layout changes, copies) have no place on
the FLOP/byte axis: the caption counts them. The SVG output names its artists (gid ``roof-*``,
``kernels-fused``, ``kernels-unfused``, ``joins``) so tests can find them.
"""
from __future__ import annotations

import os
from typing import Any

from .bandwidth import Bandwidth
from .ir import CompileError
from .roofline import attainable_gflops

FORMATS = (".png", ".svg", ".pdf")
COLOURS = {"unfused": "#dd8452", "fused": "#4c72b0"}
LABELLED = 10


def check_path(path: str) -> None:
    """A clear error for an output file the plot cannot be written as."""
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise CompileError(f"--roofline writes {', '.join(FORMATS)} files, got '{path}'")


def require_pyplot(option: str = "--roofline") -> Any:
    """pyplot on the non-interactive Agg backend, or a clear error naming ``option`` and the
    extra to install."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CompileError(f"{option} needs matplotlib: pip install 'cnncc[plot]'") from None
    return plt


def short_name(node: str) -> str:
    """The last three dotted parts of a node name (enough to find it in the table)."""
    return ".".join(node.split(".")[-3:])


def plot_roofline(path: str, programs: dict[str, list[dict]], peak_gflops: float,
                  bandwidth: Bandwidth, title: str) -> dict:
    """Draw the roofline of ``programs`` ({"unfused": rows, "fused": rows}, rows as
    cnncc.roofline.layer_rows makes them) into ``path``; returns what was drawn: markers per
    program, joins, labelled kernels, kernels left out (no FLOPs)."""
    check_path(path)
    plt = require_pyplot()
    fig, ax = plt.subplots(figsize=(10, 6.5))
    points: dict[str, dict[str, tuple[float, float]]] = {}
    drawn: dict[str, Any] = {"markers": {}, "left_out": {}, "joins": 0, "labelled": []}
    everything = []
    for name, rows in programs.items():
        total = sum(r["ms"] for r in rows) or 1.0
        shown = [r for r in rows if r["flops"] > 0 and r["bytes"] > 0 and r["ms"] > 0]
        points[name] = {r["node"]: (r["intensity"], r["gflops"]) for r in shown}
        drawn["markers"][name] = len(shown)
        drawn["left_out"][name] = len(rows) - len(shown)
        ax.scatter([r["intensity"] for r in shown], [r["gflops"] for r in shown],
                   s=[15 + 900 * r["ms"] / total for r in shown], c=COLOURS.get(name, "grey"),
                   alpha=0.65, edgecolors="white", linewidths=0.5, zorder=3, gid=f"kernels-{name}",
                   label=f"{name}: {len(rows)} kernels, {total:.2f} ms")
        everything += [(r, name) for r in shown]
    joins = []
    for row in programs.get("fused", []):
        if row["node"] not in points.get("fused", {}):
            continue
        end = points["fused"][row["node"]]
        for src in row.get("covers", []):
            if src in points.get("unfused", {}):
                joins.append((points["unfused"][src], end))
    for (x0, y0), (x1, y1) in joins:
        ax.plot([x0, x1], [y0, y1], color="grey", lw=0.5, alpha=0.35, zorder=2, gid="joins")
    drawn["joins"] = len(joins)
    xs = [p[0] for pts in points.values() for p in pts.values()] or [1.0]
    ys = [p[1] for pts in points.values() for p in pts.values()] or [1.0]
    lo, hi = min(xs + [0.1]) / 2, max(xs + [peak_gflops / bandwidth.dram.roof_gbs]) * 2
    # Labels of neighbouring markers (a kernel and its fused replacement, repeated blocks)
    # take turns above-right, below-right, above-left and below-left.
    offsets = [((5, 4), "left"), ((5, -10), "left"), ((-5, 4), "right"), ((-5, -10), "right")]
    for k, (row, name) in enumerate(sorted(everything, key=lambda e: -e[0]["ms"])[:LABELLED]):
        offset, align = offsets[k % len(offsets)]
        ax.annotate(short_name(row["node"]), (row["intensity"], row["gflops"]), fontsize=7,
                    color=COLOURS.get(name, "black"), xytext=offset, ha=align,
                    textcoords="offset points", zorder=4,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                          "alpha": 0.6})
        drawn["labelled"].append(row["node"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(ys + [peak_gflops / 100]) / 2, max(ys + [peak_gflops]) * 2)
    ax.set_xlabel("arithmetic intensity, FLOP/byte (compulsory traffic)")
    ax.set_ylabel("achieved GFLOP/s (each kernel timed alone)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _draw_roofs(ax, lo, hi, peak_gflops, bandwidth)
    ax.grid(True, which="major", alpha=0.3)
    left = sum(drawn["left_out"].values())
    if left:
        ax.text(0.99, 0.01, f"not shown: {left} kernels without FLOPs (layout changes, copies)",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="grey")
    legend = ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.04), fontsize=8)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _draw_roofs(ax: Any, lo: float, hi: float, peak: float, bandwidth: Bandwidth) -> None:
    """The compute roof and the memory roofs, each named with its measured figure (call
    with the axes' final limits set: the labels follow the slope as drawn)."""
    import math

    import numpy as np

    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.full_like(x, peak), color="black", lw=1.5, gid="roof-compute")
    # at the left end: above the memory slopes, where no kernel sits
    ax.text(lo * 1.2, peak * 1.08, f"FMA peak {peak:.0f} GFLOP/s", ha="left", fontsize=8)
    for rates, style in zip(bandwidth.levels, ("--", "-.", ":")):
        gbs = rates.roof_gbs
        y = [attainable_gflops(peak, gbs, v) for v in x]
        ax.plot(x, y, color="black", lw=1.2, ls=style, gid=f"roof-{rates.level}")
        at = max(lo * 1.2, peak / gbs / 6)          # on the slope, left of the ridge point
        (x0, y0), (x1, y1) = ax.transData.transform([(at, gbs * at), (at * 2, gbs * at * 2)])
        angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
        ax.text(at, gbs * at * 1.12, f"{rates.level} {gbs:.0f} GB/s", fontsize=8,
                rotation=angle, rotation_mode="anchor", ha="left", va="bottom")


ISA_OF_LANES = {16: "AVX-512", 8: "AVX2", 4: "SSE"}


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo), or the machine type."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown CPU"


def plot_report_roofline(report: Any, path: str) -> dict:
    """The roofline of a `cnncc bench --per-layer` report (cnncc.bench.BenchReport)."""
    if not report.peak_gflops or not report.bandwidth:
        raise CompileError("the roofline needs the measured peak and bandwidth (target llvm, "
                           "--per-layer)")
    bandwidth = Bandwidth.from_dict(report.bandwidth)
    isa = ISA_OF_LANES.get(bandwidth.lanes, f"{bandwidth.lanes} lanes")
    title = (f"{report.model}: roofline of every kernel, unfused (opt 0) vs fused (opt 3)\n"
             f"{cpu_model()}, {isa}, {report.threads} thread(s); marker area = share of the "
             "program's kernel time")
    return plot_roofline(path, {"unfused": report.unfused_layers, "fused": report.layers},
                         report.peak_gflops, bandwidth, title)
