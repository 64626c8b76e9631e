"""The compile cache: whole compiled models (an exported library + its json) kept on disk.

A second ``cnncc.compile`` of the same model with the same options on the same machine loads the
library compiled the first time: no passes, no lowering, no LLVM. Entries live in

    $CNNCC_CACHE_DIR, else $XDG_CACHE_HOME/cnncc, else ~/.cache/cnncc   (CNNCC_CACHE=0: off)
        lib/<key>/cnncc_model.so, .json, .weights     whole models (this module)
        obj/<key>.o                                   JIT object code (llvm/jit.py)
        kernels/<symbol>.<kind>.o                     one kernel's code (llvm/objects.py)

The key hashes the graph (structure, types and every parameter's bytes), the options (target,
opt_level, threads, skip_passes, ...), the CPU/target machine, the cnncc version and the content
of cnncc's own source files (a changed compiler never reuses old code). An entry is built in a
temporary folder and renamed into place (atomic: a concurrent compile sees all of it or none);
the json carries the key and the sha256 of the library and of its weights (a file beside it,
not linked in: aot.py), and an entry that fails any check (json unreadable or not matching,
checksums, dlopen) is removed and compiled again. Models that
compiled in less than CNNCC_CACHE_MIN_SECONDS (default 0.5 s) are not stored: they compile
about as fast as a library loads ("inf": no model is stored). Total size is capped
(CNNCC_CACHE_MAX_BYTES, default 2 GiB): the least recently used entries go first.

``cnncc.compile`` stores a model in a background thread (``store_in_background``) and returns
it at once: the store links the library and writes the weights (ResNet-50: 100 MB, 0.13-0.41 s
on one machine as the disk's write-back allows), which the model does not need to run. The
next compile, an export and the end of the process wait for stores still running
(``wait_for_stores``): a lookup finds every entry stored before it, and kernels are compiled
by forked workers only while no other thread runs (llvm/objects.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

import numpy as np

from .backends.cache_folders import cache_root, evict
from .ir import CompileError, Graph

ENTRY_NAME = "cnncc_model"
DEFAULT_MAX_BYTES = 2 << 30
_SOURCE_DIGEST: list[str] = []
_STORING: list[threading.Thread] = []         # stores in the background, not yet waited for
_STORING_LOCK = threading.Lock()


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def min_seconds() -> float:
    return _float_env("CNNCC_CACHE_MIN_SECONDS", 0.5)


def max_bytes() -> int:
    return int(_float_env("CNNCC_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))


def source_digest() -> str:
    """sha256 of cnncc's Python sources (computed once per process)."""
    if not _SOURCE_DIGEST:
        import cnncc
        import cnncc.backends
        import cnncc.ir

        h = hashlib.sha256()
        for pkg in (cnncc, cnncc.ir, cnncc.backends):
            root = os.path.dirname(pkg.__file__)
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if name.endswith((".py", ".h")):
                        path = os.path.join(folder, name)
                        h.update(os.path.relpath(path, root).encode() + b"\0")
                        with open(path, "rb") as f:
                            h.update(f.read())
        _SOURCE_DIGEST.append(h.hexdigest())
    return _SOURCE_DIGEST[0]


def model_key(graph: Graph, target: str, options: dict[str, Any]) -> str:
    """The cache key of ``graph`` compiled for ``target`` with ``options`` on this machine."""
    from . import __version__
    from .backends.llvm import jit

    h = hashlib.sha256()

    def add(*parts: Any) -> None:
        for p in parts:
            h.update(p if isinstance(p, (bytes, np.ndarray)) else str(p).encode())
            h.update(b"\0")

    info = jit.target_info()
    add("cnncc-cache-1", __version__, source_digest(), jit.llvmlite_version(), target,
        info["cpu"], info["features"], info["triple"], info["codegen"])
    add(*(f"{k}={options[k]!r}" for k in sorted(options)))
    add(str(graph), graph.inputs, graph.outputs)
    for node in graph.nodes:           # exact attribute values (the printer may round)
        add(node.op, node.inputs, node.outputs)
        for name in sorted(node.attrs):
            add(name, _attr_bytes(node.attrs[name]))
    for name in sorted(graph.params):
        arr = np.ascontiguousarray(graph.params[name])
        add(name, arr.dtype.str, arr.shape, arr.reshape(-1).view(np.uint8))   # no copy
    return h.hexdigest()[:32]


