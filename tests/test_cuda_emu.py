"""CUDA backend builds: generated .cu compiled by nvcc (sm_80 and sm_90, warnings as errors, no
spills) and by g++ with cuda_emu.h, run against numpy and the loop IR interpreter, and run under
ThreadSanitizer / AddressSanitizer (clean kernels stay clean; a removed __syncthreads() and an
out-of-bounds access are reported). The emulation modes (fast fibers, ucontext fibers, pthreads)
agree bit for bit and all report divergent barriers. ``python tests/test_cuda_emu.py MODES SIZE
ROWS`` prints a timing comparison of the modes (see bench)."""
import ctypes
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import cuda_kernels as ck
from cnncc.backends.cuda import CudaKernel, CudaModule, KernelCall, render_module, render_program
from cnncc.backends.cuda.build import (EMU_HEADER, EMU_MODES, SANITIZER_EXIT, BuildError,
                                       EmuLibrary, _emu_cmd, build_emu_executable,
                                       build_emu_library, find_cxx, find_nvcc, harness_source,
                                       nvcc_check, precompiled_header, run_emu_executable)
from cnncc.ir.dtypes import DType
from cnncc.ir.loop import Buffer, For, Kernel, Store, Var
from cnncc.ir.loop_interp import run_kernel

needs_cxx = pytest.mark.skipif(find_cxx() is None, reason="no g++: cuda-emu builds need a C++ "
                                                          "compiler")
needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed: CUDA compile "
                                                            "checks need the CUDA toolkit")

BUILDERS = {
    "ew": ck.elementwise, "row_sum": ck.row_sum, "matmul": ck.tiled_matmul,
    "misc": ck.misc_ops, "shift": ck.shared_shift, "smm": ck.scheduled_matmul,
}
CASES = {name: b() for name, b in BUILDERS.items()}


def _renamed(kernel: Kernel, name: str) -> Kernel:
    return Kernel(name, kernel.params, kernel.body)


def _strip_barriers(source: str, fname: str) -> str:
    """Delete the __syncthreads() calls of function ``fname`` (a planted data race)."""
    start = source.index(f"\n{fname}(")
    end = source.index(f'extern "C" int {fname}_launch(')
    body, n = re.subn(r"\n *__syncthreads\(\);", "", source[start:end])
    assert n > 0
    return source[:start] + body + source[end:]


@pytest.fixture(scope="module")
def module() -> CudaModule:
    return render_module([k for k, _, _ in CASES.values()], "cases")


@pytest.fixture(scope="module")
def planted() -> CudaModule:
    """Correct kernels plus racy copies (barriers removed) and out-of-bounds kernels."""
    kernels = [CASES[n][0] for n in ("ew", "row_sum", "matmul", "shift")]
    kernels += [_renamed(CASES["row_sum"][0], "row_sum_racy"),
                _renamed(CASES["matmul"][0], "matmul_racy"),
                ck.elementwise_unguarded(), ck.shared_shift(oob=True)[0]]
    m = render_module(kernels, "planted")
    src = _strip_barriers(_strip_barriers(m.source, "row_sum_racy"), "matmul_racy")
    return CudaModule(m.name, m.kernels, src)


@pytest.fixture(scope="module")
def emu_lib(module, tmp_path_factory) -> EmuLibrary:
    if find_cxx() is None:
        pytest.skip("no g++: cuda-emu builds need a C++ compiler")
    return EmuLibrary(build_emu_library(module.source, workdir=tmp_path_factory.mktemp("emu")))


