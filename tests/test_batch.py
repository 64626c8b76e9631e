"""Batch at run time: a model compiled for batch 1 takes (N, ...) inputs and gives exactly what N
single runs give (bitwise), in both modes of the batch entry, from the JIT, from an exported
library (through cnncc.load and from a C program) and on the other targets; a graph that mixes
the images of a batch is refused with an InputError that says why.

The ImageNet zoo nets are checked at batch 2 in tests/test_zoo.py (sharing its compiled models).
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import cnncc
from cnncc.dsl.zoo import ZOO
from cnncc.ir import DType, Graph, InputError, TensorType
from cnncc.ir.batch import batch_refusal
from cnncc.testing import relative_error

SMALL = ["lenet5", "tiny_cnn", "tiny_resnet", "tiny_mobilenet", "tiny_unet"]
BATCHES = [1, 2, 3, 8]
CC = shutil.which("cc") or shutil.which("gcc")


def images(shape, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape[1:])).astype(
        np.float32)


def single_runs(model, x):
    return np.concatenate([model(x[i:i + 1]) for i in range(len(x))])


@pytest.mark.parametrize("name", SMALL)
def test_small_zoo_nets_batch_equals_single_runs(name):
    model = cnncc.compile(ZOO[name](), threads=2, cache=False)     # the JIT: run_batch modes
    assert model.batch_refusal is None
    shape = model.input_shapes[0]
    for n in BATCHES:
        x = images(shape, n, seed=n)
        got = model(x)
        assert got.shape == (n,) + model.output_shapes[0][1:]
        assert np.array_equal(got, single_runs(model, x)), f"{name}, batch {n}"
        for mode in ("latency", "throughput"):
            assert np.array_equal(model.run_batch(x, mode)[0], got), (name, n, mode)
    ref = cnncc.compile(ZOO[name](), target="reference")
    x = images(shape, 3, seed=7)
    assert relative_error(model(x), ref(x)) <= 1e-4


def test_one_thread_model_loops_over_images():
    model = cnncc.compile(ZOO["tiny_cnn"](), threads=1)
    x = images(model.input_shapes[0], 5)
    assert np.array_equal(model(x), single_runs(model, x))


@pytest.mark.parametrize("target", ["reference", "cuda-emu"])
def test_other_targets_run_batches(target):
    from cnncc.backends import BACKENDS

    why = BACKENDS[target].missing()
    if why:
        pytest.skip(why)
    model = cnncc.compile(ZOO["tiny_cnn"](), target=target)
    x = images(model.input_shapes[0], 3)
    got = model(x)
    assert np.array_equal(got, single_runs(model, x))
    ref = cnncc.compile(ZOO["tiny_cnn"](), target="reference")
    assert relative_error(got, ref(x)) <= 1e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_exported_library_runs_batches(tmp_path, threads):
    if CC is None:
        pytest.skip("needs a C compiler (cc or gcc) to export")
    net = ZOO["tiny_cnn"]()
    cnncc.export(net, tmp_path, name="net", threads=threads)
    assert "int net_run_batch(int n, const float *const *inputs, float *const *outputs);" in \
        (tmp_path / "net.h").read_text()
    lib = cnncc.load(tmp_path)
    assert lib.batch_refusal is None
    x = images(lib.input_shapes[0], 8)
    assert np.array_equal(lib(x), single_runs(lib, x))
    assert np.array_equal(lib(x), cnncc.compile(net, threads=threads)(x))


C_MAIN = r"""
#include <stdio.h>
#include "net.h"
#define N 5
int main(int argc, char **argv) {
    static float x[N * NET_INPUT0_SIZE], y[N * NET_OUTPUT0_SIZE];
    FILE *f = fopen(argv[1], "rb");
    if (!f || fread(x, sizeof x, 1, f) != 1) return 2;
    fclose(f);
    const float *ins[NET_NUM_INPUTS] = {x};
    float *outs[NET_NUM_OUTPUTS] = {y};
    if (net_run_batch(-1, ins, outs) != 2) return 4;
    if (net_run_batch(N, ins, outs) != 0) return 3;
    for (int i = 0; i < N * NET_OUTPUT0_SIZE; i++) printf("%.9g\n", y[i]);
    return 0;
}
"""


def test_c_program_calls_run_batch(tmp_path):
    if CC is None:
        pytest.skip("needs a C compiler (cc or gcc)")
    net = ZOO["tiny_cnn"]()
    cnncc.export(net, tmp_path / "out", name="net", threads=2)
    lib = cnncc.load(tmp_path / "out")
    x = images(lib.input_shapes[0], 5)
    x.tofile(tmp_path / "x.bin")
    (tmp_path / "main.c").write_text(C_MAIN)
    exe = tmp_path / "main"
    subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(tmp_path / "main.c"),
                    f"-I{tmp_path / 'out'}", f"-L{tmp_path / 'out'}", "-l:net.so",
                    f"-Wl,-rpath,{tmp_path / 'out'}"], check=True)
    out = subprocess.run([str(exe), str(tmp_path / "x.bin")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    y = np.array([float(v) for v in out.stdout.split()], np.float32).reshape(5, -1)
    assert np.array_equal(y, single_runs(lib, x))


# ---- graphs that mix the images of a batch -------------------------------------------------------

def _graph(shape, build):
    g = Graph("mix")
    x = g.add_input("x", TensorType(DType.float32, shape))
    g.outputs = [build(g, x)]
    return g.verify()


def _reshape(g, x, shape):
    s = g.add_param("shape", np.array(shape, np.int64))
    return g.add_node("Reshape", [x, s])[0]


MIXING = {
    "reshape folds the batch": ((1, 4, 3), lambda g, x: _reshape(g, x, [4, 3])),
    "reshape moves the batch": ((1, 4, 3), lambda g, x: _reshape(g, x, [4, 1, 3])),
    "mean over the batch": ((1, 4, 3), lambda g, x: g.add_node(
        "ReduceMean", [x, g.add_param("axes", np.array([0], np.int64))])[0]),
    "softmax over the batch": ((1, 4, 3), lambda g, x: g.add_node(
        "Softmax", [x], {"axis": 0})[0]),
    "concat along the batch": ((1, 4, 3), lambda g, x: g.add_node(
        "Concat", [x, x], {"axis": 0})[0]),
    "compiled batch 2": ((2, 4, 3), lambda g, x: g.add_node("Relu", [x])[0]),
}


@pytest.mark.parametrize("case", sorted(MIXING))
def test_graphs_that_mix_images_are_refused(case):
    shape, build = MIXING[case]
    g = _graph(shape, build)
    assert batch_refusal(g) is not None
    model = cnncc.compile(g, threads=2)
    x = np.ones((3,) + shape[1:], np.float32)
    with pytest.raises(InputError, match="runs only its compiled batch"):
        model(x)
    model(np.ones(shape, np.float32))            # the compiled batch still runs


def test_per_image_reshape_is_accepted():
    # x.view(x.size(0), -1) as torch exports it: Shape -> Gather -> Concat -> Reshape, which the
    # importer folds into Reshape(x, [1, 12]) at batch 1.
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Concat", ["b", "rest"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "view", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
         helper.make_tensor("rest", TensorProto.INT64, [1], [-1])])
    model = cnncc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                          threads=2)
    assert model.batch_refusal is None
    x = images((1, 4, 3), 3)
    flat = x.reshape(3, 12).astype(np.float64)
    expect = np.exp(flat - flat.max(1, keepdims=True))
    expect /= expect.sum(1, keepdims=True)
    assert np.abs(model(x) - expect).max() <= 1e-6


def test_batch_inputs_are_still_checked():
    model = cnncc.compile(ZOO["tiny_cnn"](), threads=2)
    shape = model.input_shapes[0]
    with pytest.raises(InputError, match="dtype"):
        model(np.ones((4,) + shape[1:], np.float64))
    with pytest.raises(InputError, match="expected shape"):
        model(np.ones((4,) + shape[1:-1] + (shape[-1] + 1,), np.float32))
    with pytest.raises(InputError, match="input"):
        model(np.ones((4,) + shape[1:], np.float32), np.ones(shape, np.float32))
    empty = model(np.ones((0,) + shape[1:], np.float32))
    assert empty.shape == (0,) + model.output_shapes[0][1:]
    strided = images(shape, 6)[::2]                  # a non-contiguous view
    assert np.array_equal(model(strided), single_runs(model, np.ascontiguousarray(strided)))


def test_inputs_of_different_batches_are_refused():
    g = Graph("pair")
    a = g.add_input("a", TensorType(DType.float32, (1, 5)))
    b = g.add_input("b", TensorType(DType.float32, (1, 5)))
    g.outputs = [g.add_node("Add", [a, b])[0]]
    model = cnncc.compile(g.verify(), threads=1)
    assert np.array_equal(model(np.ones((3, 5), np.float32), np.ones((3, 5), np.float32)),
                          np.full((3, 5), 2, np.float32))
    with pytest.raises(InputError, match="same batch size"):
        model(np.ones((3, 5), np.float32), np.ones((2, 5), np.float32))


def test_bench_batch_table(capsys):
    import json

    import onnxruntime as ort

    from cnncc.cli import main
    from cnncc.throughput import parse_batches, symbolic_batch

    assert main(["bench", "tiny_cnn", "--batch", "1,4", "--threads", "1", "--rounds", "2",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["batches"]
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["cnncc_images_per_s"] > 0 and r["ort_images_per_s"] > 0
        assert abs(r["cnncc_images_per_s"] - r["batch"] / r["cnncc_ms"] * 1e3) < 1e-6
    # onnxruntime's model is the same net at a symbolic batch.
    net = ZOO["tiny_cnn"]()
    sess = ort.InferenceSession(symbolic_batch(net.to_onnx()).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    model = cnncc.compile(net, threads=1)
    x = images(model.input_shapes[0], 4)
    assert relative_error(model(x), sess.run(None, {sess.get_inputs()[0].name: x})[0]) <= 1e-4
    for bad in ("0", "a,b", "", "4,-1"):
        with pytest.raises(InputError, match="--batch"):
            parse_batches(bad)


def test_symbolic_batch_onnx_model_runs_any_batch():
    from cnncc.throughput import symbolic_batch

    net = ZOO["tiny_cnn"]()
    model = cnncc.compile(symbolic_batch(net.to_onnx()), threads=2)
    assert model.input_shapes[0][0] == 1 and model.batch_refusal is None
    x = images(model.input_shapes[0], 3)
    assert np.array_equal(model(x), single_runs(model, x))
    assert relative_error(model(x), cnncc.compile(net, target="reference")(x)) <= 1e-4
