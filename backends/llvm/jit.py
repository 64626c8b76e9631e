"""The JIT: the only module that imports llvmlite.binding.

One MCJIT engine per process (a second engine sharing the target machine crashed once the first
was freed); modules are optimized with the new pass manager at O3 and added to it. The target
machine is built from the host's feature list (llvm's host CPU name is unreliable on some VMs);
CNNCC_CPU and CNNCC_FEATURES override it.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import threading

import llvmlite
import llvmlite.binding as llvm

from cnncc.ir import CompileError
from cnncc.ir.target import Target, feature_flags
from . import thread_pool
from cnncc.backends.cache_folders import cache_root
from .object_files import read_object, write_object

_LOCK = threading.Lock()
# The large code model: JIT'd modules land anywhere in the address space, and 32-bit relative
# calls into the C library (or between modules) overflowed intermittently with the default one.
_TM_OPTS = dict(reloc=os.environ.get("CNNCC_RELOC", "static"),
                codemodel=os.environ.get("CNNCC_CODEMODEL", "large"))
_STATE: dict = {}


def _init() -> dict:
    with _LOCK:
        if _STATE:
            return _STATE
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        features = os.environ.get("CNNCC_FEATURES") or llvm.get_host_cpu_features().flatten()
        cpu = os.environ.get("CNNCC_CPU") or _cpu_for(features)
        target = llvm.Target.from_default_triple()
        tm = target.create_target_machine(cpu=cpu, features=features, opt=3,
                                          **_TM_OPTS)
        backing = llvm.parse_assembly("")
        # llvmlite's memory manager reserves one block per object for all its sections and its
        # GOT: the kernels' position-independent objects (object_code) reach their constants,
        # unwind tables and GOT entries with 32-bit offsets, which separate mappings could
        # overflow. Their calls out go through the GOT (codegen.py: no PLT stubs, which this
        # manager does not reserve).
        engine = llvm.create_mcjit_compiler(backing, tm, use_lmm=True)
        _STATE.update(tm=tm, engine=engine, features=features, cpu=cpu,
                      triple=llvm.get_process_triple(), modules=[], loaded=set(), pending={})
        _STATE["wait"] = _start_pool(engine, tm)
        engine.set_object_cache(_notify_object, _cached_object)
        return _STATE


# How long an idle worker of the thread pool (thread_pool.py) spins after its last job before it
# sleeps. Kernels follow each other within microseconds, so a worker that spins a little is awake
# for the next kernel instead of paying a futex wake per kernel. Measured with libgomp on a 2-core
# Zen 5 VM (calls after 10 ms idle, then back to back): MobileNetV2 at 2 threads 1.6-2.2 ms
# spinning 50 us, 1.6-2.8 ms spinning 0.5 ms, 3.1-3.5 ms sleeping at once (2.9 ms on 1 thread).
# A short spin also bounds what a worker burns after the last call and what it costs a kernel
# when another process holds a core. OMP_WAIT_POLICY, the knob OpenMP users know, still applies:
# PASSIVE sleeps at once, ACTIVE spins 200 ms.
SPIN_SECONDS = {"passive": 0.0, "active": 0.2, "": 50e-6}


def _start_pool(engine, tm) -> str:
    """Compile the thread pool into the JIT, make ``cnncc_parallel`` resolvable by every module
    loaded later, stop the workers at exit; returns how idle workers wait."""
    policy = os.environ.get("OMP_WAIT_POLICY", "").strip().lower()
    spin = SPIN_SECONDS.get(policy, SPIN_SECONDS[""])
    mod = llvm.parse_assembly(thread_pool.pool_ir(int(spin * 1e9)))
    mod.triple = llvm.get_process_triple()
    mod.data_layout = str(tm.target_data)
    engine.add_module(mod)
    engine.finalize_object()
    _STATE["pool_module"] = mod
    llvm.add_symbol(thread_pool.SYMBOL, engine.get_function_address(thread_pool.SYMBOL))
    shutdown = ctypes.CFUNCTYPE(None)(engine.get_function_address(thread_pool.SHUTDOWN))
    _STATE["pool_started"] = ctypes.c_int32.from_address(
        engine.get_global_value_address(thread_pool.STARTED_GLOBAL))
    # Workers run code in the engine's memory: they must be gone before the interpreter frees it.
    atexit.register(shutdown)
    _STATE["pool_shutdown"] = shutdown
    who = f"OMP_WAIT_POLICY={policy}" if policy in SPIN_SECONDS and policy else "default"
    return f"cnncc pool: idle workers spin {spin * 1e6:.0f} us, then sleep ({who})"


def pool_workers() -> int:
    """Worker threads the pool has started in this process (the caller is not counted)."""
    return int(_init()["pool_started"].value)


def wait_policy() -> str:
    """How idle workers of this process's thread pool wait."""
    return _init()["wait"]


