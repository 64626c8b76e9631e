"""The whole pipeline, top to bottom, in this order and nowhere else:

    source --frontend--> Graph --passes--> Graph --lowering--> Program --backend--> CompiledModel

The Target is made once here; passes, lowering and backend receive it. A code-generating
backend gets the lowered Program and never calls back up (backends/__init__.py)."""
from __future__ import annotations

import os
import time
from typing import Any

from . import cache, tuning_log

from .backends import BACKENDS
from .ir import CompileError, Graph
from .ir.target import Target
from .ir.batch import batch_refusal
from .lower.program import Program, lower_graph
from .passes import PassContext, run_pipeline
from .runtime import CompiledModel

DEFAULT_TARGET = "llvm" if "llvm" in BACKENDS else "reference"


def load_graph(source: Any, input_shapes: dict[str, Any] | None = None) -> Graph:
    """Turn any accepted source into a verified Graph.

    ``source``: a path to an .onnx file, its bytes, an onnx.ModelProto, a Graph, or a cnncc.dsl
    net. ``input_shapes`` fixes symbolic input dims of ONNX models ({input name: shape}).
    """
    if isinstance(source, Graph):
        return source.verify()
    to_graph = getattr(source, "to_graph", None)
    if callable(to_graph):
        return to_graph().verify()
    import onnx     # only for ONNX sources: importing it costs about half a second

    if isinstance(source, (str, os.PathLike, bytes, onnx.ModelProto)):
        from .frontend.onnx import import_model
        src = os.fspath(source) if isinstance(source, os.PathLike) else source
        return import_model(src, input_shapes=input_shapes)
    raise CompileError(f"cannot compile a {type(source).__name__}: expected an ONNX path or "
                       "bytes, an onnx.ModelProto, a cnncc Graph or a cnncc.dsl net")


def _own_graph(source: Any) -> bool:
    """Whether load_graph made ``source``'s graph itself (an ONNX import, a DSL net's copy), so
    that no caller holds its parameter dict (a DSL net's arrays stay the net's)."""
    return not isinstance(source, Graph)


def _check_options(target: str, opt_level: int, threads: int | None) -> None:
    if target not in BACKENDS:
        raise CompileError(f"unknown target '{target}' (available: {', '.join(BACKENDS)})")
    if opt_level not in (0, 1, 2, 3):
        raise CompileError(f"opt_level must be 0..3, got {opt_level}")
    check_threads(threads)


