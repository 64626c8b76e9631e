"""Helpers for checking compiled results against the reference interpreter and onnxruntime."""
from __future__ import annotations

import fcntl
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .ir import Graph, run_graph


def target_params(native_only: bool = False) -> list:
    """pytest params of every target; one that cannot run on this machine (target cuda without
    a GPU) is a skip that says why."""
    import pytest

    from .backends import BACKENDS

    params = []
    for name, spec in BACKENDS.items():
        if native_only and not spec.native:
            continue
        why = spec.missing()
        params.append(pytest.param(name, marks=pytest.mark.skip(reason=why)) if why else name)
    return params


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: standard normal floats, small non-negative ints."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.types[name]
        if t.dtype.is_float:
            feeds[name] = rng.standard_normal(t.shape).astype(t.dtype.np)
        elif t.dtype.value == "bool":
            feeds[name] = rng.integers(0, 2, t.shape).astype(bool)
        else:
            feeds[name] = rng.integers(0, 5, t.shape).astype(t.dtype.np)
    return feeds


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (the figure the project's tolerances are stated in)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape} != reference shape {ref.shape}")
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    diff = np.max(np.abs(got - ref)) if ref.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def assert_graphs_equivalent(before: Graph, after: Graph, seed: int = 0,
                             max_rel_error: float = 1e-5) -> float:
    """Run both graphs on the same seeded inputs; assert every output agrees. Returns the error."""
    feeds = random_inputs(before, seed)
    ref = run_graph(before, feeds)
    got = run_graph(after, feeds)
    assert before.outputs == after.outputs, (before.outputs, after.outputs)
    worst = 0.0
    for name in before.outputs:
        err = relative_error(got[name], ref[name])
        assert err <= max_rel_error, f"output '{name}': relative error {err:.3g}"
        worst = max(worst, err)
    return worst


# A folder shared by the processes of one test run (tests/conftest.py makes it in the pytest
# process and names it here; pytest-xdist workers inherit the variable).
RUN_FOLDER_ENV = "CNNCC_TEST_RUN_DIR"


def made_once_per_run(name: str, make: Callable[[], Any]) -> Any:
    """``make()``, made by the first process of the test run that asks and pickled into the
    run's folder for the others (they wait for it: a lock file); ``make()`` itself when no run
    folder is set (a script). ``name`` is the file name: it must say everything the value
    depends on."""
    folder = os.environ.get(RUN_FOLDER_ENV)
    if not folder:
        return make()
    path = Path(folder) / f"{name}.pickle"
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            with open(path, "rb") as f:
                return pickle.load(f)
        value = make()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        return value
