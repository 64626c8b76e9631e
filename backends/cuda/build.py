"""Building generated CUDA C: nvcc compile checks (with per-kernel resource usage) and the host
emulation build (g++ with cuda_emu.h) as a ctypes-loaded library or a standalone executable.

    usage = nvcc_check(module.source, ("sm_80", "sm_90"))   # {arch: {fn: ResourceUsage}}
    lib = EmuLibrary(build_emu_library(module.source))
    lib.launch(module.kernel("relu"), {"x": x, "y": y})      # numpy arrays, in place
    exe = build_emu_executable(module, sanitize="thread")
    outs, proc = run_emu_executable(exe, module.kernel("relu"), {"x": x, "y": y})
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncc.ir import CompileError, InputError
from .cexpr import c_type

EMU_HEADER = Path(__file__).with_name("cuda_emu.h")
SANITIZE_FLAGS = {
    None: ["-O2"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
    "address": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"],
}
# How cuda_emu.h runs a block's CUDA threads (its top comment has the details): "fast" = the
# calling host threads, fibers for blocks that use __syncthreads() (x86-64 context switch);
# "ucontext" = the same with swapcontext (the portable fallback); "pthreads" = one pthread per
# CUDA thread (what sanitizer builds always use).
EMU_MODES = {
    "fast": [],
    "ucontext": ["-DCNNCC_EMU_UCONTEXT"],
    "pthreads": ["-DCNNCC_EMU_PTHREADS"],
}
# Added to the optimized (not sanitized, not quick) build when the compiler is GCC: it peels
# loops of a few constant iterations away entirely (on at -O3, off at -O2; clang's -O2 does it
# already), so the generated kernels' `#pragma unroll` register tiles (GCC reads no such
# pragma) become scalars instead of stack arrays. Whole CNNs run ~1.9x faster emulated
# (ResNet-50 3.85 -> 1.94 CPU s, VGG-11 6.06 -> 3.09) for about the same build time; -O3 gives
# the same run time for 30-50% longer builds.
GCC_OPTIMIZED_FLAGS = ["-fpeel-loops"]
# Exit codes the sanitizers use in run_emu_executable (to tell their reports from crashes).
SANITIZER_EXIT = {"thread": 66, "address": 67}
_WARN = ["-Wall", "-Wextra", "-Wno-unused-variable", "-Wno-unused-parameter",
         "-Wno-unknown-pragmas", "-Werror"]


class BuildError(CompileError):
    """A compiler (nvcc or g++) rejected generated code; the message holds its output."""


@dataclass(frozen=True)
class ResourceUsage:
    """ptxas statistics of one __global__ function for one architecture."""

    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int


def find_nvcc() -> str | None:
    """nvcc from $CNNCC_NVCC, PATH or /usr/local/cuda/bin (None when absent)."""
    for cand in (os.environ.get("CNNCC_NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def find_cxx() -> str | None:
    for cand in (os.environ.get("CNNCC_CXX"), shutil.which("g++"), shutil.which("clang++")):
        if cand and os.path.isfile(cand):
            return cand
    return None


def build_workdir(key: str, workdir: str | Path | None) -> Path:
    base = Path(workdir) if workdir else Path(tempfile.gettempdir()) / "cnncc-cuda"
    d = base / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def _private(d: Path) -> Path:
    """A scratch folder inside ``d`` for one build: builds of the same key from several
    processes or threads (pytest-xdist workers) never write each other's files; the result is
    moved into ``d`` with an atomic rename."""
    return Path(tempfile.mkdtemp(prefix="build-", dir=d))


def build_once(target: Path, sources: dict, command, what: str) -> Path:
    """``target`` (a file in a cache folder), unless it exists, built by ``command(scratch)``
    from ``sources`` ({file name: text}) written into a private scratch folder, then moved
    into place atomically."""
    if target.exists():
        return target
    tmp = _private(target.parent)
    try:
        for name, text in sources.items():
            (tmp / name).write_text(text)
        _run(command(tmp), what)
        os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _run(cmd: list, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(map(str, cmd))}):\n{proc.stdout}"
                         f"{proc.stderr}")
    return proc


def nvcc_check(source: str, archs=("sm_80", "sm_90"), workdir=None,
               extra: tuple = ()) -> dict:
    """Compile ``source`` (device and host code) for every arch with all warnings as errors.

    Returns {arch: {function name: ResourceUsage}}; raises BuildError with nvcc's output.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (set CNNCC_NVCC or put nvcc on PATH)")
    d = _private(build_workdir(build_key("nvcc", source, *archs, *extra), workdir))
    cu = d / "kernels.cu"
    cu.write_text(source)
    cmd = [nvcc, "-c", "-o", str(d / "kernels.o"), "-Werror", "all-warnings",
           "--resource-usage", "-std=c++17", *extra]
    for a in archs:
        if not re.fullmatch(r"sm_\d+[a-z]?", a):
            raise BuildError(f"bad CUDA architecture {a!r} (expected e.g. sm_80)")
        cmd += ["-gencode", f"arch=compute_{a[3:]},code={a}"]
    try:
        proc = _run(cmd + [str(cu)], "nvcc")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return parse_resource_usage(proc.stdout + proc.stderr)


