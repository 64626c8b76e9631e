"""The ONNX backend node tests of the neural-network ops (conv, pooling, normalization).

Each one-node test model is converted to a cnncc Graph by a small NodeProto -> Graph converter and
run with the reference interpreter against the case's expected outputs at the case's tolerances
(at least rtol 1e-3, atol 1e-5). Cases that must be rejected are listed in REJECTED with why.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from cnncc.ir import Graph, run_graph
from cnncc.ir.dtypes import DType
from cnncc.ir.errors import CompileError
from cnncc.ir.types import TensorType


NODE_PREFIXES = ("test_conv_", "test_basic_conv_", "test_convtranspose", "test_deform_conv",
                 "test_basic_deform_conv", "test_maxpool", "test_averagepool",
                 "test_globalaveragepool", "test_globalmaxpool", "test_lppool", "test_batchnorm",
                 "test_instancenorm", "test_layer_normalization", "test_lrn",
                 "test_lpnormalization", "test_mvn")
# Cases expected to be rejected, with why.
REJECTED = {
    "test_batchnorm_example_training_mode": "training mode (only inference is supported)",
    "test_batchnorm_epsilon_training_mode": "training mode (only inference is supported)",
}


def _node_cases():
    import warnings

    from onnx.backend.test.loader import load_model_tests
    cases = []
    with warnings.catch_warnings():
        # Importing the case generators of unrelated ops warns about their own overflows.
        warnings.simplefilter("ignore", RuntimeWarning)
        all_cases = load_model_tests(kind="node")
    for case in all_cases:
        name = case.name
        # "_expanded" cases are the same ops written as function bodies of other ops.
        if name.startswith(NODE_PREFIXES) and "_expanded" not in name:
            cases.append(case)
    return sorted(cases, key=lambda c: c.name)


NODE_CASES = _node_cases()


def onnx_node_to_graph(model: onnx.ModelProto) -> Graph:
    """A one-node ONNX model as a cnncc Graph (every ONNX graph input a graph input)."""
    (node,) = model.graph.node
    g = Graph(model.graph.name)
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value for d in tt.shape.dim)
        g.add_input(vi.name, TensorType(DType.from_onnx(tt.elem_type), shape))
    attrs = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        attrs[a.name] = numpy_helper.to_array(value) if a.type == onnx.AttributeProto.TENSOR \
            else value
    g.add_node(node.op_type, list(node.input), attrs, name=node.name or "node",
               outputs=list(node.output))
    g.outputs = [o.name for o in model.graph.output]
    return g


def test_node_case_list_is_complete():
    names = {c.name for c in NODE_CASES}
    for op in ("test_conv_with_strides_padding", "test_convtranspose_output_shape",
               "test_deform_conv_with_mask_bias", "test_maxpool_with_argmax_2d_precomputed_pads",
               "test_averagepool_2d_ceil_last_window_starts_on_pad", "test_lrn",
               "test_layer_normalization_4d_axis1", "test_lppool_2d_dilations"):
        assert op in names
    assert len(NODE_CASES) >= 80


@pytest.mark.parametrize("case", NODE_CASES, ids=[c.name for c in NODE_CASES])
def test_onnx_backend_node_case(case):
    if case.name in REJECTED:
        with pytest.raises(CompileError, match="only inference"):
            onnx_node_to_graph(case.model)
        return
    g = onnx_node_to_graph(case.model)
    rtol, atol = max(case.rtol, 1e-3), max(case.atol, 1e-5)
    assert case.data_sets, case.name
    for inputs, outputs in case.data_sets:
        feeds = dict(zip(g.inputs, inputs))
        got = run_graph(g, feeds)
        for name, want in zip(g.outputs, outputs):
            assert got[name].shape == want.shape, (name, got[name].shape, want.shape)
            np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol, err_msg=name)
