"""Compile cache: code is shared in-process by content hash and reused from disk by a new process
(the weights and arena stay per model)."""
import os
import subprocess
import sys

import numpy as np

import cnncc
from cnncc.ir import DType, Graph, TensorType


def tiny(seed):
    rng = np.random.default_rng(seed)
    g = Graph("tiny")
    x = g.add_input("x", TensorType(DType.float32, (1, 3, 9, 9)))
    w = g.add_param("w", rng.standard_normal((5, 3, 3, 3)).astype(np.float32))
    y, = g.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1]})
    y, = g.add_node("Relu", [y])
    g.outputs = [y]
    return g


SCRIPT = """
import sys, numpy as np, cnncc
sys.path.insert(0, {tests!r})
from test_llvm_cache import tiny
m = cnncc.compile(tiny(7), target="llvm", threads=1)
print(m.cache_status)
"""


def test_same_code_shared_in_process_weights_differ(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCC_CACHE_DIR", str(tmp_path))
    x = np.random.default_rng(0).standard_normal((1, 3, 9, 9)).astype(np.float32)
    a = cnncc.compile(tiny(1), target="llvm", threads=1)
    b = cnncc.compile(tiny(2), target="llvm", threads=1)     # same code, other weights
    assert b.entry_name == a.entry_name and b.cache_status in ("memory", "disk")
    assert not np.allclose(a(x), b(x))
    np.testing.assert_allclose(b(x), cnncc.compile(tiny(2), target="reference")(x), rtol=1e-5,
                               atol=1e-6)


def test_disk_cache_hit_in_a_new_process(tmp_path):
    env = dict(os.environ, CNNCC_CACHE_DIR=str(tmp_path))
    code = SCRIPT.format(tests=os.path.dirname(__file__))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[-1] == "compiled"
    assert any(f.endswith(".o") for f in os.listdir(tmp_path))
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[-1] == "disk"
    off = subprocess.run([sys.executable, "-c", code], env=dict(env, CNNCC_CACHE="0"),
                         capture_output=True, text=True)
    assert off.stdout.split()[-1] == "compiled"
