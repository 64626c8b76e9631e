"""Loading an exported library (aot.py) back as a CompiledModel: ``cnncc.load(path)``.

The json beside the library gives the signature and the sha256 of the .so; a library whose
checksum, description or CPU requirements do not match is refused with a CompileError, never
called. The model calls ``NAME_run`` once per inference (ctypes releases the GIL, and the
library is thread-safe, so concurrent calls from several threads are fine).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import mmap
import os
import shutil
import tempfile
import threading
from typing import Any, Callable

import numpy as np

from cnncc.ir import CompileError, DType, TensorType
from cnncc.runtime import CompiledModel
from .aot import FORMAT, check_name, sha256_file

# dlopen returns the library already loaded under a path even when the file was replaced since:
# a changed file at a known path is loaded from a private copy instead.
_HANDLES: dict[str, tuple[str, ctypes.CDLL]] = {}
_LOCK = threading.Lock()
# Attributes of the JIT model (llvm/model.py) a library model provides by compiling it again.
_JIT_ONLY = ("profile", "program", "kernels", "ir_text", "entry_name", "generated")


class LibraryModel(CompiledModel):
    """A model running the code of an exported shared library."""

    target = "llvm"

    def __init__(self, path: str, meta: dict, fn: Callable,
                 rebuild: Callable[[], Any] | None = None, status: str = "library",
                 batch_fn: Callable | None = None):
        super().__init__(_signature(meta, "inputs"), _signature(meta, "outputs"))
        self.path = path
        self.metadata = meta
        self.threads = int(meta["threads"])
        self.cache_status = status
        self._fn = fn
        self._batch_fn = batch_fn
        refusal = meta.get("batch_refusal", "unknown")
        if refusal is not None and not isinstance(refusal, str):
            refusal = f"{os.path.basename(path)}: its json's batch_refusal is not a string"
        self.batch_refusal = refusal if batch_fn is not None else (
            "the library was exported before NAME_run_batch existed; export it again")
        self._rebuild = rebuild
        self._jit = None

    def __getattr__(self, name: str) -> Any:
        # Only reached for missing attributes: per-kernel internals come from the JIT model.
        if name in _JIT_ONLY and self.__dict__.get("_rebuild") is not None:
            if self.__dict__.get("_jit") is None:
                self._jit = self._rebuild()
            return getattr(self._jit, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def memory_report(self) -> dict[str, int] | None:
        # From the json (libraries written before it carried "memory": rebuilt, when possible).
        memory = self.metadata.get("memory")
        return dict(memory) if isinstance(memory, dict) else super().memory_report()

    def _execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outs = [np.empty(shape, dt) for shape, dt in self._output_specs]
        in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
        self._raise_for(self._fn(in_ptrs, out_ptrs))
        return outs

    def _execute_batch(self, inputs: list[np.ndarray], n: int) -> list[np.ndarray]:
        outs = [np.empty((n,) + shape[1:], dt)
                for shape, dt in zip(self.output_shapes, self.output_dtypes)]
        in_ptrs = (ctypes.c_void_p * max(1, len(inputs)))(*[a.ctypes.data for a in inputs])
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[a.ctypes.data for a in outs])
        self._raise_for(self._batch_fn(n, in_ptrs, out_ptrs))
        return outs

    def _raise_for(self, rc: int) -> None:
        if rc == 1:
            raise MemoryError(f"{os.path.basename(self.path)}: no memory for the arena "
                              f"({self.metadata['arena_bytes']} bytes per thread)")
        if rc != 0:
            raise CompileError(f"{os.path.basename(self.path)}: native code returned error {rc}")


def find_library(path: str) -> tuple[str, str]:
    """(.so path, .json path) named by ``path``: a directory holding one exported model, the .so
    or the .json."""
    path = os.fspath(path)
    if os.path.isdir(path):
        metas = sorted(glob.glob(os.path.join(glob.escape(path), "*.json")))
        if not metas:
            raise CompileError(f"{path} holds no exported model (no .json description)")
        if len(metas) > 1:
            names = ", ".join(os.path.basename(m) for m in metas)
            raise CompileError(f"{path} holds several models ({names}): name the .so to load")
        meta = metas[0]
        return os.path.splitext(meta)[0] + ".so", meta
    base, ext = os.path.splitext(path)
    if ext not in (".so", ".json"):
        raise CompileError(f"cannot load '{path}': expected a directory, a .so or a .json "
                           "written by `cnncc compile`")
    if not os.path.exists(path):
        raise CompileError(f"'{path}' does not exist")
    return base + ".so", base + ".json"


def read_metadata(meta_path: str) -> dict:
    """The parsed and checked description of an exported library."""
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CompileError(f"{meta_path} is missing (the description of the library, written "
                           "beside it by `cnncc compile`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompileError(f"{meta_path} cannot be read as json: {e}") from None
    try:
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        check_name(meta["name"])
        for key in ("library", "library_sha256"):
            if not isinstance(meta[key], str):
                raise ValueError(f"'{key}' is not a string")
        if not isinstance(meta["threads"], int) or meta["threads"] < 1:
            raise ValueError("'threads' is not a positive integer")
        for kind in ("inputs", "outputs"):
            _signature(meta, kind)
    except (KeyError, TypeError, ValueError, CompileError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise CompileError(f"{meta_path} is not a valid cnncc library description: "
                           f"{what}") from None
    return meta


def _signature(meta: dict, kind: str) -> list[tuple[str, TensorType]]:
    items = meta[kind]
    if not isinstance(items, list) or (kind == "outputs" and not items):
        raise ValueError(f"'{kind}' is not a list of tensors")
    result = []
    for item in items:
        shape = item["shape"]
        if not isinstance(item["name"], str) or not isinstance(shape, list) or not all(
                isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"bad entry in '{kind}': {item!r}")
        result.append((item["name"], TensorType(DType(item["dtype"]), tuple(shape))))
    return result


def _check_cpu(meta: dict, so_path: str) -> None:
    from . import jit

    wanted = {f[1:] for f in str(meta.get("target", {}).get("features", "")).split(",")
              if f.startswith("+")}
    have = {f[1:] for f in jit.host_features().split(",") if f.startswith("+")}
    missing = sorted(wanted - have)
    if missing:
        raise CompileError(f"{so_path} was compiled for CPU features this machine lacks "
                           f"({', '.join(missing[:8])}); compile the model here")


def _dlopen(so_path: str, digest: str) -> ctypes.CDLL:
    key = os.path.realpath(so_path)
    with _LOCK:
        known = _HANDLES.get(key)
        if known and known[0] == digest:
            return known[1]
        try:
            if known is None:
                lib = ctypes.CDLL(key)
            else:
                with tempfile.TemporaryDirectory(prefix="cnncc-load-") as tmp:
                    copy = os.path.join(tmp, os.path.basename(key))
                    shutil.copyfile(key, copy)
                    lib = ctypes.CDLL(copy)
        except OSError as e:
            raise CompileError(f"{so_path} cannot be loaded: {e}") from None
        _HANDLES[key] = (digest, lib)
        return lib


def load_library(path: str, expect: dict | None = None, rebuild: Callable | None = None,
                 status: str = "library") -> LibraryModel:
    """Load an exported model (directory, .so or .json) after checking it; ``expect``: fields the
    json must have (the cache's key)."""
    so_path, meta_path = find_library(path)
    meta = read_metadata(meta_path)
    for k, v in (expect or {}).items():
        if meta.get(k) != v:
            raise CompileError(f"{meta_path} does not match: {k} is {meta.get(k)!r}")
    if os.path.basename(so_path) != meta["library"]:
        so_path = os.path.join(os.path.dirname(meta_path), meta["library"])
    if not os.path.isfile(so_path):
        raise CompileError(f"{so_path} is missing (described by {meta_path})")
    digest = sha256_file(so_path)
    if digest != meta["library_sha256"]:
        raise CompileError(f"{so_path} is corrupt or was replaced: its sha256 does not match "
                           f"{os.path.basename(meta_path)}")
    _check_cpu(meta, so_path)
    # A library with its weights in a file beside it (the cache's: aot.py) takes them first.
    weights = _read_weights(meta, meta_path) if "weights_file" in meta else None
    sfx, wargs = ("_ext", (ctypes.c_void_p,)) if weights is not None else ("", ())
    lib = _dlopen(so_path, digest)
    try:
        raw = getattr(lib, f"{meta['name']}_run{sfx}")
    except AttributeError:
        raise CompileError(f"{so_path} has no function {meta['name']}_run{sfx}") from None
    fn = ctypes.CFUNCTYPE(ctypes.c_int, *wargs, ctypes.c_void_p, ctypes.c_void_p)(
        ctypes.cast(raw, ctypes.c_void_p).value)
    raw_batch = getattr(lib, f"{meta['name']}_run_batch{sfx}", None)
    batch_fn = None if raw_batch is None else ctypes.CFUNCTYPE(
        ctypes.c_int, *wargs, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(
        ctypes.cast(raw_batch, ctypes.c_void_p).value)
    if weights is not None:
        fn, batch_fn = _with_weights(fn, weights), _with_weights(batch_fn, weights)
    return LibraryModel(so_path, meta, fn, rebuild, status, batch_fn)


def _read_weights(meta: dict, meta_path: str) -> np.ndarray:
    """The weights file named by ``meta``, mapped read-only (page aligned, shared with the page
    cache: no copy), after checking its size and sha256."""
    desc = meta["weights_file"]
    try:
        path = os.path.join(os.path.dirname(meta_path), os.path.basename(desc["name"]))
        size, digest = int(desc["bytes"]), str(desc["sha256"])
    except (KeyError, TypeError, ValueError):
        raise CompileError(f"{meta_path}: 'weights_file' is not a valid description") from None
    try:
        with open(path, "rb") as f:
            found = os.fstat(f.fileno()).st_size
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if found else b""
    except (OSError, ValueError) as e:
        raise CompileError(f"{path} cannot be read: {e}") from None
    if found != size or hashlib.sha256(view).hexdigest() != digest:
        raise CompileError(f"{path} is corrupt or was replaced: its size or sha256 does not "
                           f"match {os.path.basename(meta_path)}")
    return np.frombuffer(view, np.uint8)


def _with_weights(fn, weights: np.ndarray):
    """``fn`` (an _ext entry point) with ``weights`` bound as its first argument; keeps them
    alive."""
    if fn is None:
        return None
    ptr = weights.ctypes.data

    def call(*args):
        return fn(ptr, *args)
    call.weights = weights
    return call
