"""Shared pytest hooks: test modules may print counts in the terminal summary.

A test module that defines ``TERMINAL_SUMMARY`` (a function returning lines) gets those lines
printed at the end of the run, e.g. the ONNX node-test counts and exclusions.
"""
from __future__ import annotations

import os
import sys

import pytest


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    seen = set()
    for module in list(sys.modules.values()):
        summary = getattr(module, "TERMINAL_SUMMARY", None)
        name = getattr(module, "__name__", "")
        if callable(summary) and "test_" in name and summary not in seen:
            seen.add(summary)
            terminalreporter.write_sep("-", f"summary from {name}")
            for line in summary():
                terminalreporter.write_line(line)


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="differential fuzzing with 5000 random graphs (default: 300; "
                          "CNNCC_FUZZ_EXAMPLES=N sets any count)")


def pytest_generate_tests(metafunc):
    if "fuzz_examples" in metafunc.fixturenames:
        n = 5000 if metafunc.config.getoption("--fuzz-long") else 300
        n = int(os.environ.get("CNNCC_FUZZ_EXAMPLES", n))     # explicit count wins
        metafunc.parametrize("fuzz_examples", [n], ids=[f"{n}-graphs"])


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) uses a fresh compile cache, never the user's:
    results do not depend on what earlier runs left there, and the suite writes nothing to
    ~/.cache. Tests of the default location clear CNNCC_CACHE_DIR themselves (monkeypatch)."""
    old = os.environ.get("CNNCC_CACHE_DIR")
    os.environ["CNNCC_CACHE_DIR"] = str(tmp_path_factory.mktemp("cnncc-cache"))
    yield
    if old is None:
        os.environ.pop("CNNCC_CACHE_DIR", None)
    else:
        os.environ["CNNCC_CACHE_DIR"] = old