def parse_resource_usage(text: str) -> dict:
    """{arch: {function: ResourceUsage}} from ptxas ``--resource-usage`` output."""
    out: dict = {}
    fn = arch = None
    stack = stores = loads = 0
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            fn, arch = m.groups()
            stack = stores = loads = 0
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                      r"loads", line)
        if m:
            stack, stores, loads = (int(x) for x in m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and fn is not None:
            smem = re.search(r"(\d+) bytes smem", line)
            out.setdefault(arch, {})[fn] = ResourceUsage(
                int(m.group(1)), stores, loads, stack, int(smem.group(1)) if smem else 0)
            fn = None
    return out


def _emu_cmd(cxx: str, sanitize: str | None, emulation: str = "fast") -> list:
    """g++ command prefix for a cuda-emu build. Sanitizer builds always use the pthread mode of
    cuda_emu.h (real threads: TSan sees races, ASan exact-size shared arrays)."""
    if sanitize not in SANITIZE_FLAGS:
        raise BuildError(f"unknown sanitizer {sanitize!r} (thread, address or None)")
    if emulation not in EMU_MODES:
        raise BuildError(f"unknown emulation mode {emulation!r} ({', '.join(EMU_MODES)})")
    mode = EMU_MODES["pthreads" if sanitize else emulation]
    extra = GCC_OPTIMIZED_FLAGS if sanitize is None and _is_gcc(cxx) else []
    return [cxx, "-std=c++20", "-pthread", *SANITIZE_FLAGS[sanitize], *extra, *mode, *_WARN,
            "-include", str(EMU_HEADER)]


@functools.lru_cache(maxsize=None)
def _is_gcc(cxx: str) -> bool:
    """Whether ``cxx`` is GCC (g++ may be clang elsewhere, which rejects GCC-only flags under
    -Werror)."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "clang" not in out.stdout.lower() and \
        "free software foundation" in out.stdout.lower()


def build_emu_library(source: str, sanitize: str | None = None, workdir=None,
                      emulation: str = "fast", quick: bool = False) -> Path:
    """Compile ``source`` for the host as a shared library (cached by content). ``emulation``
    picks how cuda_emu.h runs a block's threads (see EMU_MODES); sanitizers imply pthreads.
    ``quick`` compiles without optimization (-O0: 2.5x faster to build, for small programs
    run once, such as the op sweeps)."""
    cxx = find_cxx()
    if cxx is None:
        raise BuildError("no C++ compiler (g++) found for the cuda-emu build")
    cmd = _emu_cmd(cxx, sanitize, emulation)
    if quick and not sanitize:
        cmd = ["-O0" if c == "-O2" else c for c in cmd if c not in GCC_OPTIMIZED_FLAGS]
    header = EMU_HEADER.read_text()
    d = build_workdir(build_key("emu-so", source, header, *cmd[1:]), workdir)
    target = d / "kernels.so"
    if target.exists():
        return target
    cmd = precompiled_header(cmd + ["-fPIC"], header)
    return build_once(target, {"kernels.cu": source}, lambda t: cmd + [
        "-shared", "-o", str(t / "kernels.so"), "-x", "c++", str(t / "kernels.cu")],
        "g++ (cuda-emu)")


def precompiled_header(cmd: list, header: str) -> list:
    """``cmd`` (a cuda-emu compile command ending in ``-include EMU_HEADER``, then code
    generation flags) reading the emulation header precompiled: GCC reads X.gch for
    ``-include X`` when it was made with the same options, which saves parsing the header
    and the C++ headers it includes (~0.2 of 0.3 CPU s) in every build. One precompiled
    header per header text and command, shared by every build folder (the default one); a
    compiler other than GCC gets ``cmd`` unchanged."""
    at = cmd.index("-include")
    if not _is_gcc(cmd[0]) or cmd[at + 1] != str(EMU_HEADER):
        return cmd
    flags = cmd[1:at] + cmd[at + 2:]
    d = build_workdir(build_key("emu-pch", header, *flags), None)
    copy = d / EMU_HEADER.name
    if not copy.exists():
        tmp = _private(d)
        (tmp / EMU_HEADER.name).write_text(header)
        os.replace(tmp / EMU_HEADER.name, copy)
        shutil.rmtree(tmp, ignore_errors=True)
    build_once(d / f"{EMU_HEADER.name}.gch", {EMU_HEADER.name: header}, lambda t: [
        cmd[0], *flags, "-x", "c++-header", "-o", str(t / f"{EMU_HEADER.name}.gch"),
        str(t / EMU_HEADER.name)], "g++ (cuda-emu header)")
    return cmd[:at + 1] + [str(copy)] + cmd[at + 2:]


class EmuLibrary:
    """A cuda-emu shared library: launch kernels on numpy arrays (host memory is device
    memory in the emulation)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(self.path))

    def launch(self, kernel, arrays: dict) -> None:
        """Call NAME_launch with one array per kernel parameter (by buffer name); outputs are
        written in place. Raises RuntimeError when the launch reports a CUDA error."""
        ptrs = [_check_array(kernel.name, b, arrays) for b in kernel.params]
        fn = getattr(self.lib, kernel.launcher_name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * (len(ptrs) + 1)
        err = fn(*ptrs, None)
        if err != 0:
            raise RuntimeError(f"{kernel.launcher_name} returned CUDA error {err}")


def _check_array(kname: str, b, arrays: dict) -> int:
    if b.name not in arrays:
        raise InputError(f"kernel {kname}: no array for parameter {b.name}")
    a = arrays[b.name]
    if not isinstance(a, np.ndarray) or a.shape != b.shape or a.dtype != b.dtype.np or \
            not a.flags.c_contiguous or not a.flags.writeable:
        raise InputError(f"kernel {kname}: {b.name} must be a writeable C-contiguous "
                         f"{b.dtype.value} array of shape {b.shape}")
    return a.ctypes.data


def _harness_runner(i: int, kernel) -> str:
    protos = ", ".join(f"{'const ' if ro else ''}{c_type(b.dtype)}*"
                       for b, ro in zip(kernel.params, kernel.readonly))
    casts = ", ".join(f"({'const ' if ro else ''}{c_type(b.dtype)}*)bufs[{j}]"
                      for j, (b, ro) in enumerate(zip(kernel.params, kernel.readonly)))
    protos = f"{protos}, cudaStream_t" if protos else "cudaStream_t"
    args = f"{casts}, nullptr" if casts else "nullptr"
    return (f'extern "C" int {kernel.launcher_name}({protos});\n'
            f"static int run{i}(void **bufs) {{ return {kernel.launcher_name}({args}); }}\n")


def harness_source(kernels: list) -> str:
    """A C++ main(argc, argv) for ``run KERNEL IN OUT``: reads every parameter of KERNEL (in
    order, raw bytes) from IN into exact-size cudaMalloc'd buffers, launches the kernel, writes
    every parameter back to OUT."""
    table = []
    runners = []
    for i, k in enumerate(kernels):
        sizes = [b.size * b.dtype.itemsize for b in k.params] or [0]
        runners.append(_harness_runner(i, k))
        runners.append(f"static const size_t sizes{i}[] = {{{', '.join(map(str, sizes))}}};\n")
        table.append(f'  {{"{k.name}", run{i}, sizes{i}, {len(k.params)}}},')
    return f"""\
// Test harness (generated by cnncc.backends.cuda.build).
#include <stdio.h>
#include <string.h>

{"".join(runners)}
struct Entry {{
  const char *name;
  int (*run)(void **);
  const size_t *sizes;
  int n;
}};
static const Entry entries[] = {{
{chr(10).join(table)}
}};

int main(int argc, char **argv) {{
  if (argc != 4) return 2;
  const Entry *e = nullptr;
  for (const Entry &x : entries)
    if (strcmp(x.name, argv[1]) == 0) e = &x;
  if (!e) return 3;
  void *bufs[{max(max((len(k.params) for k in kernels), default=1), 1)}] = {{nullptr}};
  FILE *in = fopen(argv[2], "rb");
  if (!in) return 4;
  for (int i = 0; i < e->n; ++i) {{
    if (cudaMalloc(&bufs[i], e->sizes[i]) != cudaSuccess) return 5;
    if (fread(bufs[i], 1, e->sizes[i], in) != e->sizes[i]) return 6;
  }}
  fclose(in);
  int err = e->run(bufs);
  if (err != 0) {{
    fprintf(stderr, "launch failed: CUDA error %d\\n", err);
    return 7;
  }}
  cudaDeviceSynchronize();
  FILE *out = fopen(argv[3], "wb");
  if (!out) return 8;
  for (int i = 0; i < e->n; ++i) {{
    fwrite(bufs[i], 1, e->sizes[i], out);
    cudaFree(bufs[i]);
  }}
  fclose(out);
  return 0;
}}
"""


def build_emu_executable(module, sanitize: str | None = None, workdir=None,
                         emulation: str = "fast") -> Path:
    """Compile ``module`` plus a harness for all its kernels (see harness_source) into an
    executable; ``sanitize`` = "thread" | "address" | None (a sanitizer implies the pthreads
    emulation), ``emulation`` as for build_emu_library."""
    cxx = find_cxx()
    if cxx is None:
        raise BuildError("no C++ compiler (g++) found for the cuda-emu build")
    cmd = _emu_cmd(cxx, sanitize, emulation)
    harness = harness_source(module.kernels)
    header = EMU_HEADER.read_text()
    d = build_workdir(build_key("emu-exe", module.source, harness, header, *cmd[1:]), workdir)
    return build_once(d / "run", {"kernels.cu": module.source, "harness.cpp": harness},
                      lambda t: cmd + ["-o", str(t / "run"), "-x", "c++", str(t / "kernels.cu"),
                                       str(t / "harness.cpp")], "g++ (cuda-emu)")


def run_emu_executable(exe: Path, kernel, arrays: dict, timeout: float = 300):
    """Run a harness executable on copies of ``arrays``; returns (output arrays by name, the
    CompletedProcess). Outputs are None when the run failed (e.g. a sanitizer report)."""
    for b in kernel.params:
        _check_array(kernel.name, b, arrays)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        src.write_bytes(b"".join(arrays[b.name].tobytes() for b in kernel.params))
        env = dict(os.environ)
        env["TSAN_OPTIONS"] = f"exitcode={SANITIZER_EXIT['thread']} halt_on_error=1"
        env["ASAN_OPTIONS"] = f"exitcode={SANITIZER_EXIT['address']} detect_leaks=1"
        proc = subprocess.run([str(exe), kernel.name, str(src), str(dst)], capture_output=True,
                              text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            return None, proc
        data = dst.read_bytes()
    outs, off = {}, 0
    for b in kernel.params:
        n = b.size * b.dtype.itemsize
        outs[b.name] = np.frombuffer(data[off:off + n], b.dtype.np).reshape(b.shape).copy()
        off += n
    return outs, proc