def cache_dir() -> str | None:
    """Where compiled object code is cached (the ``obj`` folder of the cnncc cache); None when
    CNNCC_CACHE=0."""
    root = cache_root()
    return os.path.join(root, "obj") if root else None


def _cached_object(module) -> bytes | None:
    # The object verified by load_code (read once: the file may be evicted meanwhile).
    return _STATE["pending"].get(module.name, (None, None))[1]


def _notify_object(module, buffer: bytes) -> None:
    path, cached = _STATE["pending"].get(module.name, (None, None))
    if path and cached is None:
        write_object(path, buffer)


def load_code(text: str, key: str, keep_ir: bool = False) -> tuple[str, str | None]:
    """Make the functions of ``text`` (whose symbols are unique to ``key``) callable.

    Returns (status, optimized IR): status "memory" (already loaded in this process), "disk"
    (object code from the cache) or "compiled" (optimized at O3 and compiled; stored in the
    cache); the optimized IR text when ``keep_ir`` and it was optimized here, else None."""
    st = _init()
    with _LOCK:
        if key in st["loaded"]:
            return "memory", None
    cdir = cache_dir()
    path = os.path.join(cdir, f"{key}.o") if cdir else None
    cached = read_object(path)
    hit = cached is not None
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as e:
        raise CompileError(f"internal error: generated LLVM IR is invalid: {e}") from None
    mod.name = key
    mod.triple = st["triple"]
    mod.data_layout = str(st["tm"].target_data)
    optimized = None
    if not hit:
        optimize(mod, 3)
        optimized = str(mod) if keep_ir else None
    with _LOCK:
        if key in st["loaded"]:
            return "memory", optimized
        st["pending"][key] = (path, cached)
        st["engine"].add_module(mod)
        st["engine"].finalize_object()
        st["engine"].run_static_constructors()
        st["modules"].append(mod)
        st["loaded"].add(key)
        del st["pending"][key]         # the engine asks for / hands over objects only above
    return ("disk" if hit else "compiled"), optimized


def _parse(text: str, tm):
    """``text`` parsed and verified for target machine ``tm``."""
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as e:
        raise CompileError(f"internal error: generated LLVM IR is invalid: {e}") from None
    mod.triple = _init()["triple"]
    mod.data_layout = str(tm.target_data)
    return mod


def _pic_machine():
    """The position-independent target machine of shared libraries (same CPU and features)."""
    st = _init()
    if "pic_tm" not in st:
        target = llvm.Target.from_default_triple()
        st["pic_tm"] = target.create_target_machine(cpu=st["cpu"], features=st["features"],
                                                    opt=3, reloc="pic", codemodel="default")
    return st["pic_tm"]


def object_code(text: str) -> bytes:
    """``text`` optimized at O3 and compiled to position-independent object code, every defined
    function hidden: the one object of a kernel, loaded by the JIT (``load_objects``) and linked
    into exported and cached libraries alike. Runs in compile worker processes too
    (objects.py)."""
    tm = _pic_machine()
    mod = _parse(text, tm)
    optimize(mod, 3)
    for fn in mod.functions:
        if not fn.is_declaration and fn.linkage.name not in ("internal", "private"):
            fn.visibility = "hidden"
    return tm.emit_object(mod)


def loaded(names) -> set:
    """Those of ``names`` (object names given to ``load_objects``) already in the JIT."""
    st = _init()
    with _LOCK:
        return set(names) & st["loaded"]


def load_objects(objects: dict) -> None:
    """Add object code made by ``object_code`` ({name: code}; names already loaded are
    skipped) to the JIT and resolve it: its functions are callable by name, and from code
    loaded later."""
    st = _init()
    with _LOCK:
        for name, code in objects.items():
            if name in st["loaded"]:
                continue
            obj = llvm.ObjectFileRef.from_data(code)
            st["engine"].add_object_file(obj)
            st["modules"].append(obj)
            st["loaded"].add(name)
        st["engine"].finalize_object()


def _cpu_for(features: str) -> str:
    """A CPU name consistent with the feature list (features are passed explicitly as well)."""
    flags = set(f[1:] for f in features.split(",") if f.startswith("+"))
    if "avx512f" in flags:
        return "x86-64-v4"
    if "avx2" in flags and "fma" in flags:
        return "x86-64-v3"
    return llvm.get_host_cpu_name() or "generic"