def check_threads(threads: int | None) -> None:
    """CompileError unless ``threads`` is None (every core) or a positive int."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise CompileError(f"threads must be a positive integer, got {threads!r}")


def host_target(threads: int | None = None) -> Target:
    """The Target that target "llvm" compiles for on this machine (or for CNNCC_CPU /
    CNNCC_FEATURES): ISA, vector lanes and registers, caches, cores; ``threads`` defaults to
    the cores."""
    return BACKENDS["llvm"].machine(threads)


def _optimize(graph: Graph, target: str, opt_level: int, skip: frozenset,
              lowrank_tol: float | None = None, machine: Target | None = None) -> Graph:
    if BACKENDS[target].native:
        # The reference target is the oracle: it runs the graph exactly as imported.
        return run_pipeline(graph, PassContext(opt_level=opt_level, target=target, skip=skip,
                                               lowrank_tol=lowrank_tol, machine=machine))
    return graph


def lower(graph: Graph, target: str, opt_level: int = 3, machine: Target | None = None,
          schedules: dict | None = None, release_params: bool = False) -> Program | Graph:
    """The lowering stage: ``graph`` (optimized) as the Program that ``target``'s backend
    generates code from, with that target's schedules (CPU: for ``machine``, using the tuned
    ``schedules`` by workload key; GPU); opt_level 0 copies every concat (no in-place
    slices); ``release_params``: the graph's arrays belong to this compile and are dropped
    once packed (cnncc/lower/program.py). The reference target interprets the graph itself: it
    gets ``graph`` back."""
    kind = BACKENDS[target].lowering
    if kind is None:
        return graph
    return lower_graph(graph, machine if kind == "cpu" else None, fuse=opt_level > 0,
                       gpu=kind == "gpu", schedules=schedules if kind == "cpu" else None,
                       release_params=release_params)


def compile(source: Any, target: str | None = None, opt_level: int = 3,
            threads: int | None = None, input_shapes: dict[str, Any] | None = None,
            **options: Any) -> CompiledModel:
    """Compile ``source`` for ``target`` and return a callable CompiledModel.

    ``opt_level`` 0 runs no graph optimization (every op its own kernel), 3 runs all passes;
    ``threads`` is the native thread count (default: all cores); ``input_shapes`` fixes
    symbolic ONNX input dims. Other options go to the target (e.g. ``skip_passes=[...]``;
    ``dw_lowrank_tol=0.01`` opts into approximate depthwise factoring, printing its error bound).

    On the llvm target, compiled models are cached on disk (cnncc.cache; CNNCC_CACHE=0 turns
    it off, ``cache=False`` skips it for one call): compiling the same model again loads the
    library built the first time (``model.cache_status == "library"``).
    """
    target = target or DEFAULT_TARGET
    _check_options(target, opt_level, threads)
    # An earlier compile's model may still be being stored: its entry is then found, and no
    # other thread runs while kernels are compiled in forked workers (cnncc.cache).
    cache.wait_for_stores()
    use_cache = bool(options.pop("cache", True))
    skip = frozenset(options.pop("skip_passes", ()))
    lowrank_tol = options.pop("dw_lowrank_tol", None)
    start = time.perf_counter()
    graph = load_graph(source, input_shapes)
    stages = {"import": time.perf_counter() - start}
    # The one Target of this compile (None for targets that are not CPUs): passes, lowering
    # and the backend read it; nothing below asks the machine again.
    machine = BACKENDS[target].machine(threads)
    options = dict(options, opt_level=opt_level, threads=threads)
    if machine is not None:
        options.update(threads=machine.threads, machine=machine)
        if "schedules" not in options:      # the tuning log's winners (cnncc tune), if any
            options["schedules"] = tuning_log.schedules(machine)

    def build(**extra: Any) -> CompiledModel:
        t0 = time.perf_counter()
        optimized = _optimize(graph, target, opt_level, skip, lowrank_tol, machine)
        # Lowering drops each array from ``optimized`` once packed (peak memory): those the
        # passes made (BatchNorm folded into a conv's weights) are freed then, the imported
        # ones too when ``graph`` is ours (cleared here: ``optimized`` shares or replaces its
        # arrays). A caller's Graph keeps its dict and arrays.
        release = bool(extra.pop("release_params", False)) and (
            optimized is not graph or _own_graph(source))
        if release and optimized is not graph and _own_graph(source):
            graph.params = {}
        t1 = time.perf_counter()
        program = lower(optimized, target, opt_level, machine, options.get("schedules"),
                        release_params=release)
        report = dict(stages, passes=t1 - t0, lowering=time.perf_counter() - t1)
        built = BACKENDS[target].build(program, dict(options, **extra))
        for stage, seconds in getattr(built, "compile_report", dict)().items():
            report[stage] = report.get(stage, 0) + seconds
        built.compile_stages = report     # seconds per stage (cnncc/compile_time.py)
        return built

    key = None
    if use_cache and target == "llvm" and cache.cache_root() is not None:
        t0 = time.perf_counter()
        key = cache.model_key(graph, target, dict(options, skip_passes=sorted(skip),
                                                  dw_lowrank_tol=lowrank_tol))
        hit = cache.lookup(key, graph, rebuild=build)
        stages["cache_lookup"] = time.perf_counter() - t0
        if hit is not None:
            hit.compile_stages = stages
            return hit              # its json carries batch_refusal, stored with it below
    start = time.perf_counter()
    refusal = batch_refusal(graph)
    model = build(release_params=target == "llvm")
    model.batch_refusal = refusal
    if key is not None and time.perf_counter() - start >= cache.min_seconds():
        cache.store_in_background(key, model)
    return model


def export(source: Any, out_dir: str | os.PathLike, name: str | None = None,
           threads: int | None = None, opt_level: int = 3, emit: Any = (),
           input_shapes: dict[str, Any] | None = None, report: dict | None = None,
           **options: Any) -> dict[str, str]:
    """Compile ``source`` ahead of time into ``out_dir``/NAME.so, NAME.h and NAME.json (plus
    NAME.ll / NAME.s for ``emit`` "llvm" / "asm"); returns {"library", "header", "metadata",
    ...: path}. NAME defaults to the model file's stem or the net's name, made a C identifier;
    a NAME given must be one. ``threads`` defaults to 1 (the library then needs only libc).
    ``report``: a dict that receives the seconds per compile stage (cnncc/compile_time.py).
    """
    from .backends.llvm.aot import c_identifier, check_name, export_library
    from .backends.llvm.model import generate

    _check_options("llvm", opt_level, threads)
    cache.wait_for_stores()             # see compile
    emit = (emit,) if isinstance(emit, str) else tuple(emit or ())
    if name is None:
        name = c_identifier(_default_name(source))
    check_name(name)
    skip = frozenset(options.pop("skip_passes", ()))
    lowrank_tol = options.pop("dw_lowrank_tol", None)
    if options:
        raise CompileError(f"unknown export option(s) {sorted(options)}")
    machine = host_target(threads or 1)
    report = {} if report is None else report
    t0 = time.perf_counter()
    source_graph = load_graph(source, input_shapes)
    t1 = time.perf_counter()
    graph = _optimize(source_graph, "llvm", opt_level, skip, lowrank_tol, machine)
    t2 = time.perf_counter()
    gen = generate(lower(graph, "llvm", opt_level, machine, tuning_log.schedules(machine)),
                   machine)
    report.update({"import": t1 - t0, "passes": t2 - t1,
                   "lowering": time.perf_counter() - t2})
    return export_library(gen, os.fspath(out_dir), name, emit, report=report,
                          batch_refusal=batch_refusal(source_graph))


def _default_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.splitext(os.path.basename(os.fspath(source)))[0]
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return name
    graph = getattr(source, "graph", None)           # an onnx.ModelProto
    if graph is not None and getattr(graph, "name", ""):
        return graph.name
    return "model"


def load(path: str | os.PathLike) -> CompiledModel:
    """A model exported by ``cnncc.export`` / ``cnncc compile``: its directory, .so or .json.

    The library is checked against its json (sha256, signature, CPU features) before it is
    loaded; calls get the same input checks as every CompiledModel."""
    from .backends.llvm.library import load_library

    return load_library(os.fspath(path))
