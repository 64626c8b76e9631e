"""The `cnncc` command line: each command on a small model; errors are one line, exit non-zero."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cnncc.cli import main


@pytest.fixture
def tiny_onnx(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3],
                           np.random.default_rng(0).standard_normal(108).astype(np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], "relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["y"], "gap")]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


def test_info(tiny_onnx, capsys):
    assert main(["info", str(tiny_onnx)]) == 0
    out = capsys.readouterr().out
    assert "input  x: f32[1x3x8x8]" in out and "Conv" in out
    # 2 * (8*8*4 outputs) * (3*3*3 products) = 13824 FLOP for the conv.
    assert "0.01" in out and "parameters: 108" in out


def test_run_with_files(tiny_onnx, tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(tiny_onnx), "--target", "reference", "--input",
                 str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    import onnxruntime as ort
    ref = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_errors_are_one_line(tiny_onnx, tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.onnx" in err and "Traceback" not in err
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 9, 9), np.float32))
    assert main(["run", str(tiny_onnx), "--target", "reference",
                 "--input", str(tmp_path / "bad.npy")]) == 1
    err = capsys.readouterr().err
    assert "expected shape [1, 3, 8, 8], got [1, 3, 9, 9]" in err and err.count("\n") == 1
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x01garbage\xff\xff")
    assert main(["info", str(tmp_path / "garbage.onnx")]) == 1
    assert "CompileError" in capsys.readouterr().err


def test_verify_and_show(tiny_onnx, tmp_path, capsys):
    assert main(["verify", str(tiny_onnx)]) == 0
    assert "all steps agree" in capsys.readouterr().out
    assert main(["show", str(tiny_onnx), "-o", str(tmp_path / "g.dot")]) == 0
    assert '"conv" -> "relu"' in (tmp_path / "g.dot").read_text()


def test_console_script_entry_point(tiny_onnx):
    proc = subprocess.run([sys.executable, "-m", "cnncc", "info", str(tiny_onnx)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "GlobalAveragePool" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "cnncc", "info", "zoo:no_such_net"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no built-in net" in proc.stderr


def _ort(path, x):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_compile_then_run_the_library(tiny_onnx, tmp_path, capsys):
    out_dir = tmp_path / "lib"
    assert main(["compile", str(tiny_onnx), "-o", str(out_dir), "--emit", "llvm"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["tiny.h", "tiny.json", "tiny.ll",
                                                         "tiny.so"]
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ref = _ort(tiny_onnx, x)
    for spec in (out_dir, out_dir / "tiny.so"):
        assert main(["run", str(spec), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 0
        assert "loaded llvm" in capsys.readouterr().out
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=1e-4, atol=1e-5)
    # `run` on a model file compiles it for llvm by default.
    assert main(["run", str(tiny_onnx), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "z.npy")]) == 0
    assert "for llvm" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), ref, rtol=1e-4, atol=1e-5)


def test_compile_names_and_errors(tiny_onnx, tmp_path, capsys):
    assert main(["compile", str(tiny_onnx), "-o", str(tmp_path), "--name", "my_net",
                 "--threads", "2"]) == 0
    assert (tmp_path / "my_net.so").exists() and "my_net_run" in (tmp_path / "my_net.h").read_text()
    capsys.readouterr()
    assert main(["compile", str(tiny_onnx), "-o", str(tmp_path), "--name", "my-net"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a C identifier" in err
    assert main(["run", str(tmp_path / "my_net.so"), "--target", "reference"]) == 1
    assert "do not apply to a compiled library" in capsys.readouterr().err
    (tmp_path / "my_net.json").write_text("{")
    assert main(["run", str(tmp_path / "my_net.so")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read as json" in err
    assert main(["compile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path)]) == 1
    assert "missing.onnx" in capsys.readouterr().err
