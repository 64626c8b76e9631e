"""The `cnncc` command line.

    cnncc info [MODEL]                          ops, shapes, parameters, FLOPs per layer, arena
    cnncc info [MODEL] --receptive-field        per layer also receptive field size, jump, start
    cnncc run [MODEL] [--input x.npy] [--output y.npy] [--target T]
    cnncc compile MODEL -o DIR [--name N] [--threads N] [--opt N] [--emit llvm|asm]
                                                DIR/N.so + N.h + N.json: a C library
    cnncc compile MODEL --target cuda [--arch sm_90] [-o DIR] [--name N] [--emit cuda]
                                                DIR/N.cu + N.h + N.weights (+ N.so with nvcc)
    cnncc bench [MODEL] [--threads N] [--ablate] [--per-layer] [--plot F.png] [--json]
                [--roofline F.png|F.svg]        the roofline of every kernel, fused and unfused
    cnncc bench --peak [--threads N] [--json]   the measured FMA peak and bandwidths alone
    cnncc bench [MODEL] --batch 1,8,32 [--threads N] [--rounds R]   images/s vs onnxruntime
    cnncc bench [MODEL] --scaling [1,2]       latency and speedup at each thread count
    cnncc infer MODEL --input DIR_OR_GLOB --output OUT.parquet [--ray [ADDRESS]] [--batch N]
    cnncc bench --compile [MODEL...] [--json]   cold / warm compile times in new processes
    cnncc verify [MODEL] [--opt N] [--target T]  pass-by-pass agreement with the reference
    cnncc show [MODEL] [--opt N] [-o graph.svg]  the graph before/after the passes

MODEL is an .onnx file or a built-in DSL net (`zoo:mobilenet_v2`, or just `mobilenet_v2`); with no
MODEL the built-in MobileNetV2 is used; `run` also takes a library made by `compile` (its DIR or
N.so). Errors are one line on stderr and a non-zero exit status; `--traceback` shows the Python
traceback as well.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from .infer import add_arguments as add_infer_arguments, run_infer
from .quantize import add_quantize_arguments, run_quantize
from .compile_time import format_stages

DEFAULT_MODEL = "zoo:mobilenet_v2"


def resolve_model(spec: str) -> Any:
    """An ONNX path as given, or a zoo net built from `zoo:NAME` / a bare zoo name."""
    from .ir import CompileError

    if spec.startswith("zoo:") or not (os.path.exists(spec) or spec.endswith(".onnx")):
        from .dsl.zoo import ZOO

        name = spec.removeprefix("zoo:")
        if name not in ZOO:
            raise CompileError(f"no model file '{spec}' and no built-in net of that name "
                               f"(built-in: {', '.join(sorted(ZOO))})")
        return ZOO[name]()
    if not os.path.isfile(spec):
        raise CompileError(f"model file '{spec}' does not exist")
    return spec


def _cmd_info(args: argparse.Namespace) -> int:
    from . import host_target, load_graph
    from .driver import check_threads
    from .ir import CompileError
    from .tune import tuned_line
    from .analysis import format_info

    graph = load_graph(resolve_model(args.model))
    if args.receptive_field:
        from .receptive_field import format_summary
        print(format_summary(graph))
        return 0
    print(format_info(graph))
    print(_arena_line(graph))
    check_threads(args.threads)
    machine = host_target(args.threads)      # cnncc.compile's default: every core
    print(f"target: {machine.describe()} [llvm]")
    try:
        print(tuned_line(graph, machine) + f" [{machine.threads} thread"
              f"{'s' if machine.threads > 1 else ''}]")
    except CompileError:
        pass                      # not lowerable for llvm: _arena_line said so
    return 0


def _arena_line(graph: Any) -> str:
    """The arena of ``graph`` compiled for llvm (opt 3, 1 thread): lowered, not compiled."""
    from .driver import host_target
    from .ir import CompileError
    from .lower.program import lower_graph
    from .passes import PassContext, run_pipeline
    from .lower.memory_plan import format_summary

    machine = host_target(1)
    try:
        prog = lower_graph(run_pipeline(graph, PassContext(opt_level=3, machine=machine)),
                           machine)
    except CompileError as e:
        return f"arena: not planned (the llvm target cannot lower it: {e})"
    return format_summary(prog.memory.summary()) + " [llvm, opt 3, 1 thread]"


def _load_inputs(model: Any, paths: Sequence[str], seed: int) -> list[np.ndarray]:
    from .ir import InputError

    if paths:
        if len(paths) != len(model.input_names):
            raise InputError(f"model takes {len(model.input_names)} input(s), "
                             f"{len(paths)} --input file(s) given")
        arrays = []
        for p in paths:
            try:
                arrays.append(np.load(p, allow_pickle=False))
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read input file '{p}': {e}") from None
        return arrays
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype)
            for shape, dtype in zip(model.input_shapes, model.input_dtypes)]


def _is_library(spec: str) -> bool:
    """Whether ``spec`` names a library written by `cnncc compile` (its folder or .so)."""
    if spec.endswith(".so"):
        return True
    return os.path.isdir(spec) and any(n.endswith(".json") for n in os.listdir(spec))


def _cmd_run(args: argparse.Namespace) -> int:
    from . import compile, load
    from .ir import CompileError

    t0 = time.perf_counter()
    if _is_library(args.model):
        if args.target not in (None, "llvm") or args.threads is not None:
            raise CompileError("--target/--threads do not apply to a compiled library (its "
                               "code and thread count are fixed by `cnncc compile`)")
        model = load(args.model)
    else:
        model = compile(resolve_model(args.model), target=args.target, threads=args.threads)
    t1 = time.perf_counter()
    inputs = _load_inputs(model, args.input or [], args.seed)
    outs = model(*inputs)
    t2 = time.perf_counter()
    outs = outs if isinstance(outs, tuple) else (outs,)
    how = "loaded" if getattr(model, "cache_status", "") == "library" else "compiled for"
    print(f"{how} {model.target} in {t1 - t0:.2f} s; ran in {(t2 - t1) * 1e3:.1f} ms")
    if getattr(model, "compile_stages", None):
        print(format_stages(model.compile_stages))
    for name, value in zip(model.output_names, outs):
        print(f"output {name}: {value.dtype}{list(value.shape)}  min {value.min():.4g} "
              f"max {value.max():.4g} mean {value.mean():.4g}")
        if value.ndim == 2 and value.shape[0] == 1 and value.shape[1] > 5:
            top = np.argsort(value[0])[::-1][:5]
            print("  top-5 classes: " + ", ".join(f"{i} ({value[0, i]:.3g})" for i in top))
    if args.output:
        if len(args.output) != len(outs):
            from .ir import InputError
            raise InputError(f"model has {len(outs)} output(s), {len(args.output)} --output "
                             "file(s) given")
        for path, value in zip(args.output, outs):
            np.save(path, value)
            print(f"wrote {path}")
    return 0


def _model_name(spec: str) -> str:
    """The default library name: the file's stem or the zoo net's name."""
    if spec.startswith("zoo:") or not (os.path.exists(spec) or spec.endswith(".onnx")):
        return spec.removeprefix("zoo:")
    return os.path.splitext(os.path.basename(spec))[0]


def _cmd_compile(args: argparse.Namespace) -> int:
    import json

    from . import export
    from .backends.llvm.aot import c_identifier
    from .ir import CompileError
    from .lower.memory_plan import format_summary

    source = resolve_model(args.model)
    name = args.name if args.name is not None else c_identifier(_model_name(args.model))
    emit = args.emit or []
    if args.target == "cuda":
        return _compile_cuda(args, source, name, emit)
    if args.arch or "cuda" in emit:
        raise CompileError("--arch and --emit cuda need --target cuda")
    if args.output is None:
        raise CompileError("-o DIR is required (where the library is written)")
    t0 = time.perf_counter()
    stages: dict = {}
    paths = export(source, args.output, name=name, threads=args.threads, opt_level=args.opt,
                   emit=args.emit or (), report=stages)
    print(f"compiled {args.model} in {time.perf_counter() - t0:.2f} s")
    print(format_stages(stages))
    with open(paths["metadata"]) as f:
        print(format_summary(json.load(f)["memory"]))
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def _compile_cuda(args: argparse.Namespace, source, name: str, emit: list) -> int:
    from .backends.cuda.export import export_cuda
    from .backends.cuda.model import generate
    from .backends.llvm.aot import check_name
    from .driver import load_graph, lower
    from .ir import CompileError
    from .passes import PassContext, run_pipeline
    from .lower.memory_plan import format_summary

    check_name(name)
    if args.threads is not None:
        raise CompileError("--threads does not apply to --target cuda")
    if set(emit) - {"cuda"}:
        raise CompileError("--target cuda emits only cuda (not llvm/asm)")
    t0 = time.perf_counter()
    graph = run_pipeline(load_graph(source), PassContext(opt_level=args.opt, target="cuda"))
    if args.output is None and "cuda" not in emit:
        raise CompileError("-o DIR is required (or --emit cuda to print the source)")
    gen = generate(lower(graph, "cuda", args.opt), name=name)
    if args.output is None:
        sys.stdout.write(gen.module.source)
        return 0
    paths = export_cuda(gen, args.output, args.arch)
    if "cuda" in emit:          # the source just written, not generated a second time
        with open(paths["source"]) as f:
            sys.stdout.write(f.read())
    log = sys.stderr if "cuda" in emit else sys.stdout
    print(f"compiled {args.model} for cuda in {time.perf_counter() - t0:.2f} s"
          + ("" if "library" in paths else " (nvcc not found: NAME.so not built)"), file=log)
    print(format_summary(gen.program.memory.summary()) + " [device memory]", file=log)
    for path in paths.values():
        print(f"wrote {path}", file=log)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import load_graph
    from .verify import verify_pipeline

    report = verify_pipeline(load_graph(resolve_model(args.model)), opt_level=args.opt,
                             target=args.target, tolerance=args.tol, seed=args.seed)
    print(report.format())
    return 0 if report.ok else 2


def _cmd_tune(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from .tune import DEFAULT_BUDGET_S, format_report, tune

    report = tune(resolve_model(args.model), threads=args.threads,
                  budget=DEFAULT_BUDGET_S if args.budget is None else args.budget)
    print(json.dumps(asdict(report), indent=2) if args.json else format_report(report))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from . import host_target, load_graph
    from .passes import PassContext, run_pipeline
    from .show import to_dot, write_graph

    graph = load_graph(resolve_model(args.model))
    graph = run_pipeline(graph, PassContext(opt_level=args.opt, machine=host_target()))
    if args.output:
        print(f"wrote {write_graph(graph, args.output)}")
    else:
        print(to_dot(graph))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from . import load_graph
    from .bench import benchmark, format_report, plot_report, require_matplotlib
    from .compile_time import bench_compile, format_bench
    from .ir import CompileError
    from .roofline_plot import check_path, plot_report_roofline, require_pyplot

    if args.compile:
        rows = bench_compile(args.model or [DEFAULT_MODEL])
        print(json.dumps(rows, indent=2) if args.json else format_bench(rows))
        return 0
    if len(args.model) > 1:
        raise CompileError("several models are only benchmarked with --compile")
    args.model = args.model[0] if args.model else DEFAULT_MODEL
    if args.peak:
        return _print_peak(args)
    if args.suite:
        return _run_suite(args)
    if args.plot:
        require_matplotlib()      # fail before minutes of compiling and timing, not after
    if args.roofline:
        check_path(args.roofline)
        require_pyplot()
        if (args.target or "llvm") != "llvm":
            raise CompileError("--roofline needs the CPU's peak and bandwidth (target llvm)")
    source = resolve_model(args.model)
    graph = load_graph(source)
    if isinstance(source, str):
        import onnx
        onnx_model = onnx.load(source)
    else:
        onnx_model = source.to_onnx()
    if args.batch:
        from .throughput import run_batch_bench
        return run_batch_bench(args, graph, onnx_model)
    if args.scaling is not None:
        return _run_scaling(args, graph, onnx_model)
    report = benchmark(graph, onnx_model, target=args.target or "llvm", threads=args.threads,
                       rounds=args.rounds, ablate=args.ablate,
                       per_layer=args.per_layer or bool(args.roofline),
                       with_ort=not args.no_ort, progress=not args.json)
    if args.plot:
        plot_report(report, args.plot)
    if args.roofline:
        plot_report_roofline(report, args.roofline)
    if isinstance(args.json, str):        # --json FILE: the JSON there, the table here
        _write(args.json, report.to_json())
        args.json = False
    print(report.to_json() if args.json else format_report(report))
    for path in (args.plot, args.roofline):
        if path and not args.json:
            print(f"wrote {path}")
    return 0


def _run_scaling(args: argparse.Namespace, graph, onnx_model) -> int:
    from .ir import CompileError
    from .scaling import (default_counts, format_scaling_table, parse_counts, scaling_benchmark,
                          scaling_json)
    from .throughput import print_progress

    mixed = [flag for flag, on in (("--ablate", args.ablate), ("--per-layer", args.per_layer),
                                   ("--plot", args.plot), ("--batch", args.batch),
                                   ("--threads", args.threads != 1)) if on]
    if mixed:
        raise CompileError(f"--scaling times whole models at its own thread counts: it does "
                           f"not combine with {', '.join(mixed)}")
    if args.target not in (None, "llvm"):
        raise CompileError("--scaling times target llvm (thread counts are a CPU setting)")
    rows = scaling_benchmark(graph, onnx_model, parse_counts(args.scaling or default_counts()),
                             args.rounds,
                             not args.no_ort, None if args.json else print_progress)
    if not args.json:
        print(file=sys.stderr)
    print((scaling_json if args.json else format_scaling_table)(graph.name, args.rounds, rows))
    return 0


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}", file=sys.stderr)


def _run_suite(args: argparse.Namespace) -> int:
    from .ir import CompileError
    from .suite import format_markdown, format_suite, run_suite

    if args.target not in (None, "llvm"):
        raise CompileError("--suite compares target llvm with onnxruntime")
    if args.model != DEFAULT_MODEL:
        raise CompileError("--suite runs every suite model: pick some with --only NAME,...")
    names = [n for n in (args.only or "").split(",") if n]
    report = run_suite(args.threads, args.rounds, args.models or [], names or None)
    if isinstance(args.json, str):
        _write(args.json, report.to_json())
    if args.markdown:
        _write(args.markdown, format_markdown(report))
    print(report.to_json() if args.json is True else format_suite(report))
    return 0


def _print_peak(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from .bandwidth import measure_bandwidth
    from .ir import CompileError
    from .peak import measure_peak

    if args.target not in (None, "llvm"):
        raise CompileError("--peak measures the CPU (target llvm)")
    if args.threads < 1:
        raise CompileError(f"--threads must be positive, got {args.threads}")
    peak = measure_peak(args.threads)
    bandwidth = measure_bandwidth(args.threads)
    print(json.dumps(dict(asdict(peak), bandwidth=asdict(bandwidth)), indent=2) if args.json
          else f"{peak.describe()}\n{bandwidth.describe()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .backends import BACKENDS

    parser = argparse.ArgumentParser(prog="cnncc", description="A compiler for CNNs.")
    parser.add_argument("--version", action="version", version=f"cnncc {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="ops, shapes, parameter count and FLOPs per layer")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    info.add_argument("--receptive-field", action="store_true",
                      help="per layer: output shape, params, MFLOPs, receptive field size, "
                           "jump and start")
    info.add_argument("--threads", type=int, default=None,
                      help="the thread count whose tuned kernels to report (tuning log keys "
                           "carry it); default: all cores, as cnncc.compile")
    info.set_defaults(func=_cmd_info)

    run = sub.add_parser("run", help="compile a model and run it on inputs")
    run.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    run.add_argument("--input", action="append", metavar="X.npy",
                     help="input array (.npy), once per model input; default: seeded random")
    run.add_argument("--output", action="append", metavar="Y.npy", help="where to save outputs")
    run.add_argument("--target", choices=sorted(BACKENDS), default=None)
    run.add_argument("--threads", type=int, default=None)
    run.add_argument("--seed", type=int, default=0, help="seed of the random input")
    run.set_defaults(func=_cmd_run)

    comp = sub.add_parser("compile", help="compile a model into a C library "
                                           "(DIR/NAME.so, NAME.h, NAME.json) or a CUDA program")
    comp.add_argument("model")
    comp.add_argument("-o", "--output", metavar="DIR", help="output folder")
    comp.add_argument("--target", choices=["llvm", "cuda"], default="llvm",
                      help="llvm: a CPU library; cuda: DIR/NAME.cu (+ NAME.so when nvcc is found)")
    comp.add_argument("--arch", help="CUDA architecture of NAME.so, e.g. sm_80 or sm_90 "
                                     "(default sm_80)")
    comp.add_argument("--name", help="C name prefix and file name (default: the model's name)")
    comp.add_argument("--threads", type=int, default=None,
                      help="threads of the library (default 1; >1 links libgomp)")
    comp.add_argument("--opt", type=int, default=3, choices=range(4))
    comp.add_argument("--emit", action="append", choices=["llvm", "asm", "cuda"],
                      help="also write NAME.ll (optimized LLVM IR) / NAME.s (assembly); "
                           "cuda: print the CUDA source")
    comp.set_defaults(func=_cmd_compile)

    bench = sub.add_parser("bench", help="latency of unfused vs fused vs onnxruntime")
    bench.add_argument("model", nargs="*", help="one model (several with --compile)")
    bench.add_argument("--compile", action="store_true",
                       help="time cold and warm compiles of each MODEL in new processes")
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    bench.add_argument("--target", choices=sorted(BACKENDS), default=None)
    bench.add_argument("--ablate", action="store_true",
                       help="leave each pass out in turn and report what it buys")
    bench.add_argument("--per-layer", action="store_true",
                       help="time, GFLOP/s, %% of the FMA peak and the roofline per kernel "
                            "(fused and unfused)")
    bench.add_argument("--roofline", metavar="FILE.png|.svg",
                       help="draw the roofline of every kernel (matplotlib; implies --per-layer)")
    bench.add_argument("--peak", action="store_true",
                       help="only measure the FMA peak and the L2, LLC and DRAM bandwidth, "
                            "and exit")
    bench.add_argument("--plot", metavar="FILE.png", help="draw the comparison (matplotlib)")
    bench.add_argument("--json", nargs="?", const=True, default=False, metavar="FILE",
                       help="machine-readable output (to FILE when given)")
    bench.add_argument("--no-ort", action="store_true", help="do not run onnxruntime")
    bench.add_argument("--suite", action="store_true",
                       help="every zoo net, the onnx light CNNs and --models against "
                            "onnxruntime, one table with the geo-mean")
    bench.add_argument("--models", action="append", metavar="DIR",
                       help="with --suite: also every .onnx file in DIR (repeatable)")
    bench.add_argument("--only", metavar="NAME,...", help="with --suite: just these models")
    bench.add_argument("--markdown", metavar="FILE", help="with --suite: the table as Markdown")
    bench.add_argument("--batch", metavar="N[,N...]", help="images/s of cnncc and onnxruntime "
                       "at batch N (a table for several)")
    bench.add_argument("--scaling", metavar="N,N[,...]", nargs="?", const="",
                       help="latency of cnncc and onnxruntime at each thread count, interleaved, "
                            "and the speedup over the first (default: 1 and all cores)")
    bench.set_defaults(func=_cmd_bench)

    tune = sub.add_parser("tune", help="time a few schedules per workload (conv, depthwise, "
                                       "dw->pw, pool, gemm) on this machine and log the winners "
                                       "for cnncc.compile")
    tune.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    tune.add_argument("--threads", type=int, default=None, help="default: all cores")
    tune.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                      help="no new round after this many seconds (default 600)")
    tune.add_argument("--json", action="store_true", help="machine-readable output")
    tune.set_defaults(func=_cmd_tune)

    infer = sub.add_parser("infer", help="classify a folder of images or .npy files into a "
                           "parquet file, here or on Ray (resumable)")
    add_infer_arguments(infer)
    infer.set_defaults(func=lambda args: run_infer(args, resolve_model))

    quant = sub.add_parser("quantize", help="static int8 post-training quantization of a "
                           "float model into a QDQ ONNX file")
    add_quantize_arguments(quant)
    quant.set_defaults(func=lambda args: run_quantize(args, resolve_model))

    ver = sub.add_parser("verify", help="run the passes one by one against the reference and "
                                        "name the first one after which outputs diverge")
    ver.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    ver.add_argument("--opt", type=int, default=3, choices=range(4))
    ver.add_argument("--target", choices=sorted(BACKENDS), default=None,
                     help="also compile for this target and compare its outputs")
    ver.add_argument("--tol", type=float, default=1e-4, help="relative error allowed")
    ver.add_argument("--seed", type=int, default=0)
    ver.set_defaults(func=_cmd_verify)

    show = sub.add_parser("show", help="the graph (after the passes of --opt) as DOT/SVG")
    show.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    show.add_argument("--opt", type=int, default=0, choices=range(4))
    show.add_argument("-o", "--output", help="file to write (.svg/.png/.pdf via graphviz "
                                             "when installed, else .dot); default: DOT on stdout")
    show.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .ir import CompileError, InputError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CompileError, InputError, OSError) as e:
        if args.traceback:
            raise
        kind = "error" if isinstance(e, OSError) else type(e).__name__
        print(f"cnncc: {kind}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cnncc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
