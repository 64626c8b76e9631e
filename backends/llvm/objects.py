"""Kernel object code: built once per workload, kept on disk, compiled in parallel processes.

Each unique kernel (workloads.py) becomes its own LLVM module, optimized at O3 and compiled
once to position-independent object code (jit.object_code): the JIT loads it, and exported and
cached libraries link the same bytes. Objects are cached in

    $CNNCC_CACHE_DIR/kernels/<symbol>.o      (CNNCC_CACHE=0: no cache)

shared by every model and process: the symbol hashes the kernel's loop IR, the target and the
code generator's version, so a model whose kernels were all compiled before (by any model)
needs no LLVM for them. A file is the sha256 of the code followed by the code, written to a
temporary name and renamed (atomic); a damaged file is removed and compiled again. The folder
is capped at CNNCC_KERNEL_CACHE_MAX_BYTES (default 1 GiB of code; weights are never stored
here), the least recently used first.

Kernels missing from the cache are compiled by CNNCC_COMPILE_JOBS processes (default: one per
core): llvmlite serializes every call into LLVM behind one lock, so threads do not overlap, and
the IR emission in Python needs the GIL. Workers are forked (they inherit the JIT's target
machine), and only while this process runs no other Python thread (a forked child would
inherit the locks other threads hold); a pool that cannot start or breaks falls back to
compiling in this process.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from cnncc.ir import CompileError
from cnncc.ir.loop import Kernel
from . import jit
from .codegen import ModuleBuilder
from cnncc.backends.cache_folders import cache_root, evict
from .object_files import read_object, write_object

DEFAULT_MAX_BYTES = 1 << 30


@dataclass
class BuildStats:
    """What building a model's kernels cost (summed over workers for the per-stage times)."""
    kernels: int = 0                # unique kernels asked for
    memory: int = 0                 # already loaded in this process
    disk: int = 0                   # object code from the kernel cache
    compiled: int = 0               # generated, optimized and compiled now
    emit_seconds: float = 0.0       # IR emission (Python), CPU seconds summed over workers
    llvm_seconds: float = 0.0       # parse + O3 + code generation, CPU s summed over workers
    wall_seconds: float = 0.0       # the whole build, wall clock
    workers: int = 0
    extra: dict = field(default_factory=dict)

    def report(self, calls: int) -> dict:
        """The kernel part of a compile's stages (cnncc/compile_time.py); ``calls``: kernel
        calls in the program."""
        return {"kernels": self.wall_seconds, "ir_emission": self.emit_seconds,
                "llvm": self.llvm_seconds, "kernels_unique": self.kernels, "kernel_calls": calls,
                "kernels_memory": self.memory, "kernels_disk": self.disk,
                "kernels_compiled": self.compiled, "workers": self.workers}


def kernel_dir() -> str | None:
    root = cache_root()
    return os.path.join(root, "kernels") if root else None


def max_bytes() -> int:
    try:
        return int(float(os.environ.get("CNNCC_KERNEL_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES)))
    except ValueError:
        return DEFAULT_MAX_BYTES


def compile_jobs(pending: int) -> int:
    """Worker processes for ``pending`` kernels (CNNCC_COMPILE_JOBS, default the core count).

    One (compile in this process) while other Python threads run: a forked child inherits
    their locks (LLVM's, the JIT's) held, and would wait for them forever; and in a daemonic
    process (a multiprocessing.Pool worker's), which may not have children."""
    try:
        jobs = int(os.environ.get("CNNCC_COMPILE_JOBS", "0"))
    except ValueError:
        raise CompileError("CNNCC_COMPILE_JOBS must be an integer (worker processes compiling "
                           f"kernels), got {os.environ['CNNCC_COMPILE_JOBS']!r}") from None
    if threading.active_count() > 1 or multiprocessing.current_process().daemon:
        return 1
    jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
    return max(1, min(jobs, pending))


def _path(folder: str | None, symbol: str) -> str | None:
    return os.path.join(folder, f"{symbol}.o") if folder else None


def kernel_ir(symbol: str, kernel: Kernel, lanes: int, threads: int, openmp: bool) -> str:
    """The LLVM IR text of one kernel compiled alone under ``symbol``."""
    mb = ModuleBuilder(symbol, lanes, threads, openmp, jit.cpu_flags())
    mb.add_kernel(Kernel(symbol, kernel.params, kernel.body))
    return str(mb)


def _build(job: tuple) -> tuple[str, bytes, float, float]:
    """Worker: (symbol, kernel, lanes, threads, openmp) -> (symbol, object code, emission
    seconds, LLVM seconds)."""
    symbol, kernel, lanes, threads, openmp = job
    t0 = time.process_time()           # CPU seconds: wall time means little on a busy machine
    text = kernel_ir(symbol, kernel, lanes, threads, openmp)
    t1 = time.process_time()
    code = jit.object_code(text)
    return symbol, code, t1 - t0, time.process_time() - t1


def build_objects(unique: dict, lanes: int, threads: int, openmp: bool,
                  skip: set = frozenset()) -> tuple[dict, BuildStats]:
    """Object code of every kernel in ``unique`` ({symbol: Kernel}) but those in ``skip`` (already
    loaded): ({symbol: code}, stats). From the cache when there, else compiled (in parallel)
    and stored."""
    start = time.perf_counter()
    stats = BuildStats(kernels=len(unique), memory=len(set(unique) & set(skip)))
    folder = kernel_dir()
    result, todo = {}, []
    for sym in unique:
        if sym in skip:
            continue
        found = read_object(_path(folder, sym))
        if found is not None:
            result[sym] = found
            stats.disk += 1
        else:
            todo.append(sym)
    jobs = [(sym, unique[sym], lanes, threads, openmp) for sym in todo]
    stats.workers = compile_jobs(len(jobs)) if jobs else 0
    for sym, code, emit_s, llvm_s in _run(jobs, stats.workers):
        result[sym] = code
        stats.compiled += 1
        stats.emit_seconds += emit_s
        stats.llvm_seconds += llvm_s
        write_object(_path(folder, sym), code)
    if todo and folder:
        evict(os.path.dirname(folder), max_bytes(), folders=("kernels",))
    stats.wall_seconds = time.perf_counter() - start
    return result, stats


# The jobs of the running build: forked workers inherit them (only indices cross the pipe).
_JOBS: list = []


def _build_index(i: int) -> tuple[str, bytes, float, float]:
    return _build(_JOBS[i])


def _run(jobs: list, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        return [_build(j) for j in jobs]
    from concurrent.futures.process import BrokenProcessPool

    # Largest kernels first: the last one to finish decides the wall time.
    jobs = sorted(jobs, key=lambda j: -_weight(j[1]))
    with _FORK_LOCK:
        _JOBS[:] = jobs
        try:
            with ProcessPoolExecutor(workers,
                                     mp_context=multiprocessing.get_context("fork")) as ex:
                return list(ex.map(_build_index, range(len(jobs))))
        except (BrokenProcessPool, OSError, ValueError):
            return [_build(j) for j in jobs]
        finally:
            _JOBS.clear()


_FORK_LOCK = threading.Lock()


def _weight(kernel: Kernel) -> int:
    from cnncc.ir.loop_walk import walk_stmts

    return sum(1 for _ in walk_stmts(kernel.body))
