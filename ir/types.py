"""Tensor types: an element type and a static shape."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from .dtypes import DType

# Upper bound on the elements of one tensor: guards against absurd declared sizes (2**40 floats
# would be 4 TiB) before anything is allocated.
MAX_ELEMENTS = 1 << 34


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        if prod(self.shape) > MAX_ELEMENTS:
            raise ValueError(f"shape {self.shape} has more than {MAX_ELEMENTS} elements")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype}[{'x'.join(str(d) for d in self.shape)}]"
