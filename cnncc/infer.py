"""`cnncc infer MODEL --input DIR_OR_GLOB --output OUT.parquet [--ray [ADDRESS]]`: batch inference.

The model runs as an exported library (`cnncc compile`; a model file or zoo net is exported
first, into OUT.parquet.parts/model): the same object that Ray ships to its workers. Inputs are
read by cnncc/images.py, results written chunk by chunk by cnncc/parts.py (resumable). Without
--ray the chunks run here, one after another, through the same BatchPredictor
(cnncc/predictor.py) that the Ray workers use (cnncc/ray.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from .ir import InputError
from .images import NORMALIZATIONS, ImageLoader, list_inputs
from .parts import PartStore, require_pyarrow
from .predictor import BatchPredictor, pack_library

LIBRARY_FILES = (".so", ".json")


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.start, self.fresh = total, done, time.perf_counter(), 0
        self.show()

    def add(self, n: int) -> None:
        self.done += n
        self.fresh += n
        self.show()

    def show(self) -> None:
        width = 30
        filled = width * self.done // max(1, self.total)
        rate = self.fresh / max(1e-9, time.perf_counter() - self.start)
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} images"
              + (f", {rate:.1f} images/s" if self.fresh else ""), end="", file=sys.stderr,
              flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported library (folder, .so or .json), an .onnx "
                        "file or a zoo net")
    parser.add_argument("--input", required=True, metavar="DIR_OR_GLOB",
                        help="a folder or glob of images or .npy files")
    parser.add_argument("--output", required=True, metavar="OUT.parquet")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="run on Ray (a local runtime, or the cluster at ADDRESS)")
    parser.add_argument("--batch", type=int, default=16,
                        help="images per chunk (a model call and a parquet part)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of the local run (default: all cores)")
    parser.add_argument("--worker-cpus", type=int, default=1,
                        help="CPUs (and threads) of each Ray worker")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="imagenet",
                        help="after scaling pixels to [0, 1]: ImageNet mean/std (3 channels) "
                        "or nothing")
    parser.add_argument("--stop-after", type=int, default=None, metavar="K",
                        help="stop once K more images are written (a later run resumes)")


def _model_library(spec: str, parts_dir: str, resolve: Callable[[str], Any]) -> str:
    if os.path.isdir(spec) or spec.endswith(LIBRARY_FILES):
        return spec
    folder = os.path.join(parts_dir, "model")
    if not os.path.exists(os.path.join(folder, "model.json")):
        from .driver import export

        export(resolve(spec), folder, name="model", threads=1)
    return folder


def run_infer(args: argparse.Namespace, resolve: Callable[[str], Any]) -> int:
    """The `cnncc infer` command; ``resolve`` turns a model argument into a compilable source."""
    from .backends.llvm.library import find_library, read_metadata

    require_pyarrow()
    for flag in ("batch", "threads", "worker_cpus", "stop_after"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    paths = list_inputs(args.input)
    if not args.output.endswith(".parquet"):
        raise InputError(f"--output {args.output}: expected a .parquet file name")
    library = _model_library(args.model, os.path.abspath(args.output) + ".parts", resolve)
    meta = read_metadata(find_library(library)[1])
    if len(meta["inputs"]) != 1:
        raise InputError(f"cnncc infer runs models with one input; {args.model} has "
                         f"{len(meta['inputs'])}")
    store = PartStore(args.output, paths, args.batch, meta["library_sha256"],
                      {"normalize": args.normalize})
    pending = store.open()
    loader = ImageLoader(meta["inputs"][0]["shape"], meta["inputs"][0]["dtype"],
                         args.normalize)
    done = len(paths) - sum(len(store.chunk_range(k)) for k in pending)
    if done:
        print(f"resuming: {done} of {len(paths)} images already done", file=sys.stderr)
    progress = Progress(len(paths), done)
    if args.ray is not None:
        try:
            from .ray import run_on_ray          # the optional extra, imported only for --ray
        except ImportError as e:
            raise InputError(f"--ray needs Ray ({e}): pip install 'cnncc[ray]'") from None
        finished = run_on_ray(store, pending, pack_library(library), loader, args.ray,
                              args.worker_cpus, progress, args.stop_after)
    else:
        finished = run_local(store, pending, BatchPredictor(library, args.threads, loader),
                             progress, args.stop_after)
    print(file=sys.stderr)
    if not finished:
        print(f"stopped after {progress.fresh} images; run the same command again to resume",
              file=sys.stderr)
        return 3
    rows = store.assemble()
    print(f"wrote {args.output}: {rows} rows")
    return 0


def run_local(store: PartStore, pending: list[int], predictor: BatchPredictor,
              progress: Progress, stop_after: int | None) -> bool:
    """Compute the ``pending`` chunks here; False when stopped by ``stop_after``."""
    for k in pending:
        if stop_after is not None and progress.fresh >= stop_after:
            return False
        rows = store.chunk_range(k)
        out = predictor({"index": np.array(rows), "path": [store.paths[i] for i in rows]})
        store.write(k, {n: out[n] for n in predictor.columns})
        progress.add(len(rows))
    return True
