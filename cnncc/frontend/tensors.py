"""ONNX tensors and attributes -> numpy values and plain Python, checked before allocating.

A TensorProto's dims are checked against its payload (raw_data length, typed field count, external
data length) before numpy ever sees it, so a tensor claiming 10^12 elements is an error, not an
allocation.
"""
from __future__ import annotations

import sys
from math import prod
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from cnncc.ir import CompileError, DType
from cnncc.ir.types import MAX_ELEMENTS

from .external_data import read_external

_T = onnx.TensorProto
# Which typed field holds the values of each element type when raw_data is not used.
_TYPED_FIELD = {
    _T.FLOAT: "float_data", _T.DOUBLE: "double_data", _T.INT64: "int64_data",
    _T.UINT32: "uint64_data", _T.UINT64: "uint64_data", _T.INT32: "int32_data",
    _T.INT16: "int32_data", _T.INT8: "int32_data", _T.UINT16: "int32_data",
    _T.UINT8: "int32_data", _T.BOOL: "int32_data", _T.FLOAT16: "int32_data",
}


def _plain(tensor: onnx.TensorProto, dtype: DType) -> bool:
    """Whether ``tensor``'s raw bytes are its values as numpy stores them (little-endian
    host, an element type stored as itself): then its array is a read-only view of one copy
    of the payload (a 400 MB fc weight is not copied twice more on import)."""
    return (sys.byteorder == "little" and tensor.data_type in _TYPED_FIELD
            and np.dtype(dtype.np) == onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))


def elem_dtype(elem_type: int, what: str) -> DType:
    """Our DType for an ONNX element type number, or a CompileError saying what uses it."""
    try:
        return DType.from_onnx(elem_type)
    except TypeError:
        name = _T.DataType.Name(elem_type) if elem_type in _T.DataType.values() else elem_type
        raise CompileError(f"{what} has element type {name}, which cnncc does not support "
                           f"(supported: {', '.join(d.value for d in DType)})") from None


def tensor_to_array(tensor: onnx.TensorProto, model_dir: str | None,
                    what: str | None = None) -> np.ndarray:
    """Decode ``tensor`` into a numpy array after checking its size against its payload."""
    what = what or f"tensor '{tensor.name}'"
    if tensor.segment.begin or tensor.segment.end:
        raise CompileError(f"{what} is segmented, which is not supported")
    dtype = elem_dtype(tensor.data_type, what)
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise CompileError(f"{what} has negative dims {dims}")
    count = prod(dims)
    if count > MAX_ELEMENTS:
        raise CompileError(f"{what} has dims {dims}: {count} elements is absurdly large")
    nbytes = count * dtype.itemsize
    if tensor.data_location == _T.EXTERNAL:
        raw = read_external(tensor, model_dir, nbytes)
        if _plain(tensor, dtype):
            return np.frombuffer(raw, dtype.np).reshape(dims)
        copy = _T()
        copy.CopyFrom(tensor)
        copy.ClearField("external_data")
        copy.data_location = _T.DEFAULT
        copy.raw_data = raw
        tensor = copy
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data           # every read of the field copies the payload
        if len(raw) != nbytes:
            raise CompileError(f"{what}: raw_data holds {len(raw)} bytes but dims "
                               f"{dims} of {dtype.value} need {nbytes}")
        if _plain(tensor, dtype):
            return np.frombuffer(raw, dtype.np).reshape(dims)
        del raw
    else:
        field = _TYPED_FIELD[tensor.data_type]
        have = len(getattr(tensor, field))
        if have != count:
            raise CompileError(f"{what}: {field} holds {have} values but dims {dims} need "
                               f"{count}")
    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CompileError(f"{what} cannot be decoded: {e}") from None
    return np.asarray(array.astype(dtype.np, copy=False).reshape(dims), order="C")


def attribute_value(attr: onnx.AttributeProto, node: str, model_dir: str | None) -> Any:
    """The Python value of a node attribute (ints, floats, str, lists, numpy tensors)."""
    A = onnx.AttributeProto
    if attr.ref_attr_name:
        raise CompileError(f"attribute '{attr.name}' refers to a function attribute "
                           f"'{attr.ref_attr_name}' outside a function", node)
    kind = attr.type
    if kind == A.FLOAT:
        return float(attr.f)
    if kind == A.INT:
        return int(attr.i)
    if kind == A.STRING:
        return _decode(attr.s, attr.name, node)
    if kind == A.FLOATS:
        return [float(v) for v in attr.floats]
    if kind == A.INTS:
        return [int(v) for v in attr.ints]
    if kind == A.STRINGS:
        return [_decode(s, attr.name, node) for s in attr.strings]
    if kind == A.TENSOR:
        return tensor_to_array(attr.t, model_dir, f"attribute '{attr.name}' of node '{node}'")
    kind_name = A.AttributeType.Name(kind) if kind in A.AttributeType.values() else str(kind)
    raise CompileError(f"attribute '{attr.name}' has kind {kind_name}, which is not supported "
                       "(subgraphs, sparse tensors and type protos cannot be compiled)", node)


def _decode(data: bytes, name: str, node: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CompileError(f"attribute '{name}' is not valid UTF-8 text", node) from None
