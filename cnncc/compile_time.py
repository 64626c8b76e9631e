"""Where compile time goes: the stages of one compile, and `cnncc bench --compile`.

``cnncc.compile`` leaves ``model.compile_stages`` (seconds per stage, kernel counts); the CLI
prints it with ``format_stages``. Stages: import (ONNX/DSL -> graph), cache_lookup (hashing
the model, loading a cached library), passes, lowering (loop IR, weight packing, the entry
function), kernels (wall time of building the unique kernels; ir_emission and llvm are their
parts in CPU seconds summed over the worker processes), link (loading objects into the JIT)
and cache_store (writing the model's library, in a background thread after compile returns:
cnncc.cache). ``bench_compile`` times compiles in fresh processes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

_ORDER = (("import", "import"), ("cache_lookup", "cache lookup"), ("passes", "passes"),
          ("lowering", "lowering"), ("kernels", "kernels"), ("link", "link"),
          ("cache_store", "cache store"))


def format_stages(stages: dict) -> str:
    """Two lines: seconds per stage, and what the kernels cost and where their code came from."""
    parts = []
    for key, label in _ORDER:
        if key == "cache_store" and stages.get("cache_store_background"):
            parts.append(f"{label} {stages[key]:.2f} s (in the background)" if key in stages
                         else f"{label} running in the background")
            continue
        if key not in stages:
            continue
        text = f"{label} {stages[key]:.2f} s"
        if key == "kernels" and stages.get("kernels_compiled"):
            text += (f" (IR emission {stages['ir_emission']:.2f} s + LLVM {stages['llvm']:.2f} s"
                     f" of CPU in {stages['workers']} process(es))")
        parts.append(text)
    lines = ["compile stages: " + ", ".join(parts)]
    if "kernels_unique" in stages:
        lines.append(f"kernels: {stages['kernel_calls']} calls of {stages['kernels_unique']} "
                     f"unique workloads; {stages['kernels_memory']} already loaded, "
                     f"{stages['kernels_disk']} from the kernel cache, "
                     f"{stages['kernels_compiled']} compiled")
    return "\n".join(lines)


_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import cnncc
from cnncc.cli import resolve_model
t1 = time.perf_counter()
spec, seed = sys.argv[1], int(sys.argv[2])
source = resolve_model(spec)
if seed and hasattr(source, "to_graph"):
    from cnncc.dsl.zoo import ZOO
    source = ZOO[spec.removeprefix("zoo:")](seed=seed)
c0 = os.times()
t2 = time.perf_counter()
model = cnncc.compile(source, threads=1)
t3 = time.perf_counter()
c1 = os.times()
import numpy as np
rng = np.random.default_rng(0)
model(*[rng.standard_normal(s).astype(d) for s, d in zip(model.input_shapes, model.input_dtypes)])
cpu = (c1.user + c1.system + c1.children_user + c1.children_system
       - c0.user - c0.system - c0.children_user - c0.children_system)
# This process's peak, VmHWM: ru_maxrss carries a parent's peak over exec, and so would the
# children's (the C compiler a cache store runs reports this process's size). Forked compile
# workers share this process's pages; their own LLVM memory is not counted.
with open("/proc/self/status") as f:
    rss = int(next(l for l in f if l.startswith("VmHWM:")).split()[1])
print(json.dumps({"import_cnncc": t1 - t0, "compile": t3 - t2, "cpu": cpu,
                  "peak_rss_mb": rss / 1024, "status": model.cache_status,
                  "stages": getattr(model, "compile_stages", {})}))
"""


def _child(spec: str, seed: int, cache_dir: str) -> dict:
    # Every model is stored, however fast it compiled: the third run measures a cached model.
    env = dict(os.environ, CNNCC_CACHE_DIR=cache_dir, CNNCC_CACHE_MIN_SECONDS="0")
    env.pop("CNNCC_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, spec, str(seed)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        from .ir import CompileError
        raise CompileError(f"compiling {spec} in a new process failed: "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_compile(specs: list[str]) -> list[dict]:
    """For each model, in fresh processes (threads=1) sharing a private cache that starts
    empty: ``cold`` (nothing cached), ``kernels`` (the model's library removed, zoo nets with
    other weights: every kernel from the kernel cache) and ``library`` (the cached model)."""
    rows = []
    for spec in specs:
        tmp = tempfile.mkdtemp(prefix="cnncc-bench-compile-")
        try:
            cold = _child(spec, 0, tmp)
            shutil.rmtree(os.path.join(tmp, "lib"), ignore_errors=True)
            kernels = _child(spec, 1, tmp)
            library = _child(spec, 1, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append({"model": spec, "cold": cold, "kernels": kernels, "library": library})
    return rows


def format_bench(rows: list[dict]) -> str:
    lines = ["compile time in a new process, threads=1 (wall s / CPU s incl. workers; peak RSS "
             "of compile + first run)",
             f"{'model':<22} {'cold':>15} {'kernels cached':>15} {'model cached':>15} "
             f"{'peak MB':>8} {'unique/calls':>12}"]
    for r in rows:
        cells = [f"{r[k]['compile']:.2f} / {r[k]['cpu']:.2f}" for k in ("cold", "kernels",
                                                                         "library")]
        st = r["cold"]["stages"]
        lines.append(f"{r['model']:<22} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
                     f"{r['cold']['peak_rss_mb']:>8.0f} "
                     f"{st.get('kernels_unique', 0):>5}/{st.get('kernel_calls', 0):<6}")
    imports = [r["cold"]["import_cnncc"] for r in rows]
    lines.append(f"import cnncc: {min(imports):.2f} s")
    for r in rows:
        lines.append(f"{r['model']} cold: " + format_stages(r["cold"]["stages"]).replace(
            "\n", f"\n{r['model']} cold: "))
    return "\n".join(lines)
