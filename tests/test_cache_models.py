"""Compile cache: JIT code is shared in-process by content hash; whole compiled models (library +
json) are reused by a new process; damaged entries are rebuilt; the key follows the options;
CNNCC_CACHE=0 turns it off; the size cap evicts the oldest entries."""
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import cnncc
from cnncc import cache
from cnncc.compile_time import format_stages
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


X = np.random.default_rng(0).standard_normal((1, 3, 9, 9)).astype(np.float32)

SCRIPT = """
import sys, time, numpy as np, cnncc
sys.path.insert(0, {tests!r})
from test_cache_models import tiny, X
t = time.perf_counter()
m = cnncc.compile(tiny(7), target="llvm", threads=1)
t = time.perf_counter() - t
np.save({out!r} + m.cache_status + ".npy", m(X))
print(m.cache_status, t)
"""


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    """A private cache where every compiled model is stored (no minimum compile time)."""
    monkeypatch.setenv("CNNCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNCC_CACHE_MIN_SECONDS", "0")
    monkeypatch.delenv("CNNCC_CACHE", raising=False)
    return tmp_path / "cache"


def run_script(tmp_path, env):
    code = SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path / "y_"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    status, seconds = proc.stdout.split()[-2:]
    return status, float(seconds)


def test_same_code_shared_in_process_weights_differ(cdir):
    a = cnncc.compile(tiny(1), target="llvm", threads=1, cache=False)
    b = cnncc.compile(tiny(2), target="llvm", threads=1, cache=False)   # same code, new weights
    assert b.entry_name == a.entry_name and b.cache_status in ("memory", "disk")
    assert not np.allclose(a(X), b(X))
    np.testing.assert_allclose(b(X), cnncc.compile(tiny(2), target="reference")(X), rtol=1e-5,
                               atol=1e-6)


def test_object_code_reused_by_a_new_process(cdir, tmp_path):
    env = dict(os.environ, CNNCC_CACHE_MIN_SECONDS="inf")     # JIT objects only, no libraries
    assert run_script(tmp_path, env)[0] == "compiled"
    objects = os.listdir(cdir / "obj")
    assert any(f.endswith(".o") for f in objects) and not (cdir / "lib").exists()
    assert run_script(tmp_path, env)[0] == "disk"
    # A damaged object file is removed and compiled again, never handed to the JIT.
    path = cdir / "obj" / objects[0]
    path.write_bytes(path.read_bytes()[:100])
    assert run_script(tmp_path, env)[0] == "compiled"
    assert run_script(tmp_path, env)[0] == "disk"


def test_second_compile_in_a_new_process_loads_the_library(cdir, tmp_path):
    env = dict(os.environ)
    cold, cold_s = run_script(tmp_path, env)
    warm, warm_s = run_script(tmp_path, env)
    assert (cold, warm) == ("compiled", "library")
    assert warm_s < cold_s
    np.testing.assert_array_equal(np.load(tmp_path / "y_library.npy"),
                                  np.load(tmp_path / "y_compiled.npy"))
    (entry,) = os.listdir(cdir / "lib")
    assert sorted(os.listdir(cdir / "lib" / entry)) == ["cnncc_model.h", "cnncc_model.json",
                                                         "cnncc_model.so",
                                                         "cnncc_model.weights"]
    off, _ = run_script(tmp_path, dict(env, CNNCC_CACHE="0"))
    assert off == "compiled"


def test_cache_hit_in_process_has_the_jit_internals(cdir):
    first = cnncc.compile(tiny(3), target="llvm", threads=1)
    again = cnncc.compile(tiny(3), target="llvm", threads=1)
    assert first.cache_status != "library" and again.cache_status == "library"
    np.testing.assert_array_equal(again(X), first(X))
    # Per-kernel internals (bench --per-layer) come from compiling again on demand.
    assert len(again.kernels) == len(first.kernels) and again.program.arena_bytes >= 0
    assert [k for k, _ in again.profile([X], repeat=1)] == [k.name for k in first.kernels]


def test_store_runs_in_the_background_and_is_waited_for(cdir):
    m = cnncc.compile(tiny(5), target="llvm", threads=1)
    assert m.compile_stages["cache_store_background"] is True
    np.testing.assert_allclose(m(X), cnncc.compile(tiny(5), target="reference")(X), rtol=1e-5,
                               atol=1e-6)
    cache.wait_for_stores()
    assert m.compile_stages["cache_store"] > 0 and len(list((cdir / "lib").iterdir())) == 1
    assert "cache store" in format_stages(m.compile_stages)


