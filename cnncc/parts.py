"""Resumable output of `cnncc infer`: one parquet part per chunk of images, then OUT.parquet.

OUT.parquet.parts/ holds manifest.json (what the run is: model, inputs, chunk size) and
part-NNNNNN.parquet for every finished chunk, each written to a temporary name and renamed, so a
part is either whole or absent. A run killed at image k has every chunk before k's chunk on disk;
the next run with the same arguments checks the manifest, skips those chunks and computes the
rest. When all chunks are there they are joined, in input order, into OUT.parquet (written and
renamed the same way) and the parts folder is removed. Needs pyarrow (``cnncc[ray]``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

from .ir import InputError

FORMAT = "cnncc-infer-1"


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("cnncc infer writes parquet: pip install 'cnncc[ray]' (pyarrow)") \
            from None
    return pyarrow


class PartStore:
    """The parts folder of ``out_path`` for a run over ``paths`` in chunks of ``chunk`` images."""

    def __init__(self, out_path: str, paths: list[str], chunk: int, model_digest: str,
                 settings: dict):
        self.out_path = os.path.abspath(out_path)
        self.dir = self.out_path + ".parts"
        self.paths = list(paths)
        self.chunk = chunk
        listing = hashlib.sha256("\n".join(self.paths).encode()).hexdigest()
        self.manifest = {"format": FORMAT, "model_sha256": model_digest, "inputs": len(paths),
                         "inputs_sha256": listing, "chunk": chunk, **settings}

    @property
    def chunks(self) -> int:
        return (len(self.paths) + self.chunk - 1) // self.chunk

    def chunk_range(self, k: int) -> range:
        return range(k * self.chunk, min((k + 1) * self.chunk, len(self.paths)))

    def open(self) -> list[int]:
        """Create or check the parts folder; the chunks still to compute."""
        path = os.path.join(self.dir, "manifest.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    old = json.load(f)
            except (OSError, ValueError) as e:
                raise InputError(f"{path} is unreadable ({e}): delete {self.dir}") from None
            if old != self.manifest:
                diff = sorted(k for k in set(old) | set(self.manifest)
                              if old.get(k) != self.manifest.get(k))
                raise InputError(f"{self.dir} holds a run with other settings ({', '.join(diff)})"
                                 f": repeat that run's arguments or delete the folder")
        else:
            os.makedirs(self.dir, exist_ok=True)
            _write_atomic(path, json.dumps(self.manifest, indent=2).encode())
        return [k for k in range(self.chunks) if not os.path.exists(self._part(k))]

    def _part(self, k: int) -> str:
        return os.path.join(self.dir, f"part-{k:06d}.parquet")

    def write(self, k: int, outputs: dict[str, np.ndarray]) -> None:
        """Chunk ``k``'s rows: input index and path, every output flattened per image, and
        ``top1`` (argmax) when the first output is one score vector per image."""
        pa = require_pyarrow()
        rows = self.chunk_range(k)
        columns = {"index": pa.array(list(rows), pa.int64()),
                   "path": pa.array([self.paths[i] for i in rows], pa.string())}
        meta = {}
        for name, value in outputs.items():
            flat = np.ascontiguousarray(value).reshape(len(rows), -1)
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)),
                                                              flat.shape[1])
            meta[name] = list(value.shape[1:])
        first = next(iter(outputs.values()))
        if first.ndim == 2 and first.shape[1] > 1:
            columns["top1"] = pa.array(first.argmax(axis=1), pa.int64())
        table = pa.table(columns).replace_schema_metadata(
            {"cnncc_output_shapes": json.dumps(meta)})
        tmp = self._part(k) + ".tmp"
        pa.parquet.write_table(table, tmp)
        os.replace(tmp, self._part(k))

    def assemble(self) -> int:
        """Join the parts into OUT.parquet; the number of rows."""
        pa = require_pyarrow()
        tables = [pa.parquet.read_table(self._part(k)) for k in range(self.chunks)]
        table = pa.concat_tables(tables)
        tmp = self.out_path + ".tmp"
        pa.parquet.write_table(table, tmp)
        os.replace(tmp, self.out_path)
        shutil.rmtree(self.dir, ignore_errors=True)
        return table.num_rows


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
