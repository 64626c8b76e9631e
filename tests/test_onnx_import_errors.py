"""Bad or unsupported ONNX models: each must give ONE CompileError that says what is wrong.

Nothing here may crash the process, raise a protobuf DecodeError or another exception type, or
allocate what a malicious header asks for.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cnncc
from cnncc.frontend.onnx import import_model
from cnncc.ir import CompileError

F = TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17, **kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)


def relu_model(shape=(1, 3, 4, 4)):
    return model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", shape)],
                 [vi("y", shape)])


def error_of(source, **kw) -> str:
    with pytest.raises(CompileError) as info:
        import_model(source, **kw)
    return str(info.value)


# ---- unsupported ops and opsets ----------------------------------------------------------------

def test_unsupported_ops_listed_in_one_error():
    nodes = [
        helper.make_node("FancyOp", ["x"], ["a"], name="fancy1"),
        helper.make_node("Relu", ["a"], ["b"], name="ok"),
        helper.make_node("FancyOp", ["b"], ["c"], name="fancy2"),
        helper.make_node("OtherOp", ["c"], ["d"], name="other"),
        helper.make_node("Gadget", ["d"], ["y"], name="gadget", domain="com.example"),
    ]
    m = model(nodes, [vi("x", [2])], [vi("y", [2])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    msg = error_of(m)
    for text in ("FancyOp", "fancy1", "fancy2", "OtherOp", "other", "com.example.Gadget",
                 "gadget", "opset 17"):
        assert text in msg, (text, msg)
    assert "Relu" not in msg


@pytest.mark.parametrize("opset", [3, 6, 999])
def test_bad_opset(opset):
    m = relu_model()
    m.opset_import[0].version = opset
    msg = error_of(m)
    assert f"opset {opset}" in msg and "not supported" in msg


def test_missing_default_opset():
    m = relu_model()
    del m.opset_import[:]
    assert "opset" in error_of(m)


# ---- bad attributes and shapes (validated by the op table's inference) ---------------------------

def conv_model(x_shape, w_shape, **attrs):
    w = numpy_helper.from_array(np.ones(w_shape, np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="badconv", **attrs)
    return model([node], [vi("x", x_shape)], [vi("y", None)], [w])


@pytest.mark.parametrize("attrs, words", [
    ({"strides": [0, 1]}, "stride"),
    ({"pads": [-1, 0, 0, 0]}, "pad"),
    ({}, "kernel"),
])
def test_bad_conv_attributes(attrs, words):
    x_shape = (1, 2, 5, 5) if attrs else (1, 2, 2, 2)
    msg = error_of(conv_model(x_shape, (4, 2, 3, 3), **attrs))
    assert "badconv" in msg and words in msg.lower(), msg


def test_unknown_attribute_named():
    node = helper.make_node("Relu", ["x"], ["y"], name="r", frobnicate=3)
    msg = error_of(model([node], [vi("x", [2])], [vi("y", [2])]))
    assert "frobnicate" in msg and "'r'" in msg


@pytest.mark.parametrize("dims, words", [
    ([1, -3, 4], "negative"),
    ([1 << 20, 1 << 20, 1 << 20], "elements"),
])
def test_bad_input_dims(dims, words):
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", dims)], [vi("y", dims)])
    msg = error_of(m)
    assert "'x'" in msg and words in msg, msg


def test_symbolic_dims_need_input_shapes():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [3, "N"])], [vi("y", [3, "N"])])
    msg = error_of(m)
    assert "'x'" in msg and "input_shapes" in msg and "N" in msg
    graph = import_model(m, input_shapes={"x": (3, 5)})
    assert graph.types["y"].shape == (3, 5)
    assert "contradicts" in error_of(m, input_shapes={"x": (4, 5)})
    assert "not runtime inputs" in error_of(m, input_shapes={"zz": (1,)})


def test_a_symbolic_batch_dim_alone_is_batch_1():
    # The batch is then a run-time argument (tests/test_batch.py).
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 3])], [vi("y", ["N", 3])])
    assert import_model(m).types["y"].shape == (1, 3)
    assert import_model(m, input_shapes={"x": (5, 3)}).types["y"].shape == (5, 3)
    m = model([helper.make_node("Neg", ["x"], ["y"])], [vi("x", ["N"])], [vi("y", ["N"])])
    assert "input_shapes" in error_of(m)          # rank 1: no batch of images


def test_raw_data_length_mismatch():
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.raw_data = w.raw_data[:-4]
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [4, 4])], [vi("y", [4, 4])],
              [w])
    msg = error_of(m)
    assert "'w'" in msg and "raw_data" in msg


def test_huge_initializer_dims_refused_before_allocation():
    w = TensorProto(name="w", data_type=F, dims=[1 << 30, 1 << 30], raw_data=b"\0" * 16)
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [1])], [vi("y", None)], [w])
    msg = error_of(m)
    assert "'w'" in msg and "large" in msg


def test_constant_of_shape_bomb_refused():
    shape = numpy_helper.from_array(np.array([1 << 31, 1 << 31], np.int64), "s")
    m = model([helper.make_node("ConstantOfShape", ["s"], ["c"], name="bomb"),
               helper.make_node("Add", ["x", "c"], ["y"])], [vi("x", [1])], [vi("y", None)],
              [shape])
    msg = error_of(m)
    assert "bomb" in msg


# ---- bytes that are not a model ------------------------------------------------------------------

def test_truncated_bytes():
    data = relu_model().SerializeToString()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 3):
        with pytest.raises(CompileError):
            import_model(data[:cut])


def test_garbage_bytes_and_files(tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(CompileError) as info:
        import_model(garbage)
    assert "not a valid ONNX model" in str(info.value)
    path = tmp_path / "junk.onnx"
    path.write_bytes(garbage)
    with pytest.raises(CompileError):
        cnncc.compile(str(path), target="reference")
    with pytest.raises(CompileError) as info:
        import_model(str(tmp_path / "missing.onnx"))
    assert "does not exist" in str(info.value)


# ---- graph structure -----------------------------------------------------------------------------

def test_value_defined_twice():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"),
             helper.make_node("Neg", ["x"], ["y"], name="b")]
    msg = error_of(model(nodes, [vi("x", [2])], [vi("y", [2])]))
    assert "'y'" in msg and "defined twice" in msg


def test_duplicate_node_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="same"),
             helper.make_node("Neg", ["a"], ["y"], name="same")]
    assert "duplicate node name 'same'" in error_of(model(nodes, [vi("x", [2])], [vi("y", [2])]))


def test_duplicate_initializer_and_input():
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [2])], [vi("y", [2])],
              [w, w])
    assert "duplicate initializer name 'w'" in error_of(m)
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2]), vi("x", [2])],
              [vi("y", [2])])
    assert "duplicate graph input name 'x'" in error_of(m)


def test_cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Neg", ["b"], ["y"], name="third")]
    msg = error_of(model(nodes, [vi("x", [2])], [vi("y", [2])]))
    assert "cycle" in msg and "first" in msg and "second" in msg


def test_unsorted_nodes_are_sorted():
    nodes = [helper.make_node("Neg", ["a"], ["y"], name="late"),
             helper.make_node("Relu", ["x"], ["a"], name="early")]
    m = model(nodes, [vi("x", [3])], [vi("y", [3])])
    compiled = cnncc.compile(m, target="reference")
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(compiled(x), -np.maximum(x, 0))


def test_missing_input():
    nodes = [helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")]
    msg = error_of(model(nodes, [vi("x", [2])], [vi("y", [2])]))
    assert "'nowhere'" in msg and "adder" in msg and "never defined" in msg


def test_output_never_produced():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("ghost", [2])])
    assert "'ghost'" in error_of(m)


def test_declared_output_type_mismatch():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [3])])
    assert "'y'" in error_of(m)


def test_non_tensor_input():
    seq = helper.make_tensor_sequence_value_info("x", F, [2])
    m = model([helper.make_node("Identity", ["x"], ["y"])], [seq], [vi("y", [2])])
    assert "only tensors" in error_of(m)


def test_string_input_dtype():
    m = model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [2], TensorProto.STRING)],
              [vi("y", [2], TensorProto.STRING)])
    assert "STRING" in error_of(m)


# ---- external data -------------------------------------------------------------------------------

def external_model(location: str, offset: int | None = None, length: int | None = None):
    w = TensorProto(name="w", data_type=F, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        w.external_data.append(onnx.StringStringEntryProto(key=k, value=v))
    return model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [4])], [vi("y", [4])],
                 [w])


def save(m, folder) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path


def test_external_data_inside_folder_works(tmp_path):
    data = np.arange(6, dtype=np.float32)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(data.tobytes())
    path = save(external_model("weights.bin", offset=8, length=16), tmp_path / "m")
    x = np.ones(4, np.float32)
    np.testing.assert_array_equal(cnncc.compile(path, target="reference")(x), x + data[2:])


@pytest.mark.parametrize("location, words", [
    ("../outside.bin", "'..'"),
    ("sub/../../outside.bin", "'..'"),
    ("ABS", "absolute"),
    ("link.bin", "outside the model folder"),
    ("missing.bin", "does not exist"),
])
def test_external_data_escapes_refused(tmp_path, location, words):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.zeros(4, np.float32).tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(outside, folder / "link.bin")
    if location == "ABS":
        location = str(outside)
    msg = error_of(save(external_model(location), folder))
    assert "'w'" in msg and words in msg, msg


@pytest.mark.parametrize("offset, length, words", [
    (64, None, "exceeds"),
    (0, 64, "exceeds"),
    (0, 8, "does not match"),
    (-1, None, "negative"),
])
def test_external_data_range_checked(tmp_path, offset, length, words):
    (tmp_path / "w.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    msg = error_of(save(external_model("w.bin", offset, length), tmp_path))
    assert "'w'" in msg and words in msg, msg


def test_external_data_from_memory_refused():
    msg = error_of(external_model("w.bin"))
    assert "'w'" in msg and "external data" in msg


def test_errors_do_not_escape_as_other_types():
    """A grab bag of broken protos: all must be CompileError (never KeyError, DecodeError...)."""
    broken = []
    m = relu_model()
    m.graph.node[0].ClearField("output")
    broken.append(m)
    m = relu_model()
    m.graph.input[0].type.tensor_type.elem_type = 12345
    broken.append(m)
    m = relu_model()
    m.graph.node[0].attribute.append(helper.make_attribute("alpha", [1.0, 2.0]))
    broken.append(m)
    m = relu_model()
    m.graph.node[0].op_type = ""
    broken.append(m)
    for m in broken:
        with pytest.raises(CompileError):
            import_model(m)


def test_mutated_bytes_only_raise_compile_error():
    """Seeded byte mutations of small valid models: each import succeeds or is a CompileError."""
    w = numpy_helper.from_array(np.ones((3, 2, 3, 3), np.float32), "w")
    conv = model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                 [vi("x", [1, 2, 5, 5])], [vi("y", [1, 3, 5, 5])], [w], opset=7)
    clip = model([helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=1.0)],
                 [vi("x", [2, 3])], [vi("y", [2, 3])], opset=7)
    sources = [conv.SerializeToString(), clip.SerializeToString(),
               relu_model().SerializeToString()]
    rng = np.random.default_rng(1234)
    for trial in range(600):
        data = bytearray(sources[trial % len(sources)])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        try:
            import_model(bytes(data))
        except CompileError:
            pass


def test_external_data_written_by_onnx_save(tmp_path):
    w = np.arange(4096, dtype=np.float32).reshape(64, 64)
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [2, 64])],
              [vi("y", [2, 64])], [numpy_helper.from_array(w, "w")])
    path = str(tmp_path / "big.onnx")
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.data", size_threshold=0)
    assert os.path.getsize(tmp_path / "big.data") >= w.nbytes
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(cnncc.compile(path, target="reference")(x), x @ w, rtol=1e-6)


def test_foreign_domain_only_model_lists_its_ops():
    node = helper.make_node("Binarizer", ["x"], ["y"], name="bin", domain="ai.onnx.ml")
    graph = helper.make_graph([node], "g", [vi("x", [2])], [vi("y", [2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    msg = error_of(m)
    assert "ai.onnx.ml.Binarizer" in msg and "bin" in msg
