"""Benchmark the catalogue's kernels against this machine's measured roofs (1 thread default).

    python examples/bench_catalogue.py [--threads 1] [--rounds 15]

Locally connected and tiled convs are weight-bound: judged in GB/s of weights streamed per
image (each output position reads its own filter set: OH*OW*OC*C*KH*KW floats) against the
bandwidth `cnncc bench --peak` measures; conv3d in GFLOP/s and % of the FMA peak; maxout and L2
pooling in GB/s (input + output bytes). cnncc and onnxruntime (the exported ONNX: the cnncc-domain
functions run as their standard-op bodies) are timed interleaved, round by round
(cnncc.bench.time_interleaved); medians and the fastest call are printed.
"""
from __future__ import annotations

import argparse

import numpy as np

import cnncc
from cnncc import dsl
from cnncc.analysis import node_flops
from cnncc.bench import ort_runner, time_interleaved

# name -> (input shape, layer, what the rate is measured in)
CASES = {
    "locally_connected 32->64 3x3 28x28": ((1, 32, 30, 30), lambda x: dsl.locally_connected2d(
        x, 64, 3, bias=False), "weights"),
    "locally_connected 16->32 3x3 14x14": ((1, 16, 16, 16), lambda x: dsl.locally_connected2d(
        x, 32, 3, bias=False), "weights"),
    "tiled_conv tiles=2 32->64 3x3 28x28": ((1, 32, 30, 30), lambda x: dsl.tiled_conv2d(
        x, 64, 3, tiles=2, bias=False), "weights"),
    "conv3d 64->64 3x3x3 8x28x28": ((1, 64, 8, 28, 28), lambda x: dsl.conv3d(
        x, 64, 3, padding=1, bias=False), "flops"),
    "maxout pieces=4 256x56x56": ((1, 256, 56, 56), lambda x: dsl.maxout(x, 4), "bytes"),
    "lp_pool2d p=2 2x2/2 128x112x112": ((1, 128, 112, 112), lambda x: dsl.lp_pool2d(x, 2),
                                        "bytes"),
}


def work(net, kind: str) -> float:
    """Weight bytes streamed, FLOPs, or input + output bytes of one call."""
    g = net.to_graph()
    (node,) = g.nodes
    out = g.types[node.outputs[0]]
    if kind == "weights":
        w = g.types[node.inputs[1]].shape
        return 4.0 * out.shape[2] * out.shape[3] * int(np.prod(w[2:]))
    if kind == "flops":
        return float(node_flops(g, node))
    return 4.0 * (g.types[node.inputs[0]].size + out.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    t = cnncc.host_target(args.threads)
    peak, bw = cnncc.bench.fma_peak(args.threads), cnncc.bench.bandwidth(args.threads)
    print(f"target: {t.describe()}")
    print(f"FMA peak {peak:.0f} GFLOP/s; {bw.describe()}".replace("\n", "; "))
    for name, (shape, layer, kind) in CASES.items():
        net = dsl.build(layer, shape, name=name.split()[0], seed=0)
        x = net.example_inputs()[0]
        model = cnncc.compile(net, threads=args.threads)
        ort = ort_runner(net.to_onnx(), args.threads)
        ms = time_interleaved({"cnncc": lambda: model(x), "onnxruntime": lambda: ort([x])},
                              args.rounds)
        amount = work(net, kind)
        unit, scale = ("GFLOP/s", 1e-9) if kind == "flops" else ("GB/s", 1e-9)
        row = [f"{name:<38}"]
        for engine, samples in ms.items():
            med, best = float(np.median(samples)), float(np.min(samples))
            row.append(f"{engine} {med:7.3f} ms (best {best:.3f}) "
                       f"{amount * scale / (med * 1e-3):7.1f} {unit}")
        if kind != "bytes":      # the convs: GFLOP/s and the share of the FMA peak
            gflops = work(net, "flops") * 1e-9 / (np.median(ms["cnncc"]) * 1e-3)
            row.append(f"cnncc {gflops:.0f} GFLOP/s = {gflops / peak:.0%} of peak")
        print(" | ".join(row) + f"  [{kind}: {amount / 2**20:.1f} MiB]" if kind != "flops"
              else " | ".join(row) + f"  [{amount * 1e-9:.2f} GFLOP]")


if __name__ == "__main__":
    main()
