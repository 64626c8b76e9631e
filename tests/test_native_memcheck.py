"""Generated code under a memory checker: exported libraries of the test models run under
valgrind memcheck from a C driver whose inputs, outputs and arena are exact-size heap blocks,
so a kernel reading or writing past any of them, or reading uninitialized memory that decides
a branch, fails the test.

(Generated code is not compiled with AddressSanitizer instrumentation; memcheck watches the
uninstrumented machine code instead. Overflows between two buffers inside the one arena are not
visible to it; the differential tests catch those as wrong numbers.)

valgrind (3.19 here) cannot decode AVX-512 instructions, so on an AVX-512 machine the libraries
are exported for the machine's features without AVX-512 (CNNCC_FEATURES, in a child process:
the LLVM target machine is made once per process): the 8-lane code paths, the ones an AVX2
machine runs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cnncc
from cnncc.dsl import zoo

VALGRIND = shutil.which("valgrind")
CC = shutil.which("cc") or shutil.which("gcc")

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "NAME.h"
static float *load(const char *path, long n) {
    float *p = malloc(sizeof(float) * n);
    FILE *f = fopen(path, "rb");
    if (!p || !f || fread(p, sizeof(float), n, f) != (size_t)n) { perror(path); exit(2); }
    fclose(f);
    return p;
}
int main(int argc, char **argv) {
    const float *in[1] = { load(argv[1], UNAME_INPUT0_SIZE) };
    float *out[1] = { malloc(sizeof(float) * UNAME_OUTPUT0_SIZE) };
    void *arena = malloc(NAME_arena_bytes);
    int rc = NAME_run_with_arena(in, out, arena);
    FILE *f = fopen(argv[2], "wb");
    fwrite(out[0], sizeof(float), UNAME_OUTPUT0_SIZE, f);
    fclose(f);
    free((void *)in[0]); free(out[0]); free(arena);
    return rc;
}
"""

def driver_source(name: str) -> str:
    return DRIVER.replace("UNAME", name.upper()).replace("NAME", name)


def valgrind_features() -> str:
    """This machine's LLVM feature list with everything valgrind cannot decode turned off."""
    from cnncc.backends.llvm.jit import host_features
    feats = []
    for f in host_features().split(","):
        if f[1:].startswith(("avx512", "amx", "evex512", "avx10")):
            f = "-" + f[1:]
        feats.append(f)
    return ",".join(feats)


def export_net(name: str, path) -> None:
    """cnncc.export of zoo net ``name`` into ``path`` (as "net"), for valgrind's decoder."""
    env = dict(os.environ, CNNCC_FEATURES=valgrind_features(), CNNCC_CACHE="0")
    code = ("import sys, cnncc; from cnncc.dsl import zoo; "
            "cnncc.export(zoo.ZOO[sys.argv[1]](), sys.argv[2], name='net')")
    subprocess.run([sys.executable, "-c", code, name, str(path)], check=True, env=env,
                   capture_output=True, timeout=600)


NETS = {"tiny_cnn": zoo.tiny_cnn, "tiny_resnet": zoo.tiny_resnet,
        "tiny_mobilenet": zoo.tiny_mobilenet, "tiny_unet": zoo.tiny_unet}


@pytest.mark.skipif(VALGRIND is None or CC is None,
                    reason="needs valgrind and a C compiler (both on the project's machines)")
@pytest.mark.parametrize("name", sorted(NETS))
def test_exported_library_is_memcheck_clean(name, tmp_path):
    net = NETS[name]()
    export_net(name, tmp_path)
    (tmp_path / "driver.c").write_text(driver_source("net"))
    subprocess.run([CC, "-O1", "-o", str(tmp_path / "driver"), str(tmp_path / "driver.c"),
                    f"-I{tmp_path}", f"-L{tmp_path}", "-l:net.so", f"-Wl,-rpath,{tmp_path}"],
                   check=True, capture_output=True)
    x = net.example_inputs(seed=5)[0]
    x.tofile(tmp_path / "x.bin")
    proc = subprocess.run([VALGRIND, "--error-exitcode=99", "--leak-check=no", "-q",
                           str(tmp_path / "driver"), str(tmp_path / "x.bin"),
                           str(tmp_path / "y.bin")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.fromfile(tmp_path / "y.bin", np.float32).reshape(net.output_shapes[0])
    ref = cnncc.compile(net, target="reference")(x)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.skipif(VALGRIND is None or CC is None, reason="needs valgrind and a C compiler")
def test_memcheck_catches_a_planted_overflow(tmp_path):
    """The harness itself can fail: a driver whose output buffer is one float short."""
    net = zoo.tiny_cnn()
    export_net("tiny_cnn", tmp_path)
    short = driver_source("net").replace("malloc(sizeof(float) * NET_OUTPUT0_SIZE)",
                                         "malloc(sizeof(float) * (NET_OUTPUT0_SIZE - 1))")
    assert "(NET_OUTPUT0_SIZE - 1)" in short
    (tmp_path / "driver.c").write_text(short)
    subprocess.run([CC, "-O1", "-o", str(tmp_path / "driver"), str(tmp_path / "driver.c"),
                    f"-I{tmp_path}", f"-L{tmp_path}", "-l:net.so", f"-Wl,-rpath,{tmp_path}"],
                   check=True, capture_output=True)
    net.example_inputs(seed=5)[0].tofile(tmp_path / "x.bin")
    proc = subprocess.run([VALGRIND, "--error-exitcode=99", "-q", str(tmp_path / "driver"),
                           str(tmp_path / "x.bin"), str(tmp_path / "y.bin")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 99 and "Invalid write" in proc.stderr, proc.stderr[-2000:]
