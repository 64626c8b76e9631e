"""Latency vs throughput mode of a batch (the figures behind the README's crossover), and a net
compiled for batch N (kernels looping over images) vs the batch-1 net running images side by side.

    python examples/batch_modes.py [NET] [--threads 2] [--batches 1,2,4] [--rounds 10]
                                   [--compiled-batch 8]

Every figure is the median of interleaved rounds (cnncc.bench.time_interleaved); the outputs of
both modes are checked to be bitwise equal first.
"""
from __future__ import annotations

import argparse

import numpy as np

import cnncc
from cnncc.bench import time_interleaved
from cnncc.dsl.zoo import ZOO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", nargs="?", default="mobilenet_v2", choices=sorted(ZOO))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--compiled-batch", type=int, default=0,
                        help="also time the net compiled for this batch against side by side")
    args = parser.parse_args()

    # cache=False: the JIT model, whose batch entry can be asked for either mode.
    model = cnncc.compile(ZOO[args.net](), threads=args.threads, cache=False)
    shape = model.input_shapes[0]
    print(f"{args.net}, {args.threads} threads: ms per batch, median of {args.rounds} rounds")
    for n in [int(b) for b in args.batches.split(",")]:
        x = np.random.default_rng(n).standard_normal((n,) + shape[1:]).astype(np.float32)
        assert np.array_equal(model.run_batch(x, "latency")[0], model.run_batch(x, "throughput")[0])
        samples = time_interleaved({m: (lambda m=m: model.run_batch(x, m))
                                    for m in ("latency", "throughput")}, args.rounds, warmup=1)
        ms = {m: float(np.median(v)) for m, v in samples.items()}
        print(f"N={n}: latency {ms['latency']:.2f}, throughput {ms['throughput']:.2f} "
              f"(throughput mode {ms['latency'] / ms['throughput']:.2f}x as fast)")
    if args.compiled_batch:
        n = args.compiled_batch
        batched = cnncc.compile(ZOO[args.net](batch=n), threads=args.threads)
        x = np.random.default_rng(0).standard_normal((n,) + shape[1:]).astype(np.float32)
        samples = time_interleaved({"side by side": lambda: model(x),
                                    f"compiled for batch {n}": lambda: batched(x)},
                                   args.rounds, warmup=1)
        for name, v in samples.items():
            med = float(np.median(v))
            print(f"{name}: {med:.1f} ms per {n} images, {n / med * 1e3:.1f} images/s")


if __name__ == "__main__":
    main()