def host_target(threads: int | None = None) -> Target:
    """The Target of the code this JIT generates: the host's CPU, or what CNNCC_CPU /
    CNNCC_FEATURES say (CNNCC_MAX_LANES=8 keeps AVX-512 machines to 8-lane vectors); caches
    and cores from the operating system. ``threads`` defaults to the cores."""
    st = _init()
    max_lanes = int(os.environ["CNNCC_MAX_LANES"]) if os.environ.get("CNNCC_MAX_LANES") else None
    return Target.from_features(st["features"], st["cpu"], threads=threads, max_lanes=max_lanes)


def cpu_flags() -> frozenset[str]:
    """The enabled CPU features the code is generated for (host or CNNCC_FEATURES)."""
    return feature_flags(_init()["features"])


def vector_lanes() -> int:
    """f32 lanes of the host Target's vectors (16 AVX-512, 8 AVX/AVX2, 4 otherwise)."""
    return host_target().lanes


def has_openmp() -> bool:
    """Whether parallel loops may run on several threads (cnncc's pool, thread_pool.py)."""
    return "pool_module" in _init()


def llvmlite_version() -> str:
    """The llvmlite release generating this process's code (a compile cache key part)."""
    return llvmlite.__version__


def target_info() -> dict:
    st = _init()
    return {"cpu": st["cpu"], "features": st["features"], "triple": st["triple"],
            "data_layout": str(st["tm"].target_data),
            "codegen": f"O3 {sorted(_TM_OPTS.items())}"}


def optimize(mod, level: int = 3) -> None:
    st = _init()
    pto = llvm.PipelineTuningOptions(speed_level=level)
    pto.loop_vectorization = level >= 2
    pto.slp_vectorization = level >= 2
    pb = llvm.PassBuilder(st["tm"], pto)
    mpm = pb.getModulePassManager()
    mpm.run(mod, pb)


def compile_ir(text: str, opt_level: int = 3):
    """Parse, verify, optimize and JIT ``text``; returns the module (keep it alive)."""
    st = _init()
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as e:
        raise CompileError(f"internal error: generated LLVM IR is invalid: {e}") from None
    mod.triple = st["triple"]
    mod.data_layout = str(st["tm"].target_data)
    if opt_level:
        optimize(mod, opt_level)
    with _LOCK:
        st["engine"].add_module(mod)
        st["engine"].finalize_object()
        st["engine"].run_static_constructors()
        st["modules"].append(mod)
    return mod


def function_address(name: str) -> int:
    addr = _init()["engine"].get_function_address(name)
    if not addr:
        raise CompileError(f"internal error: JIT symbol {name} not found")
    return addr


def optimized_ir(text: str, opt_level: int = 3) -> str:
    """The optimized LLVM IR of ``text`` (not added to the engine): for inspection and tests."""
    st = _init()
    mod = llvm.parse_assembly(text)
    mod.triple = st["triple"]
    mod.data_layout = str(st["tm"].target_data)
    optimize(mod, opt_level)
    return str(mod)


def assembly(text: str, opt_level: int = 3) -> str:
    st = _init()
    mod = llvm.parse_assembly(text)
    mod.triple = st["triple"]
    mod.data_layout = str(st["tm"].target_data)
    optimize(mod, opt_level)
    return st["tm"].emit_assembly(mod)


def _pic_module(text: str, opt_level: int, exported: tuple[str, ...]):
    """``text`` parsed for the position-independent target machine of shared libraries, every
    defined function but ``exported`` hidden (the library exports only its C entry points)."""
    tm = _pic_machine()
    mod = _parse(text, tm)
    for fn in mod.functions:
        local = fn.linkage.name in ("internal", "private")
        if not fn.is_declaration and not local and fn.name not in exported:
            fn.visibility = "hidden"
    if opt_level:
        optimize(mod, opt_level)
    return tm, mod


def emit_object(text: str, opt_level: int = 3, exported: tuple[str, ...] = ()) -> bytes:
    """Native object code (position independent, for a shared library) of ``text``; pass
    ``opt_level`` 0 for IR that is already optimized."""
    tm, mod = _pic_module(text, opt_level, exported)
    return tm.emit_object(mod)


def emit_assembly(text: str, opt_level: int = 3, exported: tuple[str, ...] = ()) -> str:
    """The assembly of ``emit_object`` (for reading)."""
    tm, mod = _pic_module(text, opt_level, exported)
    return tm.emit_assembly(mod)


def host_features() -> str:
    """The CPU features of this machine (whatever CNNCC_FEATURES says): what loaded code may use."""
    st = _init()
    if "host_features" not in st:
        st["host_features"] = llvm.get_host_cpu_features().flatten()
    return st["host_features"]
