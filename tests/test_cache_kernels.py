"""One kernel per unique workload and the kernel object cache (backends/llvm/workloads.py,
objects.py): equal workloads share one compiled kernel; a new model (new process) whose kernels
were compiled before takes them from the cache; damaged entries are rebuilt; parallel workers
build the same code as one process; the kernels folder has its own size cap."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cnncc
from cnncc import cache
from cnncc.backends.llvm import jit, objects
from cnncc.backends.llvm.object_files import read_object
from cnncc.backends.llvm.workloads import target_signature, unique_kernels
from cnncc.ir.loop_walk import canonical_text
from cnncc.dsl.zoo import ZOO
from cnncc.ir import DType, Graph, TensorType
from cnncc.lower.program import lower_graph


def twin_convs(seed, second_channels=8):
    """Two 3x3 convs with the same shapes (their weights differ) on the same kind of input
    (``second_channels`` other than 8: two different workloads)."""
    rng = np.random.default_rng(seed)
    g = Graph("twins")
    a = g.add_input("a", TensorType(DType.float32, (1, 8, 10, 10)))
    b = g.add_input("b", TensorType(DType.float32, (1, 8, 10, 10)))
    outs = []
    for x, tag, co in ((a, "wa", 8), (b, "wb", second_channels)):
        w = g.add_param(tag, rng.standard_normal((co, 8, 3, 3)).astype(np.float32))
        y, = g.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1]})
        outs.append(g.add_node("Relu", [y])[0])
    g.outputs = outs
    return g


RNG = np.random.default_rng(1)
A, B = (RNG.standard_normal((1, 8, 10, 10)).astype(np.float32) for _ in range(2))


def check_against_reference(model, seed):
    ref = cnncc.compile(twin_convs(seed), target="reference")(A, B)
    for got, want in zip(model(A, B), ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_equal_workloads_share_one_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCC_CACHE", "0")
    m = cnncc.compile(twin_convs(0), threads=1)
    report = m.compile_report()
    names = [k.name for k in m.kernels]
    symbols = m.generated.symbols
    assert len(set(symbols[n] for n in names)) == report["kernels_unique"] < len(names)
    check_against_reference(m, 0)


def test_resnet50_kernel_count_before_and_after_dedup():
    """ResNet-50 lowers to 74 kernels; 36 distinct workloads are compiled (measured)."""
    from cnncc.passes import PassContext, run_pipeline

    machine = jit.host_target(1)
    graph = run_pipeline(ZOO["resnet50"]().to_graph().verify(),
                         PassContext(opt_level=3, machine=machine))
    lanes = machine.lanes
    kernels = [k for k, _ in lower_graph(graph, machine).ctx.kernels]
    symbols, unique = unique_kernels(kernels, target_signature(jit.target_info(), lanes, 1,
                                                               jit.has_openmp()))
    assert len(kernels) == 74 and len(unique) <= 40
    # Kernels sharing a symbol have the same canonical loop IR, and the names are restored.
    for k in kernels:
        assert canonical_text(k) == canonical_text(unique[symbols[k.name]])
    assert kernels[0].params[0].name != "p0"


SCRIPT = """
import json, sys, numpy as np, cnncc
sys.path.insert(0, {tests!r})
from test_cache_kernels import twin_convs, A, B, check_against_reference
m = cnncc.compile(twin_convs({seed}), threads=1)
check_against_reference(m, {seed})
print(json.dumps(m.compile_stages))
"""


def compile_in_new_process(seed, cache_dir, **env):
    code = SCRIPT.format(tests=os.path.dirname(__file__), seed=seed)
    env = dict(os.environ, CNNCC_CACHE_DIR=str(cache_dir), CNNCC_CACHE_MIN_SECONDS="inf", **env)
    env.pop("CNNCC_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import json
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_new_model_with_known_kernels_compiles_from_the_kernel_cache(tmp_path):
    cdir = tmp_path / "cache"
    first = compile_in_new_process(1, cdir)
    assert first["kernels_compiled"] == first["kernels_unique"] and first["kernels_disk"] == 0
    assert not (cdir / "lib").exists()          # no model stored: only kernels are reused
    # Other weights, a new process: every kernel comes from the cache, none is compiled.
    second = compile_in_new_process(2, cdir)
    assert second["kernels_disk"] == second["kernels_unique"] and second["kernels_compiled"] == 0
    # A damaged entry is detected, removed and compiled again (and stored intact).
    entries = sorted((cdir / "kernels").glob("*.o"))
    assert entries
    entries[0].write_bytes(entries[0].read_bytes()[:200])
    third = compile_in_new_process(3, cdir)
    assert third["kernels_compiled"] == 1 and third["kernels_disk"] == third["kernels_unique"] - 1
    assert read_object(str(entries[0])) is not None


def test_parallel_workers_build_the_same_code(monkeypatch):
    monkeypatch.setenv("CNNCC_CACHE", "0")
    lanes = jit.vector_lanes()
    kernels = [k for k, _ in lower_graph(twin_convs(0, 16), jit.host_target(1)).ctx.kernels]
    _, unique = unique_kernels(kernels, target_signature(jit.target_info(), lanes, 1, False))
    built = {}
    for jobs in ("1", "2"):
        monkeypatch.setenv("CNNCC_COMPILE_JOBS", jobs)
        built[jobs], stats = objects.build_objects(unique, lanes, 1, False)
        # Other Python threads (a test runner's) keep the build in this process.
        forks = threading.active_count() == 1
        assert stats.compiled == len(unique)
        assert stats.workers == (min(int(jobs), len(unique)) if forks else 1)
    assert len(unique) >= 2 and built["1"] == built["2"]


def test_bad_compile_jobs_setting_is_named(monkeypatch):
    monkeypatch.setenv("CNNCC_COMPILE_JOBS", "many")
    with pytest.raises(cnncc.CompileError, match="CNNCC_COMPILE_JOBS"):
        objects.compile_jobs(3)


def test_kernel_folder_has_its_own_cap(tmp_path):
    root = tmp_path / "cache"
    (root / "kernels").mkdir(parents=True)
    (root / "lib").mkdir()
    now = time.time()
    for i, age in enumerate((300, 200, 100)):
        path = root / "kernels" / f"cnk_{i}.o"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
    (root / "lib" / "model").mkdir()
    (root / "lib" / "model" / "m.so").write_bytes(b"y" * 5000)
    removed = cache.evict(str(root), 2000, folders=("kernels",))
    assert [os.path.basename(p) for p in removed] == ["cnk_0.o"]
    assert (root / "lib" / "model" / "m.so").exists()   # models are capped separately


def test_loops_left_to_llvm_unroll(monkeypatch):
    """Unrolled loops that index no scratch buffer reach LLVM as loops asking for a full
    unroll (the numbers of every kernel are checked by the llvm and zoo tests)."""
    monkeypatch.setenv("CNNCC_CACHE", "0")
    m = cnncc.compile(twin_convs(0), threads=1)
    assert "llvm.loop.unroll.full" in m.ir_text


def test_compile_stages_are_reported(monkeypatch, capsys):
    from cnncc.cli import main

    monkeypatch.setenv("CNNCC_CACHE", "0")
    m = cnncc.compile(twin_convs(4), threads=1)
    st = m.compile_stages
    for key in ("import", "passes", "lowering", "kernels", "ir_emission", "llvm", "link"):
        assert st[key] >= 0, key
    assert st["kernels_memory"] + st["kernels_disk"] + st["kernels_compiled"] == \
        st["kernels_unique"] <= st["kernel_calls"] == len(m.kernels)
    assert main(["run", "lenet5", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "compile stages: import" in out and "unique workloads" in out


def test_bench_compile_cold_and_warm(capsys):
    from cnncc.cli import main

    assert main(["bench", "--compile", "lenet5", "--json"]) == 0
    import json
    (row,) = json.loads(capsys.readouterr().out)
    cold, kernels, library = row["cold"], row["kernels"], row["library"]
    assert (cold["status"], kernels["status"], library["status"]) == \
        ("compiled", "disk", "library")
    assert cold["stages"]["kernels_compiled"] == cold["stages"]["kernels_unique"] > 0
    assert kernels["stages"]["kernels_disk"] == kernels["stages"]["kernels_unique"]
    assert cold["peak_rss_mb"] > 0 and cold["import_cnncc"] > 0


def _compile_in_daemon(queue):
    try:
        m = cnncc.compile(twin_convs(0, 16), cache=False)
        queue.put(("ok", m.build_stats.workers))
    except BaseException as e:                    # reported to the parent, never swallowed
        queue.put(("error", repr(e)))


def test_a_daemonic_process_compiles_without_workers(monkeypatch):
    """A multiprocessing.Pool worker is daemonic and may not fork children: it compiles every
    kernel itself."""
    import multiprocessing

    monkeypatch.setenv("CNNCC_CACHE", "0")
    monkeypatch.setenv("CNNCC_COMPILE_JOBS", "2")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_compile_in_daemon, args=(queue,), daemon=True)
    proc.start()
    status, detail = queue.get(timeout=300)
    proc.join(60)
    assert status == "ok" and detail <= 1, detail
