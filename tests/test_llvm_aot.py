"""AOT export: the shared library gives the same outputs as the JIT model, and a C program
linked against it runs without Python."""
import ctypes
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import cnncc
from cnncc.backends.llvm.aot import export_library

from test_llvm_model import small_cnn

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


@pytest.mark.parametrize("threads", [1, 2])
def test_export_and_load_with_ctypes(tmp_path, threads):
    g = small_cnn()
    m = cnncc.compile(g, target="llvm", threads=threads)
    paths = export_library(m, str(tmp_path / "small-net.so"))
    meta = json.load(open(paths["metadata"]))
    assert meta["name"] == "small_net" and meta["inputs"][0]["shape"] == [2, 3, 30, 31]
    assert "int small_net_run(" in open(paths["header"]).read()
    lib = ctypes.CDLL(paths["library"])
    x = np.random.default_rng(0).standard_normal((2, 3, 30, 31)).astype(np.float32)
    y = np.zeros((2, 10), np.float32)
    ins = (ctypes.c_void_p * 1)(x.ctypes.data)
    outs = (ctypes.c_void_p * 1)(y.ctypes.data)
    assert lib.small_net_run(ins, outs) == 0
    np.testing.assert_allclose(y, m(x), rtol=1e-6, atol=1e-7)


def test_c_program_links_the_library(tmp_path):
    g = small_cnn()
    m = cnncc.compile(g, target="llvm", threads=1)
    paths = export_library(m, str(tmp_path / "net.so"))
    x = np.random.default_rng(1).standard_normal((2, 3, 30, 31)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    src = tmp_path / "main.c"
    src.write_text("""
#include <stdio.h>
#include "net.h"
static float x[2 * 3 * 30 * 31], y[20];
int main(void) {
    FILE *f = fopen("x.bin", "rb");
    if (!f || fread(x, sizeof x, 1, f) != 1) return 2;
    const float *ins[1] = {x};
    float *outs[1] = {y};
    if (net_run(ins, outs) != 0) return 3;
    for (int i = 0; i < 20; i++) printf("%.9g\\n", y[i]);
    return 0;
}
""")
    exe = tmp_path / "main"
    subprocess.run(["cc", "-o", str(exe), str(src), f"-I{tmp_path}", f"-L{tmp_path}", "-l:net.so",
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    out = subprocess.run([str(exe)], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ})
    y = np.array([float(v) for v in out.stdout.split()], np.float32).reshape(2, 10)
    np.testing.assert_allclose(y, m(x), rtol=1e-6, atol=1e-7)
