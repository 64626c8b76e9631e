"""The JIT: the only module that imports llvmlite.binding.

One MCJIT engine per process (a second engine sharing the target machine crashed once the first
was freed); modules are optimized with the new pass manager at O3 and added to it. The target
machine is built from the host's feature list (llvm's host CPU name is unreliable on some VMs);
CNNCC_CPU and CNNCC_FEATURES override it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import llvmlite.binding as llvm

from ...ir import CompileError
from ...ir.target import Target
from .object_files import read_object, write_object

_LOCK = threading.Lock()
# The large code model: JIT'd modules land anywhere in the address space, and 32-bit relative
# calls into libgomp (or between modules) overflowed intermittently with the default one.
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
        engine = llvm.create_mcjit_compiler(backing, tm)
        _STATE.update(tm=tm, engine=engine, features=features, cpu=cpu,
                      triple=llvm.get_process_triple(), modules=[], loaded=set(), pending={})
        _STATE["wait"] = _set_wait_policy()
        gomp = ctypes.util.find_library("gomp") or "libgomp.so.1"
        try:
            # Loaded through ctypes, whose handle is never closed: llvmlite dlcloses the libraries
            # it loaded at exit, which crashed (SIGSEGV) while an OpenMP worker still ran in it.
            lib = ctypes.CDLL(gomp, mode=ctypes.RTLD_GLOBAL)
            for sym in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"):
                llvm.add_symbol(sym, ctypes.cast(getattr(lib, sym), ctypes.c_void_p).value)
            _STATE["gomp"] = lib
        except (OSError, AttributeError):
            _STATE["gomp"] = None
        engine.set_object_cache(_notify_object, _cached_object)
        return _STATE


# How long an idle OpenMP worker spins before it sleeps. Kernels follow each other within
# microseconds, so a worker that spins a little is awake for the next kernel instead of paying a
# futex wake per kernel. Measured on a 2-core Zen 5 VM (calls after 10 ms idle, then back to
# back): MobileNetV2 at 2 threads 1.6-2.2 ms spinning 50 us, 1.6-2.8 ms spinning 0.5 ms, 3.1-3.5
# ms sleeping at once (2.9 ms on 1 thread); LeNet-5 at 2 threads 0.3-0.5 ms spinning 50 us but
# 2-3.4 ms spinning 0.5 ms (a woken worker and a spinning one sharing a vCPU for a time slice),
# 0.04-0.18 ms sleeping at once. A short spin also bounds what a worker burns after the last
# call and what it costs a kernel when another process holds a core. libgomp counts iterations,
# not time: the count is derived from the measured cost of one iteration of its spin loop on
# this CPU (23 ns on Zen 5, a few ns to ~40 ns on Intel cores).
SPIN_SECONDS = 50e-6
_SPIN_PROBE = """
declare void @llvm.x86.sse2.pause()
define void @cnncc_spin_probe(ptr %flag, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %body]
  %more = icmp ult i64 %i, %n
  br i1 %more, label %body, label %exit
body:
  %v = load atomic i32, ptr %flag monotonic, align 4
  %set = icmp ne i32 %v, 0
  call void @llvm.x86.sse2.pause()
  %next = add i64 %i, 1
  br i1 %set, label %exit, label %loop
exit:
  ret void
}
"""


def spin_iteration_seconds() -> float | None:
    """Seconds per iteration of a spin-wait loop like libgomp's (an atomic load, a compare, a
    pause), measured with JIT'd code: best of 5 runs of 4000 iterations. None off x86."""
    import time

    st = _init() if not _STATE else _STATE
    if "spin_s" in st:
        return st["spin_s"]
    seconds = None
    if st["triple"].startswith(("x86_64", "i686", "i386")):
        mod = llvm.parse_assembly(_SPIN_PROBE)
        mod.triple = st["triple"]
        mod.data_layout = str(st["tm"].target_data)
        st["engine"].add_module(mod)
        st["engine"].finalize_object()
        st["modules"].append(mod)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(
            st["engine"].get_function_address("cnncc_spin_probe"))
        flag = ctypes.c_int32(0)
        n, best = 4000, float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            fn(ctypes.addressof(flag), n)
            best = min(best, time.perf_counter() - t0)
        seconds = best / n
    st["spin_s"] = seconds
    return seconds


def _set_wait_policy() -> str:
    """Make idle OpenMP workers spin about SPIN_SECONDS, then sleep, unless the user chose
    (OMP_WAIT_POLICY / GOMP_SPINCOUNT); libgomp reads this when it loads, which is next. Says
    what applies."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        how = "set by the user"
    else:
        per = spin_iteration_seconds()
        count = max(200, int(SPIN_SECONDS / per)) if per else 2000
        os.environ["GOMP_SPINCOUNT"] = str(count)
        how = f"spin ~{SPIN_SECONDS * 1e6:.0f} us, then sleep"
    if _loaded("libgomp"):
        how = "libgomp was loaded before cnncc: its own settings apply"
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = " ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ)
    return f"{env} ({how})"


def _loaded(library: str) -> bool:
    try:
        with open("/proc/self/maps") as f:
            return any(library in line for line in f)
    except OSError:
        return False


def wait_policy() -> str:
    """How idle OpenMP workers of this process wait (the libgomp settings and who chose them)."""
    return _init()["wait"]


def cache_dir() -> str | None:
    """Where compiled object code is cached (the ``obj`` folder of the cnncc cache); None when
    CNNCC_CACHE=0."""
    from ...cache import cache_root

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


def object_code(text: str, kinds: tuple = ("jit",)) -> dict:
    """``text`` optimized at O3 once and compiled to object code of each kind: "jit" (for
    ``load_objects``) and "pic" (position independent, every defined function hidden: for
    linking into a shared library). Runs in compile worker processes too (objects.py)."""
    st = _init()
    mod = _parse(text, st["tm"])
    optimize(mod, 3)
    code = {}
    for kind in kinds:
        # Code generation changes the module: every kind but the last gets a copy.
        m = mod.clone() if kind != kinds[-1] else mod
        if kind == "pic":
            tm = _pic_machine()
            m.data_layout = str(tm.target_data)
            for fn in m.functions:
                if not fn.is_declaration and fn.linkage.name not in ("internal", "private"):
                    fn.visibility = "hidden"
        elif kind == "jit":
            tm = st["tm"]
        else:
            raise CompileError(f"internal error: unknown object kind {kind!r}")
        code[kind] = tm.emit_object(m)
    return code


def loaded(names) -> set:
    """Those of ``names`` (object names given to ``load_objects``) already in the JIT."""
    st = _init()
    with _LOCK:
        return set(names) & st["loaded"]


def load_objects(objects: dict) -> None:
    """Add object code of kind "jit" ({name: code}; names already loaded are skipped) to the
    JIT and resolve it: its functions are callable by name, and from code loaded later."""
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


def vector_lanes() -> int:
    """f32 lanes of the host Target's vectors (16 AVX-512, 8 AVX/AVX2, 4 otherwise)."""
    return host_target().lanes


def has_openmp() -> bool:
    return bool(_init()["gomp"])


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
