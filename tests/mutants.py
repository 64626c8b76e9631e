"""Mutation fuzzing of ONNX models, each batch of mutants in a child process.

A mutant is a valid model with bytes flipped/truncated/duplicated, or with one structural field
changed (an attribute, a dim, an input name, an op type, a data type, an initializer's payload).
The child imports, compiles and runs each one and records the outcome; only a clean result or a
cnncc CompileError / InputError is acceptable. A child that dies (signal, abort) or stops
answering pins the crash on the mutant it was working on, and the run goes on with a new child.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import resource
import tempfile
import traceback
from dataclasses import dataclass

import numpy as np
import onnx

ACCEPTED = ("ok", "CompileError", "InputError")
MEMORY_LIMIT = 3 << 30     # a child allocating more than this is a bug (unbounded allocation)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:                                   # flip some bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:                                 # truncate
        b = b[: rng.randrange(len(b))]
    elif kind == 2:                                 # duplicate a slice
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 64))
        b[i:i] = b[i:j]
    else:                                           # plant a large varint (sizes, dims)
        i = rng.randrange(len(b))
        b[i:i] = bytes([0xFF] * rng.randint(1, 9) + [0x7F])
    return bytes(b)


_NASTY_INTS = [0, -1, -7, 1, 2, 3, 1 << 31, -(1 << 31), (1 << 62), 1 << 20, 99]


def _mutate_structure(model: onnx.ModelProto, rng: random.Random) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    kind = rng.randrange(9)
    node = g.node[rng.randrange(len(g.node))] if len(g.node) else None
    if kind == 0 and node is not None and node.attribute:
        a = node.attribute[rng.randrange(len(node.attribute))]
        if a.ints:
            a.ints[rng.randrange(len(a.ints))] = rng.choice(_NASTY_INTS)
        elif a.type == onnx.AttributeProto.INT:
            a.i = rng.choice(_NASTY_INTS)
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30])
        else:
            a.type = rng.choice([1, 2, 3, 6, 7])
    elif kind == 1 and node is not None and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(["", "nope", g.node[0].output[0]])
    elif kind == 2 and node is not None:
        node.op_type = rng.choice(["Conv", "Relu", "Frobnicate", "MaxPool", "Gemm", "Add"])
    elif kind == 3 and g.input:
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            if rng.random() < 0.5:
                d.dim_value = rng.choice(_NASTY_INTS[:6] + [1 << 40])
            else:
                d.dim_param = "batch"
    elif kind == 4 and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        if rng.random() < 0.5 and t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice(_NASTY_INTS)
        else:
            t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)]
    elif kind == 5 and g.initializer:
        g.initializer[rng.randrange(len(g.initializer))].data_type = rng.choice([0, 2, 7, 8, 16, 99])
    elif kind == 6 and node is not None:
        node.output[0] = rng.choice([g.input[0].name, node.input[0] if node.input else "x", ""])
    elif kind == 7 and node is not None:
        g.node.append(node)                            # duplicate node (and names)
    else:
        del m.opset_import[:]
        m.opset_import.add(domain="", version=rng.choice([1, 5, 6, 9, 12, 30, 1000]))
    try:
        return m.SerializeToString()
    except Exception:   # noqa: BLE001 - an unserializable mutant is just skipped as bytes
        return model.SerializeToString()


def make_mutants(models: list[onnx.ModelProto], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        model = models[i % len(models)]
        if rng.random() < 0.5:
            out.append(_mutate_bytes(model.SerializeToString(), rng))
        else:
            out.append(_mutate_structure(model, rng))
    return out


def _classify(data: bytes, targets: tuple[str, ...]) -> str:
    import cnncc

    source = _proto(data)
    try:
        for target in targets:
            model = cnncc.compile(source, target=target)
            rng = np.random.default_rng(0)
            args = [rng.standard_normal(s).astype(d) if np.dtype(d).kind == "f"
                    else np.zeros(s, d) for s, d in zip(model.input_shapes, model.input_dtypes)]
            model(*args)
        return "ok"
    except cnncc.CompileError:
        return "CompileError"
    except cnncc.InputError:
        return "InputError"
    except BaseException as e:  # noqa: BLE001 - the point is to record anything else
        return f"{type(e).__name__}: {e}"[:300] + "\n" + traceback.format_exc()[-1500:]
    finally:
        if isinstance(source, str):
            os.unlink(source)


def _proto(data: bytes):
    """Hand the raw bytes to the importer as a ModelProto it must validate itself, or, when even
    protobuf cannot parse them, as the bytes themselves (the importer's own parse path)."""
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except Exception:   # noqa: BLE001 - undecodable: let cnncc's loader report it
        return _write_tmp(data)
    return m


def _write_tmp(data: bytes) -> str:

    fd, path = tempfile.mkstemp(suffix=".onnx")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _worker(conn, targets: tuple[str, ...]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    while True:
        item = conn.recv()
        if item is None:
            return
        idx, data = item
        conn.send((idx, _classify(data, targets)))


@dataclass
class FuzzResult:
    outcomes: dict[str, int]
    failures: list[tuple[int, str]]


def run_mutants(mutants: list[bytes], targets: tuple[str, ...] = ("reference",),
                timeout: float = 30.0) -> FuzzResult:
    """Classify every mutant in child processes; crashes and hangs become failures."""
    ctx = mp.get_context("spawn")
    outcomes: dict[str, int] = {}
    failures: list[tuple[int, str]] = []
    i = 0
    while i < len(mutants):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, targets), daemon=True)
        proc.start()
        try:
            while i < len(mutants):
                parent.send((i, mutants[i]))
                if not parent.poll(timeout):
                    failures.append((i, f"hang (> {timeout:g} s)"))
                    outcomes["hang"] = outcomes.get("hang", 0) + 1
                    i += 1
                    break
                try:
                    _, verdict = parent.recv()
                except EOFError:
                    failures.append((i, f"child died (exit code {proc.exitcode})"))
                    outcomes["crash"] = outcomes.get("crash", 0) + 1
                    i += 1
                    break
                key = verdict.split(":")[0].split("\n")[0]
                outcomes[key if key in ACCEPTED else "other"] = outcomes.get(
                    key if key in ACCEPTED else "other", 0) + 1
                if key not in ACCEPTED:
                    failures.append((i, verdict))
                i += 1
            else:
                parent.send(None)
        finally:
            proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return FuzzResult(outcomes, failures)


def summary(result: FuzzResult) -> str:
    return json.dumps(result.outcomes, sort_keys=True)
