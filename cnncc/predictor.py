"""BatchPredictor: an exported model mapping batches of images to outputs, the callable of
`cnncc infer`'s local loop and of Ray Data's ``map_batches`` (cnncc/ray.py) alike."""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .backends.llvm.library import find_library
from .driver import load
from .images import ImageLoader


def pack_library(path: str) -> dict[str, bytes]:
    """An exported model's .so and .json as bytes, to send to workers that cannot see ``path``."""
    files = {}
    for p in find_library(path):
        with open(p, "rb") as f:
            files[os.path.basename(p)] = f.read()
    return files


RESERVED_COLUMNS = ("index", "path", "image", "top1")


class BatchPredictor:
    """Maps a batch {"path": [...], ...} (or {"image": (N, ...) array, ...}) to the model's
    outputs: the callable of Ray Data's ``map_batches`` and of the local loop alike.

    ``model``: an exported library (its folder, .so or .json) or its files as bytes
    (``pack_library``); it is loaded once. ``threads``: images run concurrently in that many
    threads when the library was compiled for fewer (an exported library is thread-safe)."""

    def __init__(self, model: str | dict, threads: int | None = None,
                 loader: ImageLoader | None = None, column: str = "image"):
        if isinstance(model, dict):
            self._files = tempfile.TemporaryDirectory(prefix="cnncc-model-")
            for name, data in model.items():
                with open(os.path.join(self._files.name, os.path.basename(name)), "wb") as f:
                    f.write(data)
            model = self._files.name
        self.model = load(model)
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.loader = loader or ImageLoader(self.model.input_shapes[0],
                                            str(self.model.input_dtypes[0]))
        self.column = column
        # The output columns: the model's output names, moved aside when they collide with ours.
        self.columns = [f"output_{n}" if n in RESERVED_COLUMNS + (column,) else n
                        for n in self.model.output_names]
        self._pool = None

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        """The outputs of the images ``x`` (N, ...), in order."""
        model = self.model
        if model.batch_refusal is not None:
            parts = [self._run(x[i:i + 1]) for i in range(len(x))]
        elif model.threads >= self.threads or len(x) < 2:
            return self._run(x)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads)
            parts = list(self._pool.map(self._run, np.array_split(x, self.threads)))
        return [np.concatenate(outs) for outs in zip(*parts)]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if len(x) == 0:
            return [np.empty((0,) + s[1:], d) for s, d in
                    zip(self.model.output_shapes, self.model.output_dtypes)]
        outs = self.model(x)
        return list(outs) if isinstance(outs, tuple) else [outs]

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        x = batch[self.column] if self.column in batch else self.loader(list(batch["path"]))
        result = {k: np.asarray(v) for k, v in batch.items() if k != self.column}
        result.update(zip(self.columns, self.predict(x)))
        return result
