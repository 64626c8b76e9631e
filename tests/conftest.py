"""Shared pytest hooks: test modules may print counts in the terminal summary.

A test module that defines ``TERMINAL_SUMMARY`` (a function returning lines) gets those lines
printed at the end of the run, e.g. the ONNX node-test counts and exclusions. Under pytest-xdist
(`-n 2`, the README's command) the controller imports the modules listed in SUMMARY_MODULES
itself: the workers that ran them print nothing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


SUMMARY_MODULES = ("test_onnx_node",)

# The README's command runs two test processes on (typically) two cores, each calling models
# with threads=2: more threads than cores. cnncc's default lets idle OpenMP workers spin ~50 us
# (fast on a dedicated machine), which here would take turns with the other process's threads;
# the tests check numbers, not speed, so their workers sleep at once. tests/test_target.py
# checks the default itself, in child processes without this setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The same for numpy's OpenBLAS (the reference interpreter's matmuls and convs): with a thread
# per core in each of the two test processes, its threads wait for each other by spinning, and
# the oracle's many small float64 products took 10-100x longer (a [1,16,16,96] @ [96,384]
# MatMul 0.47 s instead of 5 ms on the loaded machine). Read when numpy is first imported,
# which is after this file (and the xdist workers inherit it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Kernels are compiled in this process, not by forked workers (one per core by default): two
# test processes already keep both cores busy, and forking a large test process for every
# compile cost ~20% more CPU in compile-bound test files (tests/test_llvm_ops_core.py: 22.1 ->
# 17.4 CPU s), mostly in page-table copies. tests/test_cache_kernels.py sets it itself to test
# the parallel build.
os.environ.setdefault("CNNCC_COMPILE_JOBS", "1")
# No whole model is stored in the run's (throwaway) compile cache: each store linked a library
# with the C compiler and wrote its weights - for cache hits that almost never come (each test
# compiles its own models). Kernels are still cached and shared by the tests.
# tests/test_cache_models.py, tests/test_cache_kernels.py and `cnncc bench --compile` set it
# themselves to test the model cache.
os.environ.setdefault("CNNCC_CACHE_MIN_SECONDS", "inf")

# Imported after the settings above: it imports numpy, which reads OPENBLAS_NUM_THREADS.
from cnncc.testing import RUN_FOLDER_ENV  # noqa: E402


_RUN_FOLDER: list[str] = []      # the run folder this process made (removed at its end)


def pytest_configure(config):
    """The run's shared folder (cnncc.testing.made_once_per_run), made by the pytest process
    before pytest-xdist starts its workers, which inherit the variable naming it."""
    if os.environ.get(RUN_FOLDER_ENV):
        return
    folder = tempfile.mkdtemp(prefix="cnncc-test-run-")
    os.environ[RUN_FOLDER_ENV] = folder
    _RUN_FOLDER.append(folder)


def pytest_unconfigure(config):
    for folder in _RUN_FOLDER:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get(RUN_FOLDER_ENV) == folder:
            del os.environ[RUN_FOLDER_ENV]
    _RUN_FOLDER.clear()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    seen = set()
    if getattr(config.option, "numprocesses", None):
        import importlib
        here = Path(__file__).resolve().parent
        for name in SUMMARY_MODULES:
            path = here / f"{name}.py"
            targets = [Path(str(a).split("::")[0]).resolve() for a in config.args] or [here]
            if any(t == path or t in path.parents for t in targets):
                importlib.import_module(name)
    for module in list(sys.modules.values()):
        summary = getattr(module, "TERMINAL_SUMMARY", None)
        name = getattr(module, "__name__", "")
        if callable(summary) and "test_" in name and summary not in seen:
            seen.add(summary)
            terminalreporter.write_sep("-", f"summary from {name}")
            for line in summary():
                terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)      # after pytest-xdist's own hook (it names the groups)
def pytest_collection_modifyitems(config, items):
    """Tests marked ``xdist_group`` run first, on the worker their group's other tests run on.

    Under the README's command (--dist loadgroup) a group is one unit of work for one worker
    (the cuda-emu node tests share the programs built for them, the ray tests a Ray runtime,
    the tune tests a cache, a zoo net's targets its onnxruntime result). pytest-xdist 3.8 marks
    an item's group by appending "@group" to ``item._nodeid``, which pytest 9 no longer reads
    (the node id lives in ``item._id``): every group was silently spread over both workers.
    The suffix is added here when xdist's did not take. Groups are handed out in collection
    order like single tests; collected last (as test_zoo's are), the longest units left one
    worker running alone at the end, so they go first (a stable sort: the order within groups
    and among the other tests is kept)."""
    if getattr(config.option, "loadgroup", False):     # set in xdist workers
        for item in items:
            names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                            for m in item.iter_markers("xdist_group")})
            node_id = getattr(item, "_id", None)
            if names and "@" not in item.nodeid and hasattr(node_id, "parse"):
                item._id = type(node_id).parse(f"{item.nodeid}@{'_'.join(names)}")
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="differential fuzzing with 5000 random graphs (default: 150; "
                          "CNNCC_FUZZ_EXAMPLES=N sets any count)")


def pytest_generate_tests(metafunc):
    if "fuzz_examples" in metafunc.fixturenames:
        n = 5000 if metafunc.config.getoption("--fuzz-long") else 150
        n = int(os.environ.get("CNNCC_FUZZ_EXAMPLES", n))     # explicit count wins
        metafunc.parametrize("fuzz_examples", [n], ids=[f"{n}-graphs"])


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) uses a compile cache that starts empty with
    the run, never the user's: results do not depend on what earlier runs left there, and the
    suite writes nothing to ~/.cache. The xdist workers of one run share it (the caches are
    safe for concurrent processes), so a kernel one worker compiled is not compiled again by
    the other. Tests that count cache hits use private folders; tests of the default location
    clear CNNCC_CACHE_DIR themselves (monkeypatch)."""
    old = os.environ.get("CNNCC_CACHE_DIR")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each worker's base temp folder is popen-gwN inside the run's own folder.
        shared = tmp_path_factory.getbasetemp().parent / "cnncc-cache"
        shared.mkdir(exist_ok=True)
        os.environ["CNNCC_CACHE_DIR"] = str(shared)
    else:
        os.environ["CNNCC_CACHE_DIR"] = str(tmp_path_factory.mktemp("cnncc-cache"))
    yield
    if old is None:
        os.environ.pop("CNNCC_CACHE_DIR", None)
    else:
        os.environ["CNNCC_CACHE_DIR"] = old


SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A test's own empty compile cache (and tuning logs): CNNCC_CACHE_DIR in its tmp_path."""
    monkeypatch.setenv("CNNCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNCC_CACHE", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory) -> Path:
    """../shared/models with their weights filled in (fill_weights.py), in a temp folder."""
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"{SHARED_MODELS} does not exist (the shared model folder beside the "
                    "repository is optional; a fresh clone does not have it)")
    out = tmp_path_factory.mktemp("shared_models")
    subprocess.run([sys.executable, str(SHARED_MODELS / "fill_weights.py"), str(SHARED_MODELS),
                    str(out)], check=True, capture_output=True)
    return out
