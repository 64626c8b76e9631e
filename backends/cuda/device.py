"""The real GPU side: is an NVIDIA GPU usable here, and nvcc builds of a runnable library.

    n, why = gpu_count()                       # 0 and the reason when there is none
    so = build_cuda_library(source, "sm_90")   # nvcc -shared, linked with the CUDA runtime
"""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

from cnncc.ir import CompileError
from .build import BuildError, build_key, build_workdir, build_once, find_nvcc
from .cexpr import DP4A_MIN_SM


def gpu_count() -> tuple[int, str]:
    """(number of CUDA devices, why 0 when there are none) through the driver API."""
    try:
        drv = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "the NVIDIA driver library libcuda.so.1 is not installed"
    err = drv.cuInit(0)
    if err != 0:
        return 0, f"cuInit failed with CUDA driver error {err}"
    n = ctypes.c_int(0)
    err = drv.cuDeviceGetCount(ctypes.byref(n))
    if err != 0:
        return 0, f"cuDeviceGetCount failed with CUDA driver error {err}"
    return n.value, "" if n.value else "the driver reports no CUDA device"


def device_arch() -> str | None:
    """sm_XY of device 0 (None without a GPU)."""
    if gpu_count()[0] == 0:
        return None
    drv = ctypes.CDLL("libcuda.so.1")
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if drv.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
    drv.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
    drv.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
    return f"sm_{major.value}{minor.value}"


def check_arch(source: str, arch: str) -> None:
    """CompileError when ``source`` needs a newer GPU than ``arch`` (int8 convs: __dp4a)."""
    m = re.fullmatch(r"sm_(\d+)[a-z]?", arch)
    if m and int(m.group(1)) < DP4A_MIN_SM and "__dp4a(" in source:
        raise CompileError(f"the model's int8 convs use __dp4a, which needs sm_{DP4A_MIN_SM} "
                           f"or newer; got {arch}")


def build_cuda_library(source: str, arch: str | None = None, workdir=None) -> Path:
    """nvcc ``source`` into a shared library for ``arch`` (default: device 0's), cached by
    content; warnings are errors, as in the compile checks."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (set CNNCC_NVCC or put nvcc on PATH)")
    arch = arch or device_arch() or "sm_80"
    check_arch(source, arch)
    d = build_workdir(build_key("nvcc-so", source, arch), workdir)
    return build_once(d / "model.so", {"model.cu": source}, lambda t: [
        nvcc, "-shared", "-Xcompiler", "-fPIC", "-O3", "-std=c++17", "-Werror", "all-warnings",
        "-gencode", f"arch=compute_{arch[3:]},code={arch}", "-o", str(t / "model.so"),
        str(t / "model.cu"), "-lcudart"], "nvcc")