def _attr_bytes(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return f"{value.dtype.str}{value.shape}".encode() + value.tobytes()
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_attr_bytes(v) for v in value) + b"]"
    if isinstance(value, float):
        return value.hex().encode()
    if isinstance(value, Graph):        # a subgraph: its text and its constants
        h = hashlib.sha256(str(value).encode())
        for name in sorted(value.params):
            h.update(name.encode() + _attr_bytes(np.ascontiguousarray(value.params[name])))
        return h.digest()
    return f"{type(value).__name__}:{value}".encode()


def _entry(root: str, key: str) -> str:
    return os.path.join(root, "lib", key)


def lookup(key: str, graph: Graph, rebuild: Callable[[], Any] | None = None):
    """The cached model of ``key`` (a LibraryModel, ``cache_status`` "library"), or None.

    The entry's json must name ``key`` and ``graph``'s signature; a damaged or mismatched entry
    is removed (and None returned, so the caller compiles again)."""
    from .backends.llvm.aot import io_description
    from .backends.llvm.library import load_library
    from .runtime import signature

    root = cache_root()
    if root is None:
        return None
    entry = _entry(root, key)
    if not os.path.isdir(entry):
        return None
    try:
        ins, outs = signature(graph)
        expect = {"cache_key": key, "inputs": [io_description(n, t) for n, t in ins],
                  "outputs": [io_description(n, t) for n, t in outs]}
        model = load_library(os.path.join(entry, ENTRY_NAME + ".json"), expect=expect,
                             rebuild=rebuild)
    except CompileError:
        shutil.rmtree(entry, ignore_errors=True)
        return None
    try:
        os.utime(entry)                # least recently used goes first
    except OSError:
        pass
    return model


def store(key: str, model: Any) -> str | None:
    """Save the compiled ``model`` (an LLVMModel) under ``key``; the entry's folder, or None when
    it could not be written (no C compiler, read-only or full disk: only compile time is lost)."""
    from .backends.llvm.aot import export_library

    root = cache_root()
    if root is None:
        return None
    entry = _entry(root, key)
    tmp = None
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(entry))
        export_library(model.generated, tmp, ENTRY_NAME, extra={"cache_key": key},
                       batch_refusal=model.batch_refusal, weights_file=True)
        try:
            os.rename(tmp, entry)
            tmp = None
        except OSError:
            if not os.path.isdir(entry):
                raise
            # Another process stored the same entry first: keep that one.
    except (OSError, CompileError):
        return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    evict(root, max_bytes(), keep=entry)
    return entry


def store_in_background(key: str, model: Any) -> None:
    """``store(key, model)`` in a thread; when done, its seconds go into
    ``model.compile_stages["cache_store"]``. The thread is not a daemon: the process waits for
    it at exit, so the entry is written whatever the caller does next."""
    def run() -> None:
        t0 = time.perf_counter()
        store(key, model)
        model.compile_stages["cache_store"] = time.perf_counter() - t0

    model.compile_stages["cache_store_background"] = True
    thread = threading.Thread(target=run, name="cnncc-cache-store")
    with _STORING_LOCK:
        _STORING.append(thread)
        thread.start()


def wait_for_stores() -> None:
    """Return once every store started by ``store_in_background`` has finished."""
    with _STORING_LOCK:
        pending = list(_STORING)
        _STORING.clear()
    for thread in pending:
        if thread is not threading.current_thread():
            thread.join()
