"""Weights of DSL layers: seeded-random initializers and checks of weights given as arrays.

Random weights are drawn from the net's generator in build order, so a net built twice with the
same seed has bit-identical weights.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cnncc.ir import CompileError

from .tensor import Builder, user_location

# Random weights beyond this many elements (8 GiB of float32) are refused before allocating.
MAX_WEIGHT_ELEMENTS = 1 << 31


def _normal(b: Builder, shape: Sequence[int]) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    if int(np.prod(shape, dtype=np.float64)) > MAX_WEIGHT_ELEMENTS:
        raise CompileError(f"weight of shape {list(shape)} is too large "
                           f"(> {MAX_WEIGHT_ELEMENTS} elements)" + user_location())
    return b.rng.standard_normal(shape, dtype=np.float32)


def he_normal(b: Builder, shape: Sequence[int], fan_in: int, dtype: np.dtype) -> np.ndarray:
    """Kaiming/He normal: N(0, 2 / fan_in), which keeps activations' scale through ReLU layers."""
    std = np.sqrt(2.0 / max(int(fan_in), 1))
    return (_normal(b, shape) * np.float32(std)).astype(dtype)


def small_normal(b: Builder, shape: Sequence[int], dtype: np.dtype,
                 std: float = 0.1) -> np.ndarray:
    """N(0, std^2): biases and BN shifts, non-zero so they are exercised by tests."""
    return (_normal(b, shape) * np.float32(std)).astype(dtype)


def uniform(b: Builder, shape: Sequence[int], lo: float, hi: float,
            dtype: np.dtype) -> np.ndarray:
    return b.rng.uniform(lo, hi, size=tuple(shape)).astype(dtype)


def bn_statistics(b: Builder, channels: int,
                  dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random but sane BatchNorm (gamma, beta, mean, var): gamma, var in [0.5, 1.5];
    beta, mean ~ N(0, 0.1). Not the identity, so folding BN into convs is really tested."""
    gamma = uniform(b, (channels,), 0.5, 1.5, dtype)
    beta = small_normal(b, (channels,), dtype)
    mean = small_normal(b, (channels,), dtype)
    var = uniform(b, (channels,), 0.5, 1.5, dtype)
    return gamma, beta, mean, var


def given(value: Any, shape: Sequence[int] | None, what: str, dtype: np.dtype) -> np.ndarray:
    """An explicit weight as an array of ``dtype``, checked against the ``shape`` it must have."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise CompileError(f"{what}: not an array ({e})") from None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise CompileError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise CompileError(f"{what}: expected shape {tuple(shape)}, got {tuple(arr.shape)}")
    return np.ascontiguousarray(arr.astype(dtype, copy=False))
