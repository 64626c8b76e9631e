"""Mutation fuzzing: thousands of corrupted models, each run in a child process; 0 crashes allowed.

Every mutant must either work or be refused with a CompileError/InputError: no segfault, no abort,
no hang, no unbounded allocation (children run under a 3 GiB address-space limit) and no other
exception type (an IndexError or a protobuf DecodeError escaping is a bug: the user gets no
clear message).
"""
from __future__ import annotations

import os

import onnx
import pytest
from hypothesis import HealthCheck, settings

from cnncc.testing import target_params
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


# Fewer mutants on the native targets: those that compile cost a code build each (cuda-emu's
# g++ build is the slowest).
SHARE = {"reference": 1, "llvm": 4, "cuda-emu": 20}


@pytest.mark.parametrize("target", target_params())
def test_mutants_never_crash(target):
    targets = (target,)
    count = COUNT // SHARE.get(target, 20)
    result = run_mutants(make_mutants(seed_models(), count, seed=1), targets=targets)
    print(f"{count} mutants on {targets}: {summary(result)}")
    assert not result.failures, "\n\n".join(f"mutant {i}: {v}" for i, v in result.failures[:5])
    assert sum(result.outcomes.values()) == count


# ---- regressions found by the mutation fuzzer (each once escaped as a non-cnncc exception) -----

def _conv_model(pads, op_type="Conv"):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    node = helper.make_node(op_type, ["x", "w"], ["y"], "conv", pads=pads)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_regression_op_type_that_is_not_utf8():
    """A byte flip inside an op_type made the unsupported-op listing compare str with bytes."""
    import cnncc

    model = _conv_model([1, 1, 1, 1], op_type="Frobnicate")
    model.graph.node.append(onnx.helper.make_node("Unknownop", ["y"], ["z"], "other"))
    model.graph.output[0].name = "z"
    data = model.SerializeToString()
    assert data.count(b"Frobnicate") == 1
    data = data.replace(b"Frobnicate", b"Frobnicat\xff")
    with pytest.raises(cnncc.CompileError, match="not valid UTF-8"):
        cnncc.compile(data, target="reference")


def test_regression_absurd_pads_are_refused_before_allocating():
    """pads of 2**31 made the reference allocate a 1.5 TiB padded input."""
    import cnncc

    with pytest.raises(cnncc.CompileError, match="pad"):
        cnncc.compile(_conv_model([0, 0, 0, 1 << 31]), target="reference")
