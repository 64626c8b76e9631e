"""LLVMModel: a graph compiled to one native entry function, called once per inference."""
from __future__ import annotations

import ctypes
import hashlib
import threading
from dataclasses import dataclass

import llvmlite

import numpy as np

from ...ir import CompileError, Graph, InputError
from ...ir.target import Target
from ...runtime import CompiledModel, signature
from ...debug import dump, dump_enabled
from . import jit
from .batch_entry import MODES, arena_stride, batch_entry_function
from .codegen import ModuleBuilder

_PREFIX = "cnnccPFX"        # stands for the content-hash symbol prefix until it is known


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    """A zeroed uint8 array whose data pointer is ``align``-byte aligned."""
    raw = np.zeros(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + nbytes]


@dataclass
class Generated:
    """A lowered program and its LLVM IR, symbols prefixed by the content hash ``key``."""
    program: object                 # cnncc.lower.program.Program
    ir_text: str
    key: str
    entry_name: str
    threads: int
    inputs: list                    # [(name, TensorType)] in graph order
    outputs: list


def generate(graph: Graph, machine: Target, opt_level: int = 3,
             schedules: dict | None = None) -> Generated:
    """Lower ``graph`` for ``machine`` and generate its LLVM module (``opt_level`` 0: no
    epilogue fusion; ``schedules``: tuned schedules by workload key, see cnncc/tune.py)."""
    from ... import __version__
    from ...ir.loop import Kernel
    from ...lower.program import entry_function, lower_graph

    lanes, threads = machine.lanes, machine.threads
    prog = lower_graph(graph, machine, fuse=opt_level > 0, schedules=schedules)
    # Symbols are named after a hash of the generated code and the target: the same model
    # compiled twice shares its code, and the object code can be cached on disk.
    mb = ModuleBuilder("cnncc_module", lanes, threads, jit.has_openmp())
    fns = {}
    for k, _ in prog.ctx.kernels:
        fns[k.name] = mb.add_kernel(Kernel(f"{_PREFIX}_{k.name}", k.params, k.body))
    run = entry_function(mb.module, prog, fns, f"{_PREFIX}_run")
    g = prog.ctx.graph
    batch_entry_function(mb.module, run, f"{_PREFIX}_run_batch",
                         [g.types[n].nbytes for n in g.inputs],
                         [g.types[n].nbytes for n in g.outputs], threads, mb.openmp)
    text = str(mb)
    info = jit.target_info()
    key = "c" + hashlib.sha256("\n".join(
        [text, info["cpu"], info["features"], info["triple"], info["codegen"],
         llvmlite.__version__, __version__]).encode()).hexdigest()[:24]
    ins, outs = signature(graph)
    if dump_enabled("kernels"):
        dump("kernels", f"loop nests of {graph.name}",
             "\n\n".join(str(k) for k, _ in prog.ctx.kernels))
    text = text.replace(_PREFIX, key)
    dump("llvm", f"LLVM IR of {graph.name}", text)
    return Generated(prog, text, key, f"{key}_run", threads, ins, outs)


def _bound(fn, ptrs: list[int], keep: tuple):
    """``fn(*ptrs)`` as a call with no arguments that keeps ``keep`` (the arrays behind the
    pointers) alive as long as it lives."""
    def call() -> None:
        fn(*ptrs)
    call.keep = keep
    call.fn = fn
    return call


