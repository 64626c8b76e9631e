"""CompiledModel: the callable every target returns. numpy in, numpy out, inputs checked first.

Native targets must never see an input of the wrong count, shape, dtype or layout: every check
happens here, before ``_execute`` is entered.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from .ir import DType, Graph, InputError, TensorType


class CompiledModel(abc.ABC):
    """A model ready to run. ``model(x, ...)`` or ``model.run({name: array})``."""

    target: str = "?"
    # Why the model runs only the batch it was compiled for; None: a model compiled for batch 1
    # takes any batch N (N single runs). Set by cnncc.compile / cnncc.load from
    # cnncc.ir.batch.batch_refusal of the source graph (before passes rewrite Flatten and co).
    batch_refusal: str | None = "it was not built by cnncc.compile or cnncc.load"

    def __init__(self, inputs: list[tuple[str, TensorType]], outputs: list[tuple[str, TensorType]]):
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        # What a call checks first, looked up once: a call's own overhead is part of the latency
        # users see (tiny models run in ~10 us).
        self._input_specs = [(t.shape, t.dtype.np) for _, t in self._inputs]
        self._output_specs = [(t.shape, t.dtype.np) for _, t in self._outputs]

    # ---- signature ----------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [n for n, _ in self._inputs]

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for _, t in self._inputs]

    @property
    def input_dtypes(self) -> list[np.dtype]:
        return [t.dtype.np for _, t in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [n for n, _ in self._outputs]

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for _, t in self._outputs]

    @property
    def output_dtypes(self) -> list[np.dtype]:
        return [t.dtype.np for _, t in self._outputs]

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {t}" for n, t in self._inputs)
        outs = ", ".join(f"{n}: {t}" for n, t in self._outputs)
        return f"<CompiledModel target={self.target} ({ins}) -> ({outs})>"

    # ---- scratch memory -----------------------------------------------------------------------
    def memory_report(self) -> dict[str, int] | None:
        """The arena of native code, in bytes: ``arena_bytes`` (its peak size, buffers reused by
        liveness), ``unshared_bytes`` (the same buffers without reuse), ``live_bytes`` (the most
        bytes live at once: no plan needs less) and ``buffers``; None for targets without one
        (reference). See cnncc/lower/memory_plan.py."""
        memory = getattr(getattr(self, "program", None), "memory", None)
        return None if memory is None else memory.summary()

    # ---- calling ------------------------------------------------------------------------------
    def __call__(self, *args: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        if len(args) != len(self._inputs):
            raise InputError(f"model takes {len(self._inputs)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(args)}")
        outs = self._run_checked(list(args))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputError("run() takes a dict {input name: array}")
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unknown input(s) {extra}")
            raise InputError("; ".join(parts) + f" (model inputs: {self.input_names})")
        outs = self._run_checked([feeds[n] for n in self.input_names])
        return dict(zip(self.output_names, outs))

    def _run_checked(self, args: list[Any]) -> list[np.ndarray]:
        if self._exact(args):
            return self._execute(args)
        checked, n = self._check_batch(args)
        if n is None:
            return self._execute(checked)
        if n == 0:
            return [np.empty((0,) + s[1:], d) for s, d in zip(self.output_shapes,
                                                               self.output_dtypes)]
        return self._execute_batch(checked, n)

    def _exact(self, args: list[Any]) -> bool:
        """Every argument already is a C-contiguous ndarray of the compiled shape and dtype (the
        common call: no copy, no batch, nothing to report)."""
        for (shape, dtype), value in zip(self._input_specs, args):
            if (type(value) is not np.ndarray or value.shape != shape or value.dtype != dtype
                    or not value.flags.c_contiguous):
                return False
        return True

    def _check_batch(self, args: list[Any]) -> tuple[list[np.ndarray], int | None]:
        """The checked inputs and their batch N (None: exactly the compiled shapes). A model
        compiled for batch 1 whose graph keeps images apart takes (N, ...) for every input."""
        batches = {value.shape[0] for (_, t), value in zip(self._inputs, args)
                   if isinstance(value, np.ndarray) and value.ndim == len(t.shape) >= 1
                   and value.shape[1:] == t.shape[1:] and value.shape[0] != t.shape[0]}
        if len(batches) != 1 or self.batch_refusal is not None:
            return self._check(args), None
        n = batches.pop()
        return self._check(args, batch=n), n

    def _check(self, args: list[Any], batch: int | None = None) -> list[np.ndarray]:
        checked = []
        for (name, ttype), value in zip(self._inputs, args):
            if isinstance(value, np.generic):
                value = np.asarray(value)
            if not isinstance(value, np.ndarray):
                raise InputError(f"input '{name}': expected a numpy array of {ttype}, got "
                                 f"{type(value).__name__}")
            if value.dtype != ttype.dtype.np:
                raise InputError(f"input '{name}': expected dtype {ttype.dtype.value}, got "
                                 f"{value.dtype} (convert with .astype(np.{ttype.dtype.value}))")
            want = ttype.shape if batch is None else (batch,) + ttype.shape[1:]
            if tuple(value.shape) != want:
                raise InputError(f"input '{name}': expected shape {list(want)}, got "
                                 f"{list(value.shape)}" + self._batch_note(ttype, value))
            # Native code reads dense row-major memory: a strided view gets a contiguous copy.
            checked.append(np.require(value, requirements="C"))
        return checked

    def _batch_note(self, ttype: TensorType, value: np.ndarray) -> str:
        if value.ndim != len(ttype.shape) or value.ndim == 0 or value.shape[1:] != ttype.shape[1:]:
            return ""
        if self.batch_refusal is not None:
            return (f" (this {self.target} model runs only its compiled batch "
                    f"{ttype.shape[0]}: {self.batch_refusal})")
        return " (every input must have the same batch size)"

    def _execute_batch(self, inputs: list[np.ndarray], n: int) -> list[np.ndarray]:
        """Run ``n`` images (inputs of shape (n, ...)): one single run per image."""
        outs = [np.empty((n,) + s[1:], d) for s, d in zip(self.output_shapes, self.output_dtypes)]
        for b in range(n):
            for out, image in zip(outs, self._execute([a[b:b + 1] for a in inputs])):
                out[b:b + 1] = image
        return outs

    @abc.abstractmethod
    def _execute(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run on checked, contiguous inputs (graph order); return outputs in graph order."""


def signature(graph: Graph) -> tuple[list[tuple[str, TensorType]], list[tuple[str, TensorType]]]:
    return ([(n, graph.types[n]) for n in graph.inputs],
            [(n, graph.types[n]) for n in graph.outputs])


__all__ = ["CompiledModel", "signature", "DType"]
