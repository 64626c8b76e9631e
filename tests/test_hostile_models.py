"""Mutation fuzzing: thousands of corrupted models, each run in a child process; 0 crashes allowed.

Every mutant must either work or be refused with a CompileError/InputError: no segfault, no abort,
no hang, no unbounded allocation (children run under a 3 GiB address-space limit) and no other
exception type (an IndexError or a protobuf DecodeError escaping is a bug: the user gets no
clear message).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from cnncc.backends import BACKENDS
from graphgen import cnn_models
from mutants import make_mutants, run_mutants, summary

COUNT = int(os.environ.get("CNNCC_MUTANTS", "2000"))


def seed_models():
    """A few valid models to mutate: random CNNs drawn with fixed seeds."""
    models = []

    @settings(max_examples=12, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def collect(case):
        models.append(case[0])

    from hypothesis import given
    given(cnn_models(max_layers=4))(collect)()
    return models


@pytest.mark.parametrize("targets", [("reference",)] + [
    (t,) for t, spec in BACKENDS.items() if spec.native])
def test_mutants_never_crash(targets):
    count = COUNT if targets == ("reference",) else COUNT // 4
    result = run_mutants(make_mutants(seed_models(), count, seed=1), targets=targets)
    print(f"{count} mutants on {targets}: {summary(result)}")
    assert not result.failures, "\n\n".join(f"mutant {i}: {v}" for i, v in result.failures[:5])
    assert sum(result.outcomes.values()) == count