def _close(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


@needs_cxx
@pytest.mark.parametrize("name", list(BUILDERS))
def test_emu_matches_numpy(emu_lib, module, name):
    kernel, inputs, expected = CASES[name]
    arrays = inputs(np.random.default_rng(3))
    before = {n: a.copy() for n, a in arrays.items()}
    emu_lib.launch(module.kernel(name), arrays)
    for n, a in arrays.items():
        if module.kernel(name).readonly[[b.name for b in kernel.params].index(n)]:
            np.testing.assert_array_equal(a, before[n])       # inputs untouched
    if expected is not None:
        for n, want in expected(before).items():
            _close(arrays[n], want, 1e-4)


@needs_cxx
@pytest.mark.parametrize("name", ["ew", "row_sum", "misc", "shift", "smm"])
def test_emu_matches_loop_interpreter(emu_lib, module, name):
    kernel, inputs, _ = CASES[name]
    arrays = inputs(np.random.default_rng(4))
    for a in arrays.values():
        if a.dtype.kind == "f":
            # loop_interp's sigmoid maps NaN to 0 (reported); compare on finite inputs here,
            # NaN/Inf propagation is checked against numpy above.
            a[~np.isfinite(a)] = 0.75
    ref = {n: a.copy() for n, a in arrays.items()}
    emu_lib.launch(module.kernel(name), arrays)
    run_kernel(kernel, ref)
    for n in arrays:
        _close(arrays[n], ref[n], 2e-5)


@needs_cxx
def test_emu_small_matmul_matches_interpreter(tmp_path):
    kernel, inputs, _ = ck.tiled_matmul(m=12, n=10, k=11, tile=8)
    mod = render_module([kernel])
    lib = EmuLibrary(build_emu_library(mod.source, workdir=tmp_path))
    arrays = inputs(np.random.default_rng(5))
    ref = {n: a.copy() for n, a in arrays.items()}
    lib.launch(mod.kernels[0], arrays)
    run_kernel(kernel, ref)
    _close(arrays["c"], ref["c"], 1e-5)


@needs_cxx
def test_emu_launch_checks_arrays(emu_lib, module):
    kernel, inputs, _ = CASES["ew"]
    arrays = inputs(np.random.default_rng(0))
    arrays["out"] = np.zeros(7, np.float32)
    with pytest.raises(Exception, match="out must be"):
        emu_lib.launch(module.kernel("ew"), arrays)


@needs_nvcc
def test_nvcc_sm80_sm90_no_spills(module, tmp_path):
    usage = nvcc_check(module.source, ("sm_80", "sm_90"), workdir=tmp_path)
    functions = {ln.name for k in module.kernels for ln in k.launches}
    assert set(usage) == {"sm_80", "sm_90"}
    for arch, per_fn in usage.items():
        assert set(per_fn) == functions, arch
        for fn, u in per_fn.items():
            assert u.spill_stores == 0 and u.spill_loads == 0, (arch, fn, u)
            assert 0 < u.registers <= 255
        assert per_fn["matmul"].shared_bytes == 2 * 16 * 16 * 4
        assert per_fn["row_sum"].shared_bytes == 128 * 4
        assert per_fn["ew"].shared_bytes == 0


@needs_nvcc
def test_nvcc_reports_errors(tmp_path):
    with pytest.raises(BuildError, match="nvcc failed"):
        nvcc_check('extern "C" __global__ void k(float* p) { int unused_var = 0; }',
                   ("sm_80",), workdir=tmp_path)


def _run(exe, module, name, seed=7):
    kernel = module.kernel(name)
    arrays = CASES[name][1](np.random.default_rng(seed)) if name in CASES else \
        _inputs_for(kernel, seed)
    return run_emu_executable(exe, kernel, arrays), arrays


def _inputs_for(kernel: CudaKernel, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b.name: rng.standard_normal(b.shape).astype(b.dtype.np) for b in kernel.params}


@needs_cxx
def test_tsan_clean_and_planted_race(planted, tmp_path):
    exe = build_emu_executable(planted, "thread", workdir=tmp_path)
    for name in ("row_sum", "matmul", "shift"):
        (outs, proc), arrays = _run(exe, planted, name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for n, want in CASES[name][2](arrays).items():
            _close(outs[n], want, 1e-4)
    for name in ("row_sum_racy", "matmul_racy"):
        (outs, proc), _ = _run(exe, planted, name)
        assert proc.returncode == SANITIZER_EXIT["thread"], (name, proc.stderr[-2000:])
        assert "ThreadSanitizer: data race" in proc.stderr


@needs_cxx
def test_asan_clean_and_planted_oob(planted, tmp_path):
    exe = build_emu_executable(planted, "address", workdir=tmp_path)
    for name in ("ew", "matmul", "shift"):
        (outs, proc), arrays = _run(exe, planted, name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for n, want in CASES[name][2](arrays).items():
            _close(outs[n], want, 1e-4)
    for name in ("ew_oob", "shift_oob"):      # past a cudaMalloc'd buffer; past a shared array
        (outs, proc), _ = _run(exe, planted, name)
        assert proc.returncode == SANITIZER_EXIT["address"], (name, proc.stderr[-2000:])
        assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr


HAND_WRITTEN = r"""
extern "C" __global__ void divergent(float *p) {
  if (threadIdx.x == 0) __syncthreads();   // not reached by every thread: a deadlock
  p[threadIdx.x] = 1.0f;
}
extern "C" int divergent_launch(float *p, cudaStream_t stream) {
  CNNCC_LAUNCH(divergent, dim3(1), dim3(4), stream, p);
  return (int)cudaGetLastError();
}
extern "C" __global__ void divergent_last(float *p) {
  if (threadIdx.x == 3) __syncthreads();   // only the last thread waits
  p[threadIdx.x] = 1.0f;
}
extern "C" int divergent_last_launch(float *p, cudaStream_t stream) {
  CNNCC_LAUNCH(divergent_last, dim3(1), dim3(4), stream, p);
  return (int)cudaGetLastError();
}
extern "C" __global__ void divergent_later(float *p) {
  p[threadIdx.x] = 1.0f;
  __syncthreads();                         // uniform
  if (threadIdx.x < 2) __syncthreads();    // half of the threads
  p[threadIdx.x] = 2.0f;
}
extern "C" int divergent_later_launch(float *p, cudaStream_t stream) {
  CNNCC_LAUNCH(divergent_later, dim3(1), dim3(4), stream, p);
  return (int)cudaGetLastError();
}
extern "C" __global__ void ids(float *p) {
  unsigned t = ((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) *
               (blockDim.x * blockDim.y * blockDim.z) +
               (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  p[t] = (float)t;
}
extern "C" int ids_launch(float *p, cudaStream_t stream) {
  cudaStream_t s;
  if (cudaStreamCreate(&s) != cudaSuccess) return 100;
  float *dev = nullptr;
  if (cudaMalloc(&dev, 120 * sizeof(float)) != cudaSuccess) return 101;
  CNNCC_LAUNCH(ids, dim3(3, 2, 1), dim3(5, 2, 2), s, dev);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return (int)e;
  cudaMemcpyAsync(p, dev, 120 * sizeof(float), cudaMemcpyDeviceToHost, s);
  cudaStreamSynchronize(s);
  cudaStreamDestroy(s);
  cudaFree(dev);
  CNNCC_LAUNCH(ids, dim3(1), dim3(2048), stream, p);   // too many threads per block
  if (cudaGetLastError() != cudaErrorInvalidConfiguration || cudaGetLastError() != cudaSuccess)
    return 102;
  CNNCC_LAUNCH(ids, dim3(0), dim3(32), stream, p);     // empty grid
  return cudaGetLastError() == cudaErrorInvalidConfiguration ? 0 : 103;
}
// Every block sees fresh (0xff-filled) shared arrays; thread t's 16 KiB local array lives across
// barriers (fiber stacks); the shared rotation needs both barriers.
extern "C" __global__ void blocks(float *p) {
  CNNCC_SHARED(unsigned, fresh, 64);
  CNNCC_SHARED(float, rot, 64);
  float mine[4096];
  const unsigned t = threadIdx.x;
  const bool was_fresh = fresh[t] == 0xffffffffu;
  for (unsigned i = 0; i < 4096; ++i) mine[i] = (float)(t * 7 + i % 5 + blockIdx.x);
  __syncthreads();
  fresh[t] = 7u;
  rot[t] = mine[t % 4096];
  __syncthreads();
  float r = rot[(t + 1) % 64] + mine[4095];
  __syncthreads();
  p[blockIdx.x * 64 + t] = was_fresh ? r : -1.0f;
}
extern "C" int blocks_launch(float *p, cudaStream_t stream) {
  CNNCC_LAUNCH(blocks, dim3(9), dim3(64), stream, p);
  return (int)cudaGetLastError();
}
extern "C" int mode_launch(float *p, cudaStream_t stream) {
  const char *m = cnncc_emu_mode();
  p[0] = strcmp(m, "fibers") == 0 ? 1.0f : strcmp(m, "fibers-ucontext") == 0 ? 2.0f :
         strcmp(m, "pthreads") == 0 ? 3.0f : 0.0f;
  return 0;
}
"""
MODE_CODE = {"fast": 1.0, "ucontext": 2.0, "pthreads": 3.0}


def _hand_module() -> CudaModule:
    def kern(name, n):
        return CudaKernel(name, [Buffer("p", DType.float32, (n,))], (False,), [], "", "")
    return CudaModule("hand", [kern("divergent", 4), kern("divergent_last", 4),
                               kern("divergent_later", 4), kern("ids", 120),
                               kern("blocks", 9 * 64), kern("mode", 1)],
                      "#include <string.h>\n" + HAND_WRITTEN)


def _blocks_expected() -> np.ndarray:
    b, t = np.meshgrid(np.arange(9), np.arange(64), indexing="ij")
    t1 = (t + 1) % 64
    return (t1 * 7 + t1 % 5 + b + t * 7 + 4095 % 5 + b).astype(np.float32).ravel()


def _run_hand(exe, mod, name):
    return run_emu_executable(exe, mod.kernel(name), {"p": np.zeros(mod.kernel(name).params[0]
                                                                    .shape, np.float32)})


@needs_cxx
@pytest.mark.parametrize("emulation", list(EMU_MODES))
def test_emu_runtime_api_and_deadlock_report(tmp_path, monkeypatch, emulation):
    mod = _hand_module()
    exe = build_emu_executable(mod, None, workdir=tmp_path, emulation=emulation)
    outs, proc = _run_hand(exe, mod, "mode")
    assert proc.returncode == 0 and outs["p"][0] == MODE_CODE[emulation], proc.stderr
    for workers in ("1", "3"):       # blocks on the launching thread alone / with helpers
        monkeypatch.setenv("CNNCC_EMU_THREADS", workers)
        outs, proc = _run_hand(exe, mod, "ids")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(outs["p"], np.arange(120, dtype=np.float32))
        outs, proc = _run_hand(exe, mod, "blocks")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(outs["p"], _blocks_expected())
    monkeypatch.setenv("CNNCC_EMU_BARRIER_TIMEOUT", "1")
    for name, arrived, exited in (("divergent", 1, 3), ("divergent_last", 1, 3),
                                  ("divergent_later", 2, 2)):
        outs, proc = _run_hand(exe, mod, name)
        msg = f"__syncthreads() deadlock: {arrived} of 4 threads arrived"
        if emulation != "pthreads":      # found at once, with the threads that exited
            msg += f", {exited} exited without it"
        assert outs is None and msg in proc.stderr, (name, proc.stderr)


@needs_cxx
def test_sanitizer_builds_use_pthreads(tmp_path):
    """-fsanitize implies the pthread emulation: from build.py and from the header itself."""
    mod = _hand_module()
    assert "-DCNNCC_EMU_PTHREADS" in _emu_cmd("g++", "address", "fast")
    assert "-DCNNCC_EMU_PTHREADS" not in _emu_cmd("g++", None, "fast")
    with pytest.raises(BuildError, match="unknown emulation mode"):
        _emu_cmd("g++", None, "gpu")
    exe = build_emu_executable(mod, "address", workdir=tmp_path, emulation="fast")
    outs, proc = _run_hand(exe, mod, "mode")
    assert proc.returncode == 0 and outs["p"][0] == MODE_CODE["pthreads"], proc.stderr
    (tmp_path / "k.cu").write_text(mod.source)
    (tmp_path / "h.cpp").write_text(harness_source(mod.kernels))
    cmd = [c for c in _emu_cmd(find_cxx(), None) if c not in ("-O2",)]
    subprocess.run(cmd + ["-O1", "-fsanitize=address", "-o", str(tmp_path / "asan"), "-x", "c++",
                          str(tmp_path / "k.cu"), str(tmp_path / "h.cpp")], check=True)
    outs, proc = _run_hand(tmp_path / "asan", mod, "mode")
    assert proc.returncode == 0 and outs["p"][0] == MODE_CODE["pthreads"], proc.stderr


@needs_cxx
def test_library_builds_read_the_precompiled_header(tmp_path):
    """GCC reads the precompiled cuda_emu.h in a library build (-H marks a used one with "!";
    -Winvalid-pch says why one is not used: an option differing between the two builds)."""
    cmd = precompiled_header(_emu_cmd(find_cxx(), None) + ["-fPIC"], EMU_HEADER.read_text())
    header = cmd[cmd.index("-include") + 1]
    if header == str(EMU_HEADER):
        pytest.skip(f"{find_cxx()} is not GCC: its builds parse the header")
    (tmp_path / "k.cu").write_text('extern "C" int k() { return 1; }\n')
    proc = subprocess.run(cmd + ["-Winvalid-pch", "-H", "-shared", "-o", str(tmp_path / "k.so"),
                                 "-x", "c++", str(tmp_path / "k.cu")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"! {header}.gch" in proc.stderr.splitlines()[0], proc.stderr[:500]


def _mode_lib(source: str, emulation: str, workdir) -> EmuLibrary:
    lib = EmuLibrary(build_emu_library(source, workdir=workdir, emulation=emulation))
    lib.lib.cnncc_emu_mode.restype = ctypes.c_char_p
    want = {"fast": b"fibers", "ucontext": b"fibers-ucontext", "pthreads": b"pthreads"}
    assert lib.lib.cnncc_emu_mode() == want[emulation]
    return lib


@needs_cxx
def test_emu_modes_agree(tmp_path_factory):
    """Every kernel gives bit-identical results in the fast (fiber), ucontext and pthread
    emulations, including multi-block barrier kernels spread over host workers."""
    extra = {"bigmm": ck.tiled_matmul(m=70, n=90, k=50, tile=16),
             "rows": ck.row_sum(rows=37, cols=1000, threads=128)}
    kernels = [k for k, _, _ in CASES.values()]
    kernels += [_renamed(k, name) for name, (k, _, _) in extra.items()]
    cases = dict(CASES, **{name: (_renamed(k, name), i, e) for name, (k, i, e) in extra.items()})
    mod = render_module(kernels, "modes")
    results = {}
    for emulation in EMU_MODES:
        lib = _mode_lib(mod.source, emulation, tmp_path_factory.mktemp(emulation))
        for name, (kernel, inputs, expected) in cases.items():
            arrays = inputs(np.random.default_rng(8))
            before = {n: a.copy() for n, a in arrays.items()}
            lib.launch(mod.kernel(name), arrays)
            if expected is not None:
                for n, want in expected(before).items():
                    _close(arrays[n], want, 1e-4)
            results[emulation, name] = arrays
    for (emulation, name), arrays in results.items():
        for n, a in arrays.items():
            np.testing.assert_array_equal(a, results["pthreads", name][n], err_msg=(emulation,
                                                                                     name, n))


def _program():
    """x (input 0) -> ew with y from the weights blob -> arena -> scale by 3 -> output 0."""
    ew, inputs, expected = ck.elementwise(n=1000, threads=256)
    tmp, out = Buffer("tmp", DType.float32, (1000,)), Buffer("res", DType.float32, (1000,))
    i, t = Var("i"), Var("t")
    scale = Kernel("scale", [tmp, out], For(i, 8, For(t, 125, Store(
        out, (i * 125 + t,), tmp[i * 125 + t] * 3.0), "gpu_thread"), "gpu_block"))
    calls = [KernelCall("ew", (("input", 0), ("const", 0), ("arena", 64))),
             KernelCall("scale", (("arena", 64), ("output", 0)))]
    mod = render_program("prog", [ew, scale], calls, 1, 1, weights_bytes=4000,
                         arena_bytes=4096)
    return mod, inputs, expected


def _ptrs(*arrays):
    return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])


@needs_cxx
def test_emu_program_entry(tmp_path):
    mod, inputs, expected = _program()
    lib = EmuLibrary(build_emu_library(mod.source, workdir=tmp_path)).lib
    arrays = inputs(np.random.default_rng(11))
    res = np.zeros(1000, np.float32)
    lib.prog_run.restype = lib.prog_init.restype = ctypes.c_int
    assert lib.prog_run(_ptrs(arrays["x"]), _ptrs(res)) == 1      # not initialized
    want = 3 * expected(arrays)["out"]
    weights = arrays["y"].copy()
    assert lib.prog_init(ctypes.c_void_p(weights.ctypes.data)) == 0
    weights[:] = 0                                                 # the blob was copied
    assert lib.prog_run(_ptrs(arrays["x"]), _ptrs(res)) == 0
    _close(res, want, 1e-4)
    lib.prog_release()


@needs_nvcc
def test_nvcc_program(tmp_path):
    mod, _, _ = _program()
    usage = nvcc_check(mod.source, ("sm_80",), workdir=tmp_path)
    assert set(usage["sm_80"]) == {"ew", "scale"}


def bench(modes: list, size: int, rows: int) -> None:
    """Print launch times of tiled_matmul size^3 (tile 16, 2 barriers per k step) and of row_sum
    rows x 300 (128 threads, 8 barriers per block) in each emulation mode (not a test:
    ``python tests/test_cuda_emu.py fast,pthreads 512 4096``)."""
    import tempfile
    mm = ck.tiled_matmul(m=size, n=size, k=size, tile=16)
    rs = ck.row_sum(rows=rows, cols=300, threads=128)
    mod = render_module([mm[0], rs[0]], "bench")
    with tempfile.TemporaryDirectory() as tmp:
        for emulation in modes:
            lib = _mode_lib(mod.source, emulation, tmp)
            for kernel, inputs, expected in (mm, rs):
                arrays = inputs(np.random.default_rng(0))
                t0 = time.perf_counter()
                lib.launch(mod.kernel(kernel.name), arrays)
                dt = time.perf_counter() - t0
                for n, want in expected(arrays).items():
                    _close(arrays[n], want, 1e-3)
                print(f"{emulation:9s} {kernel.name:8s} {dt:9.3f} s", flush=True)


if __name__ == "__main__":
    bench(sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]))
