"""Reading an ONNX model safely: bytes or a path in, a ModelProto out, every failure a CompileError.

External tensor data is NOT loaded here (``onnx.load(..., load_external_data=False)``); the
tensors that need it go through `external_data.read_external` one by one, which confines reads to
the model's folder.
"""
from __future__ import annotations

import os
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from cnncc.ir import CompileError

# A protobuf message cannot exceed 2 GiB; anything bigger is not a loadable .onnx file.
MAX_MODEL_BYTES = 2**31


def load_model_proto(source: Any) -> tuple[onnx.ModelProto, str | None]:
    """Return ``(model, model_dir)`` for a path, raw bytes or a ModelProto.

    ``model_dir`` is the folder external data is read from; None when the model came from memory
    (a model from memory that refers to external data is refused when that tensor is read).
    """
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "<bytes>"), None
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise CompileError(f"cannot read an ONNX model from a {type(source).__name__}")
    if not os.path.isfile(source):
        raise CompileError(f"ONNX model file '{source}' does not exist or is not a file")
    size = os.path.getsize(source)
    if size > MAX_MODEL_BYTES:
        raise CompileError(f"'{source}' is {size} bytes: larger than a protobuf can hold "
                           "(store big weights as external data)")
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CompileError(f"cannot read '{source}': {e.strerror or e}") from None
    return _parse(data, source), os.path.dirname(os.path.abspath(source))


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, TypeError) as e:
        raise CompileError(f"{where} is not a valid ONNX model (protobuf decoding failed: "
                           f"{e or 'truncated or garbage bytes'})") from None
    if not model.HasField("graph"):
        raise CompileError(f"{where} is not a valid ONNX model: it has no graph "
                           "(truncated or not an ONNX file)")
    return model
