"""Ray Data batch inference with an exported cnncc model (extra ``cnncc[ray]``; the only module
that imports Ray).

    import ray, cnncc.ray
    ds = ray.data.read_images("s3://...", size=(224, 224))          # or any numpy batches
    ds = ds.map_batches(cnncc.ray.Predictor, fn_constructor_kwargs={
             "model": cnncc.ray.pack_library("out/resnet50")}, batch_size=32,
             num_cpus=4, concurrency=8)

Predictor loads the library once per worker (an actor) and runs its images on as many threads as
the worker was given CPUs; the library's bytes travel with the task, so the workers need
cnncc's Python package but no compiler and no model file.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import ray

from .images import ImageLoader
from .parts import PartStore
from .predictor import BatchPredictor, pack_library

__all__ = ["Predictor", "pack_library", "run_on_ray"]


class Predictor(BatchPredictor):
    """``BatchPredictor`` whose thread count defaults to the CPUs Ray assigned to this worker."""

    def __init__(self, model: str | dict, threads: int | None = None,
                 loader: ImageLoader | None = None, column: str = "image"):
        if threads is None and ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            threads = int(cpus) if cpus else None
        super().__init__(model, threads, loader, column)


def run_on_ray(store: PartStore, pending: list[int], model: dict, loader: ImageLoader,
               address: str, worker_cpus: int, progress: Any,
               stop_after: int | None) -> bool:
    """Compute the ``pending`` chunks of ``store`` on Ray (the runtime already initialized in
    this process, else the cluster at ``address``, else a local one); rows come back to this
    process, which writes each chunk once all its rows are in. False when stopped."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        items = [{"index": i, "path": store.paths[i]} for k in pending
                 for i in store.chunk_range(k)]
        if not items:
            return True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        ds = ray.data.from_items(items).map_batches(
            Predictor, fn_constructor_kwargs={"model": model, "loader": loader},
            batch_size=store.chunk, num_cpus=min(worker_cpus, cpus),
            compute=ray.data.ActorPoolStrategy(size=max(1, cpus // worker_cpus)),
            batch_format="numpy")
        waiting: dict[int, dict[int, dict]] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            names = [n for n in batch if n not in ("index", "path")]
            for row, index in enumerate(batch["index"]):
                k = int(index) // store.chunk
                waiting.setdefault(k, {})[int(index)] = {n: batch[n][row] for n in names}
                rows = store.chunk_range(k)
                if len(waiting[k]) == len(rows):
                    got = waiting.pop(k)
                    store.write(k, {n: np.stack([got[i][n] for i in rows]) for n in names})
                    progress.add(len(rows))
                    if stop_after is not None and progress.fresh >= stop_after \
                            and (waiting or progress.done < len(store.paths)):
                        return False
        return True
    finally:
        if started:
            ray.shutdown()
