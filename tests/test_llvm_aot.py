"""AOT export (cnncc.export / `cnncc compile`): a C program built against the header and linked to
the library runs without Python and matches the reference target; the library depends on libc
only (no OpenMP runtime); cnncc.load round-trips, is thread-safe and checks inputs and files."""
import json
import os
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest

import cnncc
from cnncc.ir import CompileError, DType, Graph, InputError, TensorType

from test_llvm_model import small_cnn

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler (cc or gcc)")
ALLOWED_DEPS = {"libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2",
                "libgcc_s.so.1"}


def two_in_two_out():
    g = Graph("pair")
    a = g.add_input("a", TensorType(DType.float32, (3, 5)))
    b = g.add_input("b", TensorType(DType.float32, (3, 5)))
    s, = g.add_node("Add", [a, b])
    p, = g.add_node("Mul", [a, b])
    g.outputs = [s, p]
    return g


def sample(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


C_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include "NAME.h"
int main(int argc, char **argv) {
    static float x[UP_INPUT0_SIZE], y[UP_OUTPUT0_SIZE];
    if (UP_NUM_INPUTS != 1 || UP_INPUT0_RANK != 4 || UP_INPUT0_SHAPE[0] != 2) return 4;
    FILE *f = fopen(argv[1], "rb");
    if (!f || fread(x, sizeof x, 1, f) != 1) return 2;
    fclose(f);
    const float *ins[UP_NUM_INPUTS] = {x};
    float *outs[UP_NUM_OUTPUTS] = {y};
    if (NAME_run(ins, outs) != 0) return 3;
    for (int i = 0; i < UP_OUTPUT0_SIZE; i++) printf("%.9g\n", y[i]);
    return 0;
}
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_c_program_links_the_library(tmp_path, threads):
    g = small_cnn()
    paths = cnncc.export(g, tmp_path / "out", name="net", threads=threads)
    assert paths["library"] == str(tmp_path / "out" / "net.so")
    x = sample((2, 3, 30, 31), 1)
    x.tofile(tmp_path / "x.bin")
    src = tmp_path / "main.c"
    src.write_text(C_MAIN.replace("NAME", "net").replace("UP_", "NET_"))
    exe = tmp_path / "main"
    subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(src),
                    f"-I{tmp_path / 'out'}", f"-L{tmp_path / 'out'}", "-l:net.so",
                    f"-Wl,-rpath,{tmp_path / 'out'}"], check=True)
    # No Python in sight: an empty environment but the library path.
    out = subprocess.run([str(exe), str(tmp_path / "x.bin")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    y = np.array([float(v) for v in out.stdout.split()], np.float32).reshape(2, 10)
    ref = cnncc.compile(g, target="reference")(x)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("threads", [1, 2])
def test_library_needs_only_libc(tmp_path, threads):
    """With threads > 1 too: the library carries cnncc's thread pool, not libgomp."""
    paths = cnncc.export(small_cnn(), tmp_path, name="deps", threads=threads)
    dyn = subprocess.run(["readelf", "-d", paths["library"]], capture_output=True, text=True,
                         check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn))
    assert "libc.so.6" in needed and needed <= ALLOWED_DEPS, needed
    assert not any("gomp" in lib or "pthread" in lib for lib in needed), needed
    assert "RPATH" not in dyn and "RUNPATH" not in dyn
    ldd = subprocess.run(["ldd", paths["library"]], capture_output=True, text=True).stdout
    assert "python" not in ldd.lower() and "cnncc" not in ldd.lower() and "llvm" not in ldd
    # Only the C entry points are exported; the kernels are hidden.
    syms = subprocess.run(["nm", "-D", "--defined-only", paths["library"]], capture_output=True,
                          text=True, check=True).stdout.split()[2::3]
    assert sorted(syms) == ["deps_arena_bytes", "deps_run", "deps_run_batch",
                            "deps_run_with_arena"]


def test_weights_are_a_data_section_not_ir_text(tmp_path):
    g = Graph("big")
    x = g.add_input("x", TensorType(DType.float32, (1, 512)))
    w = g.add_param("w", sample((512, 512), 3))
    y, = g.add_node("Gemm", [x, w])
    g.outputs = [y]
    paths = cnncc.export(g, tmp_path, emit=["llvm", "asm"])
    assert os.path.basename(paths["library"]) == "big.so"
    ll, asm = open(paths["llvm"]).read(), open(paths["asm"]).read()
    assert "define" in ll and ".text" in asm
    assert len(ll) < 512 * 512 * 4 and len(asm) < 512 * 512 * 4
    lib = open(paths["library"], "rb").read()
    assert len(lib) > 512 * 512 * 4
    assert g.params["w"][7, :8].tobytes() in lib     # (packed by column tiles: rows survive)
    meta = json.load(open(paths["metadata"]))
    assert meta["weights_bytes"] >= 512 * 512 * 4
    xv = sample((1, 512), 4)
    np.testing.assert_allclose(cnncc.load(paths["library"])(xv), xv @ g.params["w"], rtol=1e-4,
                               atol=1e-4)


def test_header_declares_names_shapes_and_ranks(tmp_path):
    paths = cnncc.export(two_in_two_out(), tmp_path, name="pair")
    h = open(paths["header"]).read()
    for line in ["#define PAIR_NUM_INPUTS 2", "#define PAIR_NUM_OUTPUTS 2",
                 '#define PAIR_INPUT1_NAME "b"', "#define PAIR_OUTPUT1_RANK 2",
                 "static const int64_t PAIR_INPUT0_SHAPE[] = {3, 5};",
                 "int pair_run(const float *const *inputs, float *const *outputs);"]:
        assert line in h, line
    src = tmp_path / "check.c"          # the header compiles on its own, as C and as C++-ish C99
    src.write_text('#include "pair.h"\nint main(void) { return (int)PAIR_INPUT0_SHAPE[1] - 5; }\n')
    subprocess.run([CC, "-std=c99", "-Wall", "-Werror", "-fsyntax-only", f"-I{tmp_path}",
                    str(src)], check=True)


def test_load_round_trips_multi_io(tmp_path):
    g = two_in_two_out()
    cnncc.export(g, tmp_path, name="pair")
    m = cnncc.load(tmp_path)
    assert m.input_names == g.inputs and m.output_names == g.outputs
    a, b = sample((3, 5), 1), sample((3, 5), 2)
    s, p = m(a, b)
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(p, a * b)
    out = m.run({"a": a, "b": b})
    np.testing.assert_array_equal(out[g.outputs[1]], a * b)


def test_load_gives_the_compiled_models_outputs(tmp_path):
    g = small_cnn()
    cnncc.export(g, tmp_path, name="small", threads=2)
    jit = cnncc.compile(g, target="llvm", threads=2, cache=False)
    x = sample((2, 3, 30, 31), 5)
    for path in (tmp_path, tmp_path / "small.so", tmp_path / "small.json"):
        np.testing.assert_array_equal(cnncc.load(path)(x), jit(x))


def test_concurrent_calls_of_a_loaded_model_agree(tmp_path):
    cnncc.export(small_cnn(), tmp_path, name="conc", threads=2)
    m = cnncc.load(tmp_path)
    xs = [sample((2, 3, 30, 31), 10 + i) for i in range(4)]
    expected = [m(x) for x in xs]
    results: dict = {}
    errors = []

    def work(i):
        try:
            results[i] = [m(xs[i]) for _ in range(10)]
        except Exception as e:              # reported below: the assertion names it
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        for y in results[i]:
            np.testing.assert_array_equal(y, expected[i])


def test_bad_inputs_to_a_loaded_model(tmp_path):
    cnncc.export(small_cnn(), tmp_path, name="bad")
    m = cnncc.load(tmp_path)
    x = sample((2, 3, 30, 31), 0)
    with pytest.raises(InputError, match="takes 1 input"):
        m(x, x)
    with pytest.raises(InputError, match="expected shape"):
        m(x[..., :-1])
    with pytest.raises(InputError, match="expected dtype float32, got float64"):
        m(x.astype(np.float64))
    with pytest.raises(InputError, match="expected a numpy array"):
        m(x.tolist())
    with pytest.raises(InputError, match="missing input"):
        m.run({})
    np.testing.assert_array_equal(m(x[:, :, :, ::-1].copy()[..., ::-1]), m(x))  # strided ok


def test_load_refuses_missing_or_corrupt_files(tmp_path):
    paths = cnncc.export(two_in_two_out(), tmp_path / "m", name="pair")
    with pytest.raises(CompileError, match="does not exist"):
        cnncc.load(tmp_path / "nothing.so")
    with pytest.raises(CompileError, match="no exported model"):
        cnncc.load(tmp_path)
    good_json = open(paths["metadata"]).read()
    good_so = open(paths["library"], "rb").read()
    os.unlink(paths["metadata"])
    with pytest.raises(CompileError, match="pair.json is missing"):
        cnncc.load(paths["library"])
    open(paths["metadata"], "w").write(good_json[:40])
    with pytest.raises(CompileError, match="cannot be read as json"):
        cnncc.load(tmp_path / "m")
    meta = json.loads(good_json)
    del meta["inputs"]
    open(paths["metadata"], "w").write(json.dumps(meta))
    with pytest.raises(CompileError, match="not a valid cnncc library description"):
        cnncc.load(tmp_path / "m")
    open(paths["metadata"], "w").write(good_json)
    open(paths["library"], "wb").write(good_so[: len(good_so) // 2])
    with pytest.raises(CompileError, match="corrupt or was replaced"):
        cnncc.load(paths["library"])
    os.unlink(paths["library"])
    with pytest.raises(CompileError, match="pair.so is missing"):
        cnncc.load(tmp_path / "m")
    # A library that matches its checksum but is not a loadable shared object.
    open(paths["library"], "wb").write(b"\x7fELF garbage")
    meta = json.loads(good_json)
    meta["library_sha256"] = __import__("hashlib").sha256(b"\x7fELF garbage").hexdigest()
    open(paths["metadata"], "w").write(json.dumps(meta))
    with pytest.raises(CompileError, match="cannot be loaded"):
        cnncc.load(tmp_path / "m")
    cnncc.export(two_in_two_out(), tmp_path / "m", name="other")
    with pytest.raises(CompileError, match="several models"):
        cnncc.load(tmp_path / "m")


def test_names(tmp_path):
    for bad in ("9net", "my-net", "int", "", "a b"):
        with pytest.raises(CompileError, match="C identifier|reserved word"):
            cnncc.export(two_in_two_out(), tmp_path, name=bad)
    import onnx
    from cnncc.export_onnx import to_onnx
    path = tmp_path / "my-model.v2.onnx"
    onnx.save(to_onnx(two_in_two_out()), path)
    paths = cnncc.export(str(path), tmp_path / "o")
    assert os.path.basename(paths["library"]) == "my_model_v2.so"
    assert "int my_model_v2_run(" in open(paths["header"]).read()
    with pytest.raises(CompileError, match="unknown --emit"):
        cnncc.export(two_in_two_out(), tmp_path, emit=["wasm"])
