"""Element types: the ONNX tensor element types that have a numpy equivalent.

Kernels of the native targets are fp32 (int64 for shape tensors); the reference interpreter runs
every type listed here.
"""
from __future__ import annotations

import enum

import numpy as np


class DType(enum.Enum):
    float32 = "float32"
    float64 = "float64"
    float16 = "float16"
    int8 = "int8"
    int16 = "int16"
    int32 = "int32"
    int64 = "int64"
    uint8 = "uint8"
    uint16 = "uint16"
    uint32 = "uint32"
    uint64 = "uint64"
    bool = "bool"

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.value)

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float64, DType.float16)

    @property
    def is_int(self) -> bool:
        return not self.is_float and self is not DType.bool

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @staticmethod
    def from_numpy(dtype) -> "DType":
        name = np.dtype(dtype).name
        try:
            return DType(name)
        except ValueError:
            raise TypeError(f"unsupported element type {name}") from None

    @staticmethod
    def from_onnx(elem_type: int) -> "DType":
        if elem_type not in _FROM_ONNX:
            raise TypeError(f"unsupported ONNX element type {elem_type}")
        return _FROM_ONNX[elem_type]

    def to_onnx(self) -> int:
        return _TO_ONNX[self]

    def __str__(self) -> str:
        return _SHORT[self]


# ONNX TensorProto.DataType numbers (fixed by the ONNX spec).
_TO_ONNX = {
    DType.float32: 1, DType.uint8: 2, DType.int8: 3, DType.uint16: 4, DType.int16: 5,
    DType.int32: 6, DType.int64: 7, DType.bool: 9, DType.float16: 10, DType.float64: 11,
    DType.uint32: 12, DType.uint64: 13,
}
_FROM_ONNX = {v: k for k, v in _TO_ONNX.items()}
_SHORT = {
    DType.float32: "f32", DType.float64: "f64", DType.float16: "f16", DType.int8: "i8",
    DType.int16: "i16", DType.int32: "i32", DType.int64: "i64", DType.uint8: "u8",
    DType.uint16: "u16", DType.uint32: "u32", DType.uint64: "u64", DType.bool: "bool",
}