def _corrupt(entry, kind):
    so, meta_path = entry / "cnncc_model.so", entry / "cnncc_model.json"
    meta = json.loads(meta_path.read_text())
    if kind == "truncated library":
        so.write_bytes(so.read_bytes()[:1000])
    elif kind == "wrong checksum":
        meta["library_sha256"] = "0" * 64
        meta_path.write_text(json.dumps(meta))
    elif kind == "library that does not load":
        so.write_bytes(b"\x7fELF not really")
        meta["library_sha256"] = hashlib.sha256(b"\x7fELF not really").hexdigest()
        meta_path.write_text(json.dumps(meta))
    elif kind == "json that does not parse":
        meta_path.write_text(meta_path.read_text()[:50])
    elif kind == "json of another key":
        meta["cache_key"] = "f" * 32
        meta_path.write_text(json.dumps(meta))
    elif kind == "json of another signature":
        meta["inputs"][0]["shape"] = [1, 3, 9, 10]
        meta_path.write_text(json.dumps(meta))
    elif kind == "json of another format":
        meta_path.write_text(json.dumps(meta).replace('"format"', '"formatx"'))
    elif kind == "missing json":
        meta_path.unlink()
    elif kind == "altered weights":
        weights = entry / "cnncc_model.weights"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 1
        weights.write_bytes(bytes(data))
    elif kind == "truncated weights":
        weights = entry / "cnncc_model.weights"
        weights.write_bytes(weights.read_bytes()[:-4])
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated library", "wrong checksum",
                                  "library that does not load", "json that does not parse",
                                  "json of another key", "json of another signature",
                                  "json of another format",
                                  "missing json", "altered weights", "truncated weights"])
def test_corrupt_entries_are_rebuilt(cdir, kind):
    g = tiny(11)
    ref = cnncc.compile(g, target="reference")(X)
    assert cnncc.compile(g, target="llvm", threads=1).cache_status != "library"
    cache.wait_for_stores()
    (entry,) = (cdir / "lib").iterdir()
    _corrupt(entry, kind)
    rebuilt = cnncc.compile(g, target="llvm", threads=1)
    assert rebuilt.cache_status != "library"     # JIT code ("memory": this process has it)
    np.testing.assert_allclose(rebuilt(X), ref, rtol=1e-5, atol=1e-6)
    healed = cnncc.compile(g, target="llvm", threads=1)
    assert healed.cache_status == "library"
    np.testing.assert_array_equal(healed(X), rebuilt(X))


def test_key_follows_model_options_and_machine(cdir):
    g = tiny(1)
    base = dict(opt_level=3, threads=1, skip_passes=[])
    key = cache.model_key(g, "llvm", base)
    assert cache.model_key(tiny(1), "llvm", base) == key           # deterministic
    assert cache.model_key(tiny(2), "llvm", base) != key           # other weights
    for change in (dict(opt_level=0), dict(threads=2), dict(skip_passes=["fuse_conv_bn"])):
        assert cache.model_key(g, "llvm", dict(base, **change)) != key, change
    assert cache.model_key(g, "reference", base) != key
    g2 = tiny(1)
    g2.nodes[0].attrs["pads"] = [0, 0, 0, 0]
    assert cache.model_key(g2, "llvm", base) != key                # other attributes
    a = cnncc.compile(tiny(1), target="llvm", threads=1)
    b = cnncc.compile(tiny(1), target="llvm", threads=1, opt_level=0)
    c = cnncc.compile(tiny(1), target="llvm", threads=2)
    assert "library" not in [m.cache_status for m in (a, b, c)]
    cache.wait_for_stores()
    assert len(list((cdir / "lib").iterdir())) == 3


def test_cache_off(cdir, monkeypatch):
    monkeypatch.setenv("CNNCC_CACHE", "0")
    assert cache.cache_root() is None
    for _ in range(2):
        m = cnncc.compile(tiny(4), target="llvm", threads=1)
        assert m.cache_status != "library"
    assert not cdir.exists()


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNCC_CACHE_DIR", raising=False)
    monkeypatch.delenv("CNNCC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == str(tmp_path / "xdg" / "cnncc")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == str(tmp_path / "home" / ".cache" / "cnncc")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == str(tmp_path / "home" / ".cache" / "cnncc")
    monkeypatch.setenv("CNNCC_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_root() == str(tmp_path / "mine")


def test_size_cap_evicts_least_recently_used(tmp_path):
    root = tmp_path
    now = time.time()
    for i in range(5):
        entry = root / "lib" / f"e{i}"
        entry.mkdir(parents=True)
        (entry / "cnncc_model.so").write_bytes(b"x" * 1000)
        os.utime(entry, (now - 100 + i, now - 100 + i))
    (root / "obj").mkdir()
    (root / "obj" / "old.o").write_bytes(b"y" * 1000)
    os.utime(root / "obj" / "old.o", (now - 1000, now - 1000))
    stale = root / "lib" / ".tmp-abc"
    stale.mkdir()
    os.utime(stale, (now - 7200, now - 7200))
    fresh = root / "lib" / ".tmp-new"                   # a store in progress: left alone
    fresh.mkdir()
    removed = cache.evict(str(root), 3000, keep=str(root / "lib" / "e0"))
    left = sorted(os.listdir(root / "lib"))
    assert left == [".tmp-new", "e0", "e3", "e4"], left
    assert not (root / "obj" / "old.o").exists() and str(stale) in removed