class LLVMModel(CompiledModel):
    target = "llvm"

    def __init__(self, graph: Graph, machine: Target, opt_level: int = 3, keep_ir: bool = False,
                 schedules: dict | None = None):
        """``opt_level`` 0: every op its own kernel (no epilogue fusion), the unfused baseline;
        LLVM always optimizes at O3. ``keep_ir`` keeps the optimized IR (``optimized_ir``,
        None when the code came from a cache) for an export of the same code."""
        super().__init__(*signature(graph))
        self.machine = machine
        self.threads = machine.threads
        self.generated = gen = generate(graph, machine, opt_level, schedules)
        self.program = prog = gen.program
        self.ir_text = gen.ir_text
        self.entry_name = gen.entry_name
        self.cache_status, self.optimized_ir = jit.load_code(gen.ir_text, gen.key, keep_ir)
        self._weights = _aligned(prog.weights.nbytes)
        self._weights[:] = prog.weights
        self._arena = _aligned(max(prog.arena_bytes, 64))
        # ctypes releases the GIL: concurrent calls from other threads get their own arena.
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._fn = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p)(
            jit.function_address(self.entry_name))
        self._batch_fn = ctypes.CFUNCTYPE(
            ctypes.c_int32, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
            jit.function_address(self.entry_name + "_batch"))
        self.kernels = [k for k, _ in prog.ctx.kernels]

    def kernel_calls(self, inputs: list[np.ndarray]) -> list[tuple[str, int, object]]:
        """(kernel name, index of its graph node, a call of it with no arguments) for every
        kernel in program order, bound to this model's weights and arena and to ``inputs``:
        for timing kernels one by one (``profile``, cnncc/tune.py). Keep the list while calling."""
        checked = self._check(list(inputs))
        outs = [np.empty(s, d) for s, d in zip(self.output_shapes, self.output_dtypes)]
        base = {"input": [a.ctypes.data for a in checked], "output": [a.ctypes.data for a in outs],
                "const": self._weights.ctypes.data, "arena": self._arena.ctypes.data}
        uid = self.entry_name[:-len("_run")]
        calls = []
        for k, node_index in self.program.ctx.kernels:
            ptrs = []
            for b in k.params:
                kind, ref = self.program.storage[id(b)]
                ptrs.append(base[kind][ref] if kind in ("input", "output") else base[kind] + ref)
            fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(ptrs))(
                jit.function_address(f"{uid}_{k.name}"))
            calls.append((k.name, node_index, _bound(fn, ptrs, (checked, outs))))
        return calls

    def profile(self, inputs: list[np.ndarray], repeat: int = 10) -> list[tuple[str, float]]:
        """Median seconds per kernel (each kernel called on its own, in program order)."""
        import time

        result = []
        for name, _, call in self.kernel_calls(inputs):
            call()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            result.append((name, float(np.median(times))))
        return result

    def _execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outs = [np.empty(shape, dt) for shape, dt in zip(self.output_shapes, self.output_dtypes)]
        in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
        arena = self._arenas(1)
        rc = self._fn(in_ptrs, out_ptrs, self._weights.ctypes.data, arena.ctypes.data)
        if rc != 0:
            raise CompileError(f"native code returned error {rc}")
        return outs

    def _arenas(self, count: int) -> np.ndarray:
        """``count`` arenas, ``arena_stride`` apart, owned by the calling Python thread (ctypes
        releases the GIL: concurrent calls from other threads get their own)."""
        owner = threading.get_ident() == self._owner
        arena = self._arena if owner else getattr(self._local, "arena", None)
        stride = arena_stride(self.program.arena_bytes)
        if arena is None or arena.nbytes < count * stride:
            arena = _aligned(count * stride)
            if owner:
                self._arena = arena
            else:
                self._local.arena = arena
        return arena

    def run_batch(self, x: np.ndarray, mode: str = "auto") -> list[np.ndarray]:
        """The outputs of the images ``x`` (a one-input model, x of shape (N, ...)) in batch
        ``mode``: "auto" (as ``model(x)``), "latency" (one image after another, each image's
        kernels split across the threads) or "throughput" (images side by side, one per
        thread); the outputs are the same in every mode (examples/batch_modes.py times them)."""
        if mode not in MODES:
            raise InputError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        if self.batch_refusal is not None or len(self.input_names) != 1:
            raise InputError("run_batch takes one-input models that run other batch sizes"
                             + (f" ({self.batch_refusal})" if self.batch_refusal else ""))
        checked, n = self._check_batch([x])
        return self._execute_batch(checked, len(x) if n is None else n, mode)

    def _execute_batch(self, inputs: list[np.ndarray], n: int,
                       mode: str = "auto") -> list[np.ndarray]:
        """``n`` images through the batch entry (batch_entry.py) in ``mode`` (see run_batch)."""
        outs = [np.empty((n,) + shape[1:], dt)
                for shape, dt in zip(self.output_shapes, self.output_dtypes)]
        in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
        arenas = self._arenas(self.threads)
        rc = self._batch_fn(n, MODES[mode], in_ptrs, out_ptrs, self._weights.ctypes.data,
                            arenas.ctypes.data, arena_stride(self.program.arena_bytes))
        if rc != 0:
            raise CompileError(f"native code returned error {rc}")
        return outs


OPTIONS = ("opt_level", "threads", "machine", "schedules", "keep_ir")


def build(graph: Graph, options: dict) -> LLVMModel:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise CompileError(f"unknown option(s) for target llvm: {sorted(unknown)} (known: "
                           f"{', '.join(OPTIONS)}, and the driver's cache, skip_passes, "
                           "dw_lowrank_tol, input_shapes)")
    machine = options.get("machine") or jit.host_target(options.get("threads"))
    return LLVMModel(graph, machine, options.get("opt_level", 3), options.get("keep_ir", False),
                     options.get("schedules"))
